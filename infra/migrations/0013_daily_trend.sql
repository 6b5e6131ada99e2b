-- Per-(day, item) trending sums: each UTC day's votes weighted 2^((t - end of day)/half-life),
-- with t the time the vote counts at for trending (projections.model.trending_times), so the
-- query API can split an item's trending score into per-day contributions
-- (GET /api/v1/items/{item_id}/explain?sort=trending). Relative to a fixed per-day reference,
-- they never need rescaling.
--
-- `checkpoint.day_trend_ready`: the generation holds them for every day. A generation made before
-- this migration gets the column (0 everywhere) and is not ready: its per-day sums come with the
-- next `voteledger rebuild`; until then the explanation of a trending score answers 409 and
-- verify reports the days whose sums are missing. New generations, and existing ones that have
-- applied nothing yet, are ready from the start.

DO $$
DECLARE
    s text;
BEGIN
    FOR s IN SELECT nspname FROM pg_namespace WHERE nspname ~ '^rm_g[0-9]+$' LOOP
        EXECUTE format($ddl$
            ALTER TABLE %1$I.daily ADD COLUMN IF NOT EXISTS trend double precision NOT NULL DEFAULT 0;
            CREATE INDEX IF NOT EXISTS daily_item ON %1$I.daily (item_id, day);
            ALTER TABLE %1$I.checkpoint
                ADD COLUMN IF NOT EXISTS day_trend_ready boolean NOT NULL DEFAULT false;
            -- One that has applied nothing yet lacks nothing.
            UPDATE %1$I.checkpoint SET day_trend_ready = true
            WHERE position = 0 AND events_applied = 0;
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
            -- The day's votes' trending weights, relative to the end of the day
            -- (projections.model.day_reference): never rescaled.
            trend      double precision NOT NULL DEFAULT 0,
            PRIMARY KEY (day, item_id)
        );
        CREATE INDEX ON %1$I.daily (day, item_type, net DESC, item_id DESC);
        CREATE INDEX daily_item ON %1$I.daily (item_id, day);
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
            day_trend_ready   boolean          NOT NULL DEFAULT true,
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
