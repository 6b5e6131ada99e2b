-- The archive: monthly event partitions past the retention window, detached from `events` and
-- attached here, so the live table (and the plans that scan it) stay small while replay and
-- verify still read every event ever recorded, through the `ledger` view.
--
-- Archived partitions keep their names and stay in schema public: month partitions share one
-- namespace, so ensure_event_partitions() finds an archived month by name and never creates a
-- second partition for it (a second one could never be archived: its range would overlap).
CREATE SCHEMA ledger_archive;

-- Exactly the columns of public.events. No identity or defaults: rows only arrive by ATTACH.
CREATE TABLE ledger_archive.events (
    tx_id        xid8        NOT NULL,
    position     bigint      NOT NULL,
    recorded_at  timestamptz NOT NULL,
    event_type   text        NOT NULL,
    agent_id     uuid,
    item_id      text,
    payload      jsonb       NOT NULL
) PARTITION BY RANGE (recorded_at);

-- The same indexes as events, so ATTACH adopts each partition's own copies instead of building
-- new ones, and the gap-safe reader walks (tx_id, position) across both tables with one merge.
CREATE INDEX events_tx_position ON ledger_archive.events (tx_id, position);
CREATE INDEX events_item ON ledger_archive.events (item_id, position);

-- Archived events are as immutable as live ones. The row trigger is cloned to every partition
-- attached later; the TRUNCATE trigger is not, but each partition brings its own along.
CREATE TRIGGER events_no_update_delete
    BEFORE UPDATE OR DELETE ON ledger_archive.events
    FOR EACH ROW EXECUTE FUNCTION events_are_immutable();
CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON ledger_archive.events
    FOR EACH STATEMENT EXECUTE FUNCTION events_are_immutable();

-- Every event ever recorded, live or archived. Readers of the whole ledger (the gap-safe reader,
-- verify) read this; the (tx_id, position) filters and ORDER BY push down into both branches.
CREATE VIEW ledger AS
    SELECT tx_id, position, recorded_at, event_type, agent_id, item_id, payload FROM events
    UNION ALL
    SELECT tx_id, position, recorded_at, event_type, agent_id, item_id, payload
    FROM ledger_archive.events;

-- Moves every month partition of events whose range ends at or before `before` into the archive,
-- in the caller's transaction, and returns the names moved. Idempotent.
--
-- Locks: DETACH holds an ACCESS EXCLUSIVE lock on events until commit, and ATTACH then scans the
-- partition to check its range (a plain DETACH leaves no constraint that would spare the scan),
-- so appends wait for as long as the archived months take to scan. Taking the events lock first,
-- like every reader does, is what keeps this from deadlocking with them; lock_timeout makes it
-- give up, rather than stall every append behind it, while a long reader holds events.
CREATE FUNCTION archive_event_partitions(before timestamptz)
RETURNS SETOF text
LANGUAGE plpgsql
SET search_path = public, pg_temp
SET TimeZone = 'UTC'
SET lock_timeout = '5s'
AS $$
DECLARE
    part   regclass;
    bounds text[];
BEGIN
    LOCK TABLE events IN ACCESS EXCLUSIVE MODE;
    FOR part, bounds IN
        SELECT c.oid::regclass,
               regexp_match(pg_get_expr(c.relpartbound, c.oid),
                            '^FOR VALUES FROM \(''([^'']+)''\) TO \(''([^'']+)''\)$')
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'events'::regclass
        ORDER BY c.relname
    LOOP
        -- The DEFAULT partition has no bounds and is never archived.
        CONTINUE WHEN bounds IS NULL OR bounds[2]::timestamptz > before;
        EXECUTE format('ALTER TABLE events DETACH PARTITION %s', part);
        EXECUTE format('ALTER TABLE ledger_archive.events ATTACH PARTITION %s '
                       'FOR VALUES FROM (%L) TO (%L)', part, bounds[1], bounds[2]);
        RETURN NEXT part::text;
    END LOOP;
END
$$;

-- Owner only: archiving is an operator's decision.
REVOKE ALL ON FUNCTION archive_event_partitions(timestamptz) FROM PUBLIC;

-- The projector replays the whole ledger. The command side only appends to events (its grants
-- there are unchanged); the query side never reads the ledger.
GRANT USAGE ON SCHEMA ledger_archive TO voteledger_projector;
GRANT SELECT ON ledger, ledger_archive.events TO voteledger_projector;
