-- Daily chart snapshots with a hash chain, one set per read-model generation (rm_g<N>).
-- projections/snapshots.py says what a snapshot is and when a day closes; the projector writes
-- them in the same transaction as the read models, the query API reads them (as-of charts,
-- rank history, digests).

CREATE FUNCTION create_snapshot_tables(gen integer) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    s text := format('rm_g%s', gen);
BEGIN
    EXECUTE format($ddl$
        -- Every chart of every closed day: each listed item's rank and score.
        CREATE TABLE %1$I.snapshot_rows (
            day       date             NOT NULL,
            chart     text             NOT NULL,
            item_type text             NOT NULL,
            rank      integer          NOT NULL,
            item_id   text COLLATE "C" NOT NULL,
            score     double precision NOT NULL,
            PRIMARY KEY (day, chart, item_type, rank)
        );
        CREATE INDEX ON %1$I.snapshot_rows (item_id, day);
        -- One link of the chain per closed day, and the read-order checkpoint of the last event
        -- applied before the day closed (position is what X-Ledger-Position reports).
        CREATE TABLE %1$I.snapshot_days (
            day       date        PRIMARY KEY,
            digest    text        NOT NULL,
            previous  text        NOT NULL,
            position  bigint      NOT NULL,
            tx_id     xid8        NOT NULL,
            closed_at timestamptz NOT NULL DEFAULT now()
        );
        -- The open day: the one the next event on a later day closes (NULL before any event).
        CREATE TABLE %1$I.snapshot_clock (
            only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
            open_day date
        );
        INSERT INTO %1$I.snapshot_clock (open_day)
        SELECT (last_event_at AT TIME ZONE 'UTC')::date FROM %1$I.checkpoint
        WHERE projection = 'postgres';
        GRANT USAGE ON SCHEMA %1$I TO voteledger_projector, voteledger_query;
        GRANT SELECT, INSERT, UPDATE ON %1$I.snapshot_rows, %1$I.snapshot_days,
            %1$I.snapshot_clock TO voteledger_projector;
        GRANT SELECT ON %1$I.snapshot_rows, %1$I.snapshot_days, %1$I.snapshot_clock
            TO voteledger_query;
    $ddl$, s);
END
$$;

-- Existing generations start closing days from the day of the last event they applied: the days
-- before it get snapshots from the next rebuild.
DO $$
DECLARE
    g integer;
BEGIN
    FOR g IN SELECT substr(nspname, 5)::int FROM pg_namespace WHERE nspname ~ '^rm_g[0-9]+$' LOOP
        PERFORM create_snapshot_tables(g);
    END LOOP;
END
$$;
