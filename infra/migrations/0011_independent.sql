-- The independent chart: each owner counts once per item, with the sign of the sum of its agents'
-- current votes there (+1, 0, -1); `independent` is the sum of those signs, `owners` the number
-- of owners with at least one agent's vote (up or down) on the item. Neither is additive, so each
-- generation keeps the additive per-(item, owner) totals in `item_owners` and the projector moves
-- `independent` and `owners` by what each touched (item, owner) changed (projections/model.py).
--
-- `checkpoint.independent_ready`: the generation holds the independent data for everything up to
-- its checkpoint. A generation made before this migration has none: it gets the columns and the
-- table here (empty, so readers keep working), not ready, and the projector fills them once from
-- a fold of the ledger up to its checkpoint before it applies anything more
-- (projections/postgres_store.py). A new generation is not ready either until the projector or a
-- rebuild has written it, so one made by an older release is never taken for filled.

DO $$
DECLARE
    s text;
BEGIN
    FOR s IN SELECT nspname FROM pg_namespace WHERE nspname ~ '^rm_g[0-9]+$' LOOP
        EXECUTE format($ddl$
            ALTER TABLE %1$I.items ADD COLUMN IF NOT EXISTS independent bigint NOT NULL DEFAULT 0;
            ALTER TABLE %1$I.items ADD COLUMN IF NOT EXISTS owners bigint NOT NULL DEFAULT 0;
            CREATE INDEX IF NOT EXISTS items_independent
                ON %1$I.items (item_type, independent DESC, item_id DESC);
            CREATE TABLE IF NOT EXISTS %1$I.item_owners (
                item_id text COLLATE "C" NOT NULL,
                owner   text COLLATE "C" NOT NULL,
                value   bigint NOT NULL DEFAULT 0,
                active  bigint NOT NULL DEFAULT 0,
                PRIMARY KEY (item_id, owner)
            );
            ALTER TABLE %1$I.checkpoint
                ADD COLUMN IF NOT EXISTS independent_ready boolean NOT NULL DEFAULT false;
            GRANT SELECT, INSERT, UPDATE ON %1$I.item_owners TO voteledger_projector;
            GRANT SELECT ON %1$I.item_owners TO voteledger_query;
        $ddl$, s);
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
            last_vote_at  timestamptz,
            independent   bigint           NOT NULL DEFAULT 0,
            owners        bigint           NOT NULL DEFAULT 0
        );
        CREATE INDEX ON %1$I.items (item_type, net DESC, item_id DESC);
        CREATE INDEX ON %1$I.items (item_type, wilson DESC, item_id DESC);
        CREATE INDEX ON %1$I.items (item_type, trend DESC, item_id DESC);
        CREATE INDEX items_independent ON %1$I.items (item_type, independent DESC, item_id DESC);
        -- Per (item, owner): the sum of the owner's agents' vote values, and how many of them
        -- have an up or down vote on the item.
        CREATE TABLE %1$I.item_owners (
            item_id text COLLATE "C" NOT NULL,
            owner   text COLLATE "C" NOT NULL,
            value   bigint NOT NULL DEFAULT 0,
            active  bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (item_id, owner)
        );
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
            projection        text             PRIMARY KEY,
            tx_id             xid8             NOT NULL DEFAULT '0',
            position          bigint           NOT NULL DEFAULT 0,
            watermark         bigint           NOT NULL DEFAULT 0,
            fence             bigint           NOT NULL DEFAULT 0,
            trend_epoch       double precision,
            events_applied    bigint           NOT NULL DEFAULT 0,
            last_event_at     timestamptz,
            ledger_head       bigint           NOT NULL DEFAULT 0,
            independent_ready boolean          NOT NULL DEFAULT false,
            updated_at        timestamptz      NOT NULL DEFAULT now()
        );
        INSERT INTO %1$I.checkpoint (projection) VALUES ('postgres');
        GRANT USAGE ON SCHEMA %1$I TO voteledger_projector, voteledger_query;
        GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA %1$I TO voteledger_projector;
        GRANT SELECT ON ALL TABLES IN SCHEMA %1$I TO voteledger_query;
    $ddl$, s);
    RETURN s;
END
$$;
