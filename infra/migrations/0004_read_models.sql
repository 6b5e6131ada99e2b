-- Read models. Each generation lives in a schema of its own, rm_g<N>, so a rebuild can fill a new
-- generation beside the live one and switch readers over by changing one pointer.

CREATE TABLE read_model_generation (
    only_row    boolean     PRIMARY KEY DEFAULT true CHECK (only_row),
    generation  integer     NOT NULL,
    switched_at timestamptz NOT NULL DEFAULT now()
);

-- One row per projection: the fencing token of the worker that holds its lease. The lease itself
-- is a session advisory lock; the token lets stores refuse writes from a worker that lost it.
CREATE TABLE projection_leases (
    projection  text        PRIMARY KEY,
    fence       bigint      NOT NULL DEFAULT 0,
    holder      text,
    acquired_at timestamptz
);

-- The same operations in the same order as projections/model.py and projections/apply.lua, so
-- all three give bit-identical doubles and rank ties identically.
CREATE FUNCTION wilson_lower_bound(up bigint, down bigint) RETURNS double precision
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    z  double precision := 1.959963984540054;
    z2 double precision := z * z;
    n  double precision := up + down;
    p  double precision;
    v  double precision;
BEGIN
    IF up <= 0 OR down < 0 THEN
        RETURN 0;
    END IF;
    p := up / n;
    v := (p + z2 / (2 * n) - z * sqrt((p * (1 - p) + z2 / (4 * n)) / n)) / (1 + z2 / n);
    RETURN greatest(v, 0);
END
$$;

CREATE FUNCTION create_read_models(gen integer) RETURNS text
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

SELECT create_read_models(1);
INSERT INTO read_model_generation (generation) VALUES (1);

GRANT SELECT ON read_model_generation TO voteledger_projector, voteledger_query;
GRANT SELECT, INSERT, UPDATE ON projection_leases TO voteledger_projector;
GRANT EXECUTE ON FUNCTION wilson_lower_bound(bigint, bigint) TO voteledger_projector, voteledger_query;
