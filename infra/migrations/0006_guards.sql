-- The database is the last guard of the ledger's shape. Events are immutable, so a row that should
-- never have been written can never be repaired: every guard here refuses it before it exists.

-- 1. Owned columns. The application inserts only what it decides: the event's type, keys and
-- payload. The transaction id, the position and the time are the database's own values: a forged
-- tx_id is never projected while the watermark claims it, a forged position (OVERRIDING SYSTEM
-- VALUE needs INSERT on `position`) repeats one, a forged time breaks trending and rebuilds.
-- Revoking the table-level privilege also revokes column privileges, so the grant comes after.
REVOKE INSERT ON events FROM voteledger_command, voteledger_projector, voteledger_query;
GRANT INSERT (event_type, agent_id, item_id, payload) ON events TO voteledger_command;

-- 2. Payloads, per event type, in step with events/types.py (tests/integration/test_guards.py
-- derives every field and its type from the msgspec Structs and compares). Extra keys are let
-- through, as the decoder ignores them; what the decoder would refuse is refused here, so every
-- row appended from now on decodes. Stricter than the decoder in two ways, both of them what the
-- encoder always writes: a uuid in its canonical form, and times with an offset (the ledger's
-- times are all absolute).
-- Cost, measured over 100,000 VoteCast rows: about 3 us a row, 7 us with a previous_cast_at,
-- against about 7 us for the insert itself. The helpers are plain SQL of immutable functions so
-- the planner inlines them into one expression; as PL/pgSQL functions, and with regular
-- expressions for uuids, it cost three times as much.
--
-- An RFC 3339 time with an offset, as msgspec decodes it (years 1 to 9999, real calendar days).
CREATE FUNCTION is_rfc3339_time(value text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE
    WHEN value !~ ('^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?'
                   '([Zz]|[+-][0-9]{2}:[0-9]{2})$') THEN false
    WHEN left(value, 4)::int < 1 OR substr(value, 6, 2)::int NOT BETWEEN 1 AND 12 THEN false
    ELSE substr(value, 12, 2)::int <= 23
        AND substr(value, 15, 2)::int <= 59
        AND substr(value, 18, 2)::int <= 59
        AND (right(value, 1) IN ('Z', 'z')
             OR substr(value, length(value) - 4, 2)::int <= 23 AND right(value, 2)::int <= 59)
        AND substr(value, 9, 2)::int >= 1
        -- The length of the month only matters past the 28th.
        AND (substr(value, 9, 2)::int <= 28 OR substr(value, 9, 2)::int <= extract(day FROM
            make_date(left(value, 4)::int, substr(value, 6, 2)::int, 1)
            + interval '1 month - 1 day'))
END;

-- What is wrong with one field of a payload, or NULL when nothing is. Every field of an event is
-- a JSON string of some shape (`kind`); `nullable` also lets it be JSON null. No format(): it is
-- only stable, and a stable call in an immutable SQL function keeps the planner from inlining it.
CREATE FUNCTION event_field_problem(
    payload jsonb, key text, kind text, required boolean, nullable boolean DEFAULT false
) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE
    WHEN payload -> key IS NULL THEN CASE WHEN required THEN key || ' is missing' END
    WHEN nullable AND jsonb_typeof(payload -> key) = 'null' THEN NULL
    WHEN jsonb_typeof(payload -> key) <> 'string'
        THEN key || ' must be a JSON string, not ' || jsonb_typeof(payload -> key)
    WHEN kind = 'string'
        OR kind = 'item_type' AND payload ->> key IN ('song', 'tool')
        OR kind = 'direction' AND payload ->> key IN ('up', 'down', 'none')
        OR kind = 'time' AND public.is_rfc3339_time(payload ->> key) THEN NULL
    ELSE key || ' is not a valid ' || kind || ': ' || left(payload ->> key, 60)
END;

-- What is wrong with an event row, or NULL when nothing is. The key columns mirror the payload
-- exactly as events/store.py fills them: readers that look events up by agent or item trust them.
-- Internal calls are schema-qualified: the inserting role chooses its own search_path.
-- An operator can list the rows recorded before this guard that it refuses with
--   SELECT position, event_problem(event_type, agent_id, item_id, payload) FROM ledger
--   WHERE event_problem(event_type, agent_id, item_id, payload) IS NOT NULL;
CREATE FUNCTION event_problem(event_type text, agent_id uuid, item_id text, payload jsonb)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN coalesce(
    CASE WHEN jsonb_typeof(payload) IS DISTINCT FROM 'object'
        THEN 'the payload must be a JSON object' END,
    CASE event_type
        WHEN 'AgentRegistered' THEN coalesce(
            public.event_field_problem(payload, 'agent_id', 'string', true),
            public.event_field_problem(payload, 'name', 'string', false))
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
            public.event_field_problem(payload, 'previous_cast_at', 'time', false, true))
        ELSE 'unknown event type ' || coalesce(event_type, 'NULL')
    END,
    -- The event type is a known one by now, which no JSON value but that string reads as.
    CASE WHEN payload ->> 'type' IS DISTINCT FROM event_type
        THEN 'the payload''s type must be ' || event_type END,
    -- Compared as text, this also checks that the payload's agent_id is a uuid, in the canonical
    -- form the encoder writes (a regular expression for it cost more than all the rest together).
    CASE WHEN agent_id::text IS DISTINCT FROM
            CASE WHEN event_type <> 'ItemListed' THEN payload ->> 'agent_id' END
        THEN 'agent_id must be a lowercase hyphenated uuid, the agent_id column''s value '
             '(NULL when the event has none)' END,
    CASE WHEN item_id IS DISTINCT FROM
            CASE WHEN event_type IN ('ItemListed', 'VoteCast') THEN payload ->> 'item_id' END
        THEN 'the item_id column must be the payload''s item_id (NULL when it has none)' END
);

