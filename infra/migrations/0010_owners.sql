-- Owners: every agent votes on behalf of an owner (the operator account or organisation that runs
-- it). AgentRegistered and VoteCast v2 carry it (events/types.py); `agents` holds it so a vote
-- gets it with the agent lookup its transaction already makes, and so a cap per owner can count.

-- 1. The owner of each agent. Agents registered before owners are their own owner: their id as
-- text, which is also what the v1 -> v2 upcaster gives their events. Never changes: the
-- command role may update only `revoked_at` (0006_guards.sql), and the trigger below binds the
-- schema owner too.
ALTER TABLE agents ADD COLUMN owner text;
UPDATE agents SET owner = agent_id::text;
ALTER TABLE agents ALTER COLUMN owner SET NOT NULL;

-- An agent inserted without an owner is its own, as an event without one reads (a row written
-- around the application, or by a test): the rule holds whatever wrote the row.
CREATE FUNCTION agents_own_owner() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.owner := coalesce(NEW.owner, NEW.agent_id::text);
    RETURN NEW;
END
$$;

CREATE TRIGGER agents_own_owner
    BEFORE INSERT ON agents
    FOR EACH ROW EXECUTE FUNCTION agents_own_owner();

-- Registering under a cap counts the owner's agents that are not revoked: exactly this index.
CREATE INDEX agents_owner_active ON agents (owner) WHERE revoked_at IS NULL;

-- The operator's vote audit reads one item's slots in agent order. The primary key leads with the
-- agent, so without this it would scan every slot. It never changes once a slot exists (its
-- columns are the key), so vote updates stay HOT; a new slot costs one more B-tree insert.
CREATE INDEX vote_slots_item ON vote_slots (item_id, agent_id);

CREATE OR REPLACE FUNCTION agents_revoked_through_ledger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.agent_id, NEW.key_digest, NEW.created_at, NEW.owner)
        IS DISTINCT FROM (OLD.agent_id, OLD.key_digest, OLD.created_at, OLD.owner) THEN
        RAISE EXCEPTION 'an agent''s id, key digest, creation time and owner never change'
            USING ERRCODE = 'insufficient_privilege';
    ELSIF OLD.revoked_at IS NOT NULL AND NEW.revoked_at IS DISTINCT FROM OLD.revoked_at THEN
        RAISE EXCEPTION 'agent % is revoked: a revocation is never undone or moved', OLD.agent_id
            USING ERRCODE = 'insufficient_privilege';
    ELSIF OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM public.events e
        WHERE e.tx_id = pg_current_xact_id()
          AND e.event_type = 'AgentRevoked'
          AND e.agent_id = NEW.agent_id
    ) THEN
        RAISE EXCEPTION 'agent % is revoked only in a transaction that appends its AgentRevoked '
            'event', NEW.agent_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;

-- 2. The payload guard (0006_guards.sql) learns the versioned shapes: `owner` (a string or null)
-- on AgentRegistered and VoteCast, and `v` (the schema version, a positive integer) on every
-- type. Both are optional, as payloads written before them hold neither; what the decoder would
-- refuse is refused here, so every row appended from now on still decodes.
CREATE OR REPLACE FUNCTION event_problem(event_type text, agent_id uuid, item_id text, payload jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN coalesce(
    CASE WHEN jsonb_typeof(payload) IS DISTINCT FROM 'object'
        THEN 'the payload must be a JSON object' END,
    CASE event_type
        WHEN 'AgentRegistered' THEN coalesce(
            public.event_field_problem(payload, 'agent_id', 'string', true),
            public.event_field_problem(payload, 'name', 'string', false),
            public.event_field_problem(payload, 'owner', 'string', false, true))
        WHEN 'AgentRevoked' THEN
            public.event_field_problem(payload, 'agent_id', 'string', true)
        WHEN 'ItemListed' THEN coalesce(
            public.event_field_problem(payload, 'item_id', 'string', true),
            public.event_field_problem(payload, 'item_type', 'item_type', true),
            public.event_field_problem(payload, 'title', 'string', true))
        WHEN 'VoteCast' THEN coalesce(
            public.event_field_problem(payload, 'agent_id', 'string', true),
            public.event_field_problem(payload, 'item_id', 'string', true),
            public.event_field_problem(payload, 'item_type', 'item_type', true),
            public.event_field_problem(payload, 'direction', 'direction', true),
            public.event_field_problem(payload, 'previous', 'direction', true),
            public.event_field_problem(payload, 'previous_cast_at', 'time', false, true),
            public.event_field_problem(payload, 'owner', 'string', false, true))
        ELSE 'unknown event type ' || coalesce(event_type, 'NULL')
    END,
    -- A JSON number written as digits only is an integer msgspec reads as an int (1e0 and 1.0
    -- are not); bounded so that it is one.
    CASE WHEN payload -> 'v' IS NOT NULL AND (jsonb_typeof(payload -> 'v') <> 'number'
            OR (payload ->> 'v') !~ '^[1-9][0-9]{0,8}$')
        THEN 'v must be a positive JSON integer, not ' || left((payload -> 'v')::text, 60) END,
    CASE WHEN payload ->> 'type' IS DISTINCT FROM event_type
        THEN 'the payload''s type must be ' || event_type END,
    CASE WHEN agent_id::text IS DISTINCT FROM
            CASE WHEN event_type <> 'ItemListed' THEN payload ->> 'agent_id' END
        THEN 'agent_id must be a lowercase hyphenated uuid, the agent_id column''s value '
             '(NULL when the event has none)' END,
    CASE WHEN item_id IS DISTINCT FROM
            CASE WHEN event_type IN ('ItemListed', 'VoteCast') THEN payload ->> 'item_id' END
        THEN 'the item_id column must be the payload''s item_id (NULL when it has none)' END
);
