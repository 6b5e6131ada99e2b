-- Projection health, the ledger's identity, and the ledger head in each read-model checkpoint.

-- The ledger's identity: the Redis read models record it, so a Redis that holds another ledger's
-- read models (a reused server or prefix) is cleared and rebuilt instead of projected onto.
CREATE TABLE ledger_identity (
    only_row   boolean     PRIMARY KEY DEFAULT true CHECK (only_row),
    ledger_id  uuid        NOT NULL DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO ledger_identity DEFAULT VALUES;
GRANT SELECT ON ledger_identity TO voteledger_projector, voteledger_query;

-- What each projection's worker reports, so that `voteledger status` (another process) can tell
-- a stalled projection: the event it cannot fold (position and reason, since when), and its
-- progress against the head (the head it last saw, its watermark, when the watermark last
-- moved). A worker that died stops writing here: status then compares the ledger's own head with
-- the watermark and the age of the last progress.
CREATE TABLE projection_health (
    projection       text        PRIMARY KEY,
    stalled_position bigint,
    reason           text,
    since            timestamptz,
    head_seen        bigint      NOT NULL DEFAULT 0,
    watermark        bigint      NOT NULL DEFAULT 0,
    progress_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT, INSERT, UPDATE ON projection_health TO voteledger_projector;
GRANT SELECT ON projection_health TO voteledger_query;

-- The ledger head as the projector last saw it, in every generation's checkpoint row, so the
-- query side can refuse a position beyond it at once.
DO $$
DECLARE
    s text;
BEGIN
    FOR s IN SELECT nspname FROM pg_namespace WHERE nspname ~ '^rm_g[0-9]+$' LOOP
        EXECUTE format(
            'ALTER TABLE %I.checkpoint ADD COLUMN IF NOT EXISTS ledger_head bigint NOT NULL DEFAULT 0',
            s);
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION create_read_models(gen integer) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    s text := format('rm_g%s', gen);
BEGIN
    EXECUTE format('CREATE SCHEMA %I', s);
    EXECUTE format($ddl$
        CREATE TABLE %1$I.items (
            -- COLLATE "C": ties rank by item id bytewise, exactly as Redis sorted sets do.
            item_id       text COLLATE "C" PRIMARY KEY,
            item_type     text             NOT NULL,
            title         text             NOT NULL DEFAULT '',
            listed_at     timestamptz,
            up            bigint           NOT NULL DEFAULT 0,
            down          bigint           NOT NULL DEFAULT 0,
            net           bigint           NOT NULL DEFAULT 0,
            wilson        double precision NOT NULL DEFAULT 0,
            trend         double precision NOT NULL DEFAULT 0,
            first_vote_at timestamptz,
            last_vote_at  timestamptz
        );
        CREATE INDEX ON %1$I.items (item_type, net DESC, item_id DESC);
        CREATE INDEX ON %1$I.items (item_type, wilson DESC, item_id DESC);
        CREATE INDEX ON %1$I.items (item_type, trend DESC, item_id DESC);
        CREATE TABLE %1$I.daily (
            day        date   NOT NULL,
            item_id    text COLLATE "C" NOT NULL,
            item_type  text   NOT NULL,
            up         bigint NOT NULL DEFAULT 0,
            down       bigint NOT NULL DEFAULT 0,
            net        bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (day, item_id)
        );
        CREATE INDEX ON %1$I.daily (day, item_type, net DESC, item_id DESC);
        -- The checkpoint commits in the same transaction as the rows above.
        CREATE TABLE %1$I.checkpoint (
            projection      text             PRIMARY KEY,
            tx_id           xid8             NOT NULL DEFAULT '0',
            position        bigint           NOT NULL DEFAULT 0,
            watermark       bigint           NOT NULL DEFAULT 0,
            fence           bigint           NOT NULL DEFAULT 0,
            trend_epoch     double precision,
            events_applied  bigint           NOT NULL DEFAULT 0,
            last_event_at   timestamptz,
            ledger_head     bigint           NOT NULL DEFAULT 0,
            updated_at      timestamptz      NOT NULL DEFAULT now()
        );
        INSERT INTO %1$I.checkpoint (projection) VALUES ('postgres');
        GRANT USAGE ON SCHEMA %1$I TO voteledger_projector, voteledger_query;
        GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA %1$I TO voteledger_projector;
        GRANT SELECT ON ALL TABLES IN SCHEMA %1$I TO voteledger_query;
    $ddl$, s);
    RETURN s;
END
$$;
