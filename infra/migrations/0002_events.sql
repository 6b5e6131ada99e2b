-- The ledger. Immutable, RANGE-partitioned by month on the time an event was recorded.
--
-- Column order matters: tx_id comes before position so that the transaction id is assigned
-- (by pg_current_xact_id()) before the identity value is drawn. The projection watermark
-- (projections/) relies on "every position drawn before a snapshot belongs to a transaction
-- whose xid is below that snapshot's xmax".
CREATE TABLE events (
    tx_id        xid8        NOT NULL DEFAULT pg_current_xact_id(),
    position     bigint      GENERATED ALWAYS AS IDENTITY,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    event_type   text        NOT NULL,
    agent_id     uuid,
    item_id      text,
    payload      jsonb       NOT NULL,
    PRIMARY KEY (position, recorded_at)
) PARTITION BY RANGE (recorded_at);

-- No write is ever refused for want of a partition: rows outside every month land here.
CREATE TABLE events_default PARTITION OF events DEFAULT;

-- The gap-safe reader walks (tx_id, position); see events/store.py.
CREATE INDEX events_tx_position ON events (tx_id, position);
CREATE INDEX events_item ON events (item_id, position);

-- Immutability is enforced by the database, not by convention.
CREATE FUNCTION events_are_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are immutable: % is not allowed on %', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

-- Row triggers on a partitioned table are cloned to every partition, present and future.
CREATE TRIGGER events_no_update_delete
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_immutable();

-- TRUNCATE triggers are not cloned, so each partition gets its own (see ensure_event_partitions).
CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_are_immutable();
CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events_default
    FOR EACH STATEMENT EXECUTE FUNCTION events_are_immutable();

-- NOTIFY is only a wake-up for projectors. PostgreSQL folds identical notifications of one
-- transaction into one, so this statement trigger costs one NOTIFY per appending transaction,
-- however many events or statements it has.
CREATE FUNCTION events_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('voteledger_events', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER events_notify
    AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_notify();

-- Creates the monthly partitions from the month of `start_at` up to `months_ahead` months after
-- the current one. Idempotent. A month whose rows already sit in the DEFAULT partition cannot get
-- its own partition without moving immutable rows, so it is skipped with a notice and those rows
-- stay (readable) in the DEFAULT partition. SECURITY DEFINER so the projector role may call it
-- periodically without owning the table.
CREATE FUNCTION ensure_event_partitions(start_at timestamptz, months_ahead integer)
RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    month_start date := date_trunc('month', start_at AT TIME ZONE 'UTC')::date;
    last_month  date := (date_trunc('month', now() AT TIME ZONE 'UTC')
                         + make_interval(months => months_ahead))::date;
    part        text;
BEGIN
    WHILE month_start <= last_month LOOP
        part := format('events_%s', to_char(month_start, 'YYYY_MM'));
        IF to_regclass(part) IS NULL THEN
            BEGIN
                EXECUTE format(
                    'CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                    part,
                    (month_start::timestamp AT TIME ZONE 'UTC'),
                    ((month_start + interval '1 month')::timestamp AT TIME ZONE 'UTC'));
                EXECUTE format(
                    'CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON %I '
                    'FOR EACH STATEMENT EXECUTE FUNCTION events_are_immutable()', part);
                RETURN NEXT part;
            EXCEPTION WHEN check_violation THEN
                RAISE NOTICE 'partition % skipped: its rows are already in events_default', part;
            END;
        END IF;
        month_start := (month_start + interval '1 month')::date;
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION ensure_event_partitions(timestamptz, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ensure_event_partitions(timestamptz, integer) TO voteledger_projector;

-- Appending needs INSERT (and SELECT for RETURNING); reading needs SELECT. No role gets UPDATE,
-- DELETE or TRUNCATE.
GRANT SELECT, INSERT ON events TO voteledger_command;
-- currval(): a vote's slot records the position its event just drew, in the same round trip.
GRANT SELECT ON SEQUENCE events_position_seq TO voteledger_command;
GRANT SELECT ON events TO voteledger_projector;

-- The projector reads the last drawn position (never draws one) to compute its watermark.
GRANT SELECT ON SEQUENCE events_position_seq TO voteledger_projector;