CREATE FUNCTION events_check_payload() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    problem text := public.event_problem(NEW.event_type, NEW.agent_id, NEW.item_id, NEW.payload);
BEGIN
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'refused % event: %', NEW.event_type, problem
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

-- A row trigger rather than a CHECK constraint, for two reasons. Rows already in the ledger are
-- immutable: if one of them failed a validated CHECK, this migration could never be applied, and
-- the projections already stop at such a row and name it. And the schema owner (a superuser) can
-- still write a bad row for a test of that stall with `SET LOCAL session_replication_role =
-- replica`, which only superusers may set, without DDL that would hold every append back.
-- A row trigger on the partitioned table is cloned to every partition, present and future, so
-- it also guards a partition written to directly.
CREATE TRIGGER events_payload_valid
    BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION events_check_payload();

-- 3. Partitions within a sane window. ensure_event_partitions is SECURITY DEFINER: whoever may
-- call it makes the owner create tables, so a mistaken or hostile argument (a start in year 1, a
-- thousand months ahead) must not create hundreds of them. The function of 0002_events.sql keeps
-- its body under another name, callable by the owner alone, and the old name checks the window
-- before calling it.
ALTER FUNCTION ensure_event_partitions(timestamptz, integer) RENAME TO create_event_partitions;
REVOKE ALL ON FUNCTION create_event_partitions(timestamptz, integer)
    FROM PUBLIC, voteledger_command, voteledger_projector, voteledger_query;

CREATE FUNCTION ensure_event_partitions(start_at timestamptz, months_ahead integer)
RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    this_month  date := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
    earliest    date := (this_month - interval '10 years')::date;
    month_start date := date_trunc('month', start_at AT TIME ZONE 'UTC')::date;
BEGIN
    IF months_ahead IS NULL OR months_ahead NOT BETWEEN 0 AND 36 THEN
        RAISE EXCEPTION 'months_ahead must be from 0 to 36, not %', months_ahead
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF month_start IS NULL OR month_start < earliest
          OR month_start > this_month + make_interval(months => months_ahead) THEN
        RAISE EXCEPTION 'start_at % is outside the partition window: from % to % months ahead',
            start_at, earliest, months_ahead
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY SELECT create_event_partitions(start_at, months_ahead);
END
$$;

-- Only the projector maintains partitions (and the owner, who owns the function).
REVOKE ALL ON FUNCTION ensure_event_partitions(timestamptz, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ensure_event_partitions(timestamptz, integer) TO voteledger_projector;

-- 4. Revocation only through the ledger. The command role may update `revoked_at` and nothing
-- else of an agent, and the trigger lets it be set only in a transaction that has appended the
-- agent's AgentRevoked event, never cleared or moved: the ledger and `agents` cannot disagree
-- about who is revoked. It binds the owner too (an operator's revocation goes through the CLI).
REVOKE UPDATE ON agents FROM voteledger_command;
GRANT UPDATE (revoked_at) ON agents TO voteledger_command;

-- Looked up by (tx_id, position) on every partition: revocations are rare, so no index of their
-- own is worth its cost on every append.
CREATE FUNCTION agents_revoked_through_ledger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.agent_id, NEW.key_digest, NEW.created_at)
        IS DISTINCT FROM (OLD.agent_id, OLD.key_digest, OLD.created_at) THEN
        RAISE EXCEPTION 'an agent''s id, key digest and creation time never change'
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

CREATE TRIGGER agents_revoked_through_ledger
    BEFORE UPDATE ON agents
    FOR EACH ROW EXECUTE FUNCTION agents_revoked_through_ledger();
