-- The command side's own state. None of these tables is partitioned: uniqueness and row locks
-- need plain primary keys (a unique index on the partitioned events table would have to include
-- recorded_at, which makes "one vote per agent per item" inexpressible there).

-- Credentials never enter the ledger: only the SHA-256 digest of an API key is stored, here.
CREATE TABLE agents (
    agent_id    uuid        PRIMARY KEY,
    name        text        NOT NULL DEFAULT '',
    key_digest  bytea       NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE items (
    item_id     text        PRIMARY KEY,
    item_type   text        NOT NULL CHECK (item_type IN ('song', 'tool')),
    title       text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- The authority for "one current vote per agent per item". A vote command locks its slot,
-- decides, appends, and bumps the version in one transaction.
CREATE TABLE vote_slots (
    agent_id    uuid        NOT NULL REFERENCES agents,
    item_id     text        NOT NULL REFERENCES items,
    direction   text        NOT NULL DEFAULT 'none' CHECK (direction IN ('up', 'down', 'none')),
    cast_at     timestamptz,
    version     bigint      NOT NULL DEFAULT 0,
    -- The ledger position of the slot's last event, so a repeated vote can still tell the
    -- client which position to wait for when it reads its own write.
    last_position bigint,
    PRIMARY KEY (agent_id, item_id)
);

-- A retried request with the same key returns the stored response. The row is inserted first in
-- the command's transaction, so a concurrent request with the same key waits on it and then
-- replays it instead of acting twice.
CREATE TABLE idempotency_keys (
    agent_id      uuid        NOT NULL,
    key           text        NOT NULL,
    request_hash  bytea       NOT NULL,
    status        smallint,
    response      bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_id, key)
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);

GRANT SELECT, INSERT, UPDATE ON agents, items, vote_slots TO voteledger_command;
GRANT SELECT, INSERT, UPDATE, DELETE ON idempotency_keys TO voteledger_command;
