-- pgbench: the SQL core of one vote command, as the database owner. One event row (a VoteCast
-- payload of the same shape and size) plus the upsert of the agent's slot, in one durable
-- transaction. bench_agents/bench_items number the agents and items the HTTP bench votes with.
\set a random(1, :agents)
\set i random(1, :items)
\set d random(1, 3)
BEGIN;
INSERT INTO events (event_type, agent_id, item_id, payload)
SELECT 'VoteCast', a.agent_id, i.item_id,
       format('{"type":"VoteCast","agent_id":"%s","item_id":"%s","item_type":"%s","direction":"%s","previous":"none","previous_cast_at":null}',
              a.agent_id, i.item_id, i.item_type, (ARRAY['up','down','none'])[:d])::jsonb
FROM bench_agents a, bench_items i WHERE a.n = :a AND i.n = :i;
INSERT INTO vote_slots (agent_id, item_id, direction, cast_at, version)
SELECT a.agent_id, i.item_id, (ARRAY['up','down','none'])[:d], now(), 1
FROM bench_agents a, bench_items i WHERE a.n = :a AND i.n = :i
ON CONFLICT (agent_id, item_id) DO UPDATE
SET direction = excluded.direction, cast_at = excluded.cast_at, version = vote_slots.version + 1;
END;
