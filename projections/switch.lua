-- Switches the Redis generation pointer to a new generation, only if the new generation is at
-- least as far as the old one, and retires the old one in the same step: its worker's next apply
-- is refused, so the old generation never gets ahead of what readers of the new one see.
-- KEYS: the pointer (projections.generations), the old generation's meta, the new one's.
-- ARGV[1]: the new generation. The reply is 1 when switched, 0 when the new one is behind.
-- (All three share the prefix's hash tag, `{<prefix>}` (projections.redis_keys), so they are in
-- one hash slot: the script runs on Redis Cluster as on a single server.)
local old = tonumber(redis.call('HGET', KEYS[2], 'watermark') or '0')
local new = tonumber(redis.call('HGET', KEYS[3], 'watermark') or '0')
if new < old then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'retired', 1)
return 1
