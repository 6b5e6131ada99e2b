-- Applies one projected batch to the Redis read models of one generation, atomically, with its
-- checkpoint. KEYS[1] is the generation's namespace (a hash tag: every key below shares its slot).
-- ARGV[1] is the JSON of projections.redis_store.ApplyArgs; the reply is the JSON of ApplyResult.
--
-- The batch is refused unless the stored checkpoint is exactly where the batch starts and no
-- higher fencing token has written: a replayed batch, a batch from a worker that lost its lease,
-- or one that overlaps what another worker applied changes nothing.
--
-- Redis does not roll back a script that fails halfway, so every check comes before the first
-- write, and no command after it can fail on the inputs it gets (stream ids only ever grow).
local ns = KEYS[1]
local a = cjson.decode(ARGV[1])
local meta = ns .. ':meta'

local function refused(reason)
    return cjson.encode({applied = false, reason = reason})
end

local cur = redis.call('HMGET', meta, 'tx_id', 'position', 'fence', 'epoch', 'retired', 'dirty',
                       'independent')
-- An earlier batch failed after its first write (Redis keeps what a failed script wrote):
-- applying anything now would count part of that batch twice. Only a rebuild can mend it.
if cur[6] then
    return cjson.encode({applied = false, broken = true,
                         reason = 'a batch failed halfway at ' .. cur[6] .. '; rebuild redis'})
end
-- A rebuild switched readers to a newer generation: this one must not move past what they saw.
if cur[5] then
    return refused('generation retired')
end
if (cur[1] or '0') ~= a.from_tx or (cur[2] or '0') ~= a.from_pos then
    return refused('checkpoint is at ' .. (cur[1] or '0') .. '/' .. (cur[2] or '0'))
end
if tonumber(cur[3] or '0') > a.fence then
    return refused('fenced by token ' .. cur[3])
end
-- A generation made before the independent chart lacks its data: the worker starting on it
-- projects it again (projections/independent_redis.py); adding to it would never mend it.
if cur[1] and not cur[7] then
    return refused('generation predates the independent chart')
end

local function num(x)
    return string.format('%.17g', x)
end

-- The same operations in the same order as projections/model.py and the SQL function, so all
-- three give bit-identical doubles and rank ties identically.
local z = 1.959963984540054
local function wilson(up, down)
    local n = up + down
    if up <= 0 or down < 0 then return 0 end
    local p = up / n
    local z2 = z * z
    local v = (p + z2 / (2 * n) - z * math.sqrt((p * (1 - p) + z2 / (4 * n)) / n)) / (1 + z2 / n)
    if v < 0 then return 0 end
    return v
end

local function sign(x)
    if x > 0 then return 1 elseif x < 0 then return -1 end
    return 0
end

-- Adds a batch's per-owner totals of one item ([owner, value, active] each, each owner once);
-- returns what they change in the item's independent score (the sum of the owners' signs) and
-- its owner count. Two calls per chunk of owners (HMGET, HSET), not two per owner; chunks keep
-- unpack() within Lua's stack.
local OWNER_CHUNK = 256
local function add_owners(own, owners)
    local score, count = 0, 0
    for first = 1, #owners, OWNER_CHUNK do
        local last = math.min(first + OWNER_CHUNK - 1, #owners)
        local fields = {}
        for i = first, last do
            local owner = owners[i][1]
            fields[#fields + 1] = 'v:' .. owner
            fields[#fields + 1] = 'a:' .. owner
        end
        local old = redis.call('HMGET', own, unpack(fields))
        local set = {}
        for i = first, last do
            local o, n = owners[i], 2 * (i - first)
            local was_value, was_active = tonumber(old[n + 1] or 0), tonumber(old[n + 2] or 0)
            local value, active = was_value + o[2], was_active + o[3]
            score = score + sign(value) - sign(was_value)
            count = count + (active > 0 and 1 or 0) - (was_active > 0 and 1 or 0)
            set[#set + 1] = fields[n + 1]
            set[#set + 1] = value
            set[#set + 1] = fields[n + 2]
            set[#set + 1] = active
        end
        redis.call('HSET', own, unpack(set))
    end
    return score, count
end

-- From here on the script writes: marked until the final meta update, so that a failure in
-- between (out of memory, a key of the wrong type) is seen by the next batch, never repeated.
redis.call('HSET', meta, 'dirty', a.to_pos)

-- Moving the trending epoch: every stored sum is rescaled by the same factor (ranks unchanged).
-- Sums too small to survive it become 0, as in projections/model.py and the PostgreSQL store.
if a.factor ~= '1.0' and cur[4] then
    local factor, keep = tonumber(a.factor), tonumber(a.keep)
    for _, item_type in ipairs(a.item_types) do
        local key = ns .. ':trend:' .. item_type
        local all = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
        for i = 1, #all, 2 do
            local score = tonumber(all[i + 1])
            if math.abs(score) >= keep then score = score * factor else score = 0 end
            redis.call('ZADD', key, num(score), all[i])
        end
    end
end

local changed = {}
for _, it in ipairs(a.items) do
    local id, item_type = it.item_id, it.item_type
    local key = ns .. ':item:' .. id
    local up = redis.call('HINCRBY', key, 'up', it.up)
    local down = redis.call('HINCRBY', key, 'down', it.down)
    local net = up - down
    local added
    if it.title then
        added = redis.call('HSET', key, 'item_type', item_type, 'net', net, 'title', it.title)
    else
        added = redis.call('HSET', key, 'item_type', item_type, 'net', net)
    end
    -- The first vote's UTC day: an item voted on before the days Redis keeps is explained from
    -- PostgreSQL (queries/explain.lua). ISO dates of one width compare as strings.
    if it.first_day then
        local first = redis.call('HGET', key, 'first_day')
        if not first or it.first_day < first then
            redis.call('HSET', key, 'first_day', it.first_day)
        end
    end
    redis.call('ZADD', ns .. ':top:' .. item_type, net, id)
    redis.call('ZADD', ns .. ':conf:' .. item_type, num(wilson(up, down)), id)
    local trend = redis.call('ZINCRBY', ns .. ':trend:' .. item_type, it.trend, id)
    local score, count = 0, 0
    if it.owners then score, count = add_owners(ns .. ':own:' .. id, it.owners) end
    -- Most batches move few items' independent scores: a known item whose owners' signs and
    -- count stand keeps its values (a new one gets them, and its place on the chart).
    if score ~= 0 or count ~= 0 or added > 0 then
        local independent = redis.call('HINCRBY', key, 'independent', score)
        redis.call('HINCRBY', key, 'owners', count)
        redis.call('ZADD', ns .. ':indep:' .. item_type, independent, id)
    end
    changed[#changed + 1] = {item_id = id, item_type = item_type, up = up, down = down, net = net,
                             trend = trend}
end

-- A day's lists expire with the day (one time per key): set once per key, not per item.
local expiring = {}
for _, d in ipairs(a.days) do
    local key = ns .. ':daily:' .. d.item_type .. ':' .. d.day
    redis.call('ZINCRBY', key, d.net, d.item_id)
    local trend = key .. ':trend'
    redis.call('ZINCRBY', trend, d.trend, d.item_id)
    if not expiring[key] then
        expiring[key] = true
        redis.call('EXPIREAT', key, d.expire_at)
        redis.call('EXPIREAT', trend, d.expire_at)
    end
end

-- `head`: the ledger head as the worker last saw it, so readers can refuse positions beyond it.
redis.call('HSET', meta, 'tx_id', a.to_tx, 'position', a.to_pos, 'watermark', a.watermark,
           'fence', a.fence, 'epoch', a.epoch, 'head', a.head, 'independent', 1)
redis.call('HDEL', meta, 'dirty')
-- "live": this generation has caught up with the ledger at least once, so readers may use it.
if a.live then
    redis.call('HSET', meta, 'live', 1)
end
-- A generation projected from the start keeps per-day trending sums for all its days; one made
-- before them is projected again (projections.redis_store.RedisStore.start).
if not cur[1] then
    redis.call('HSET', meta, 'day_trend', 1)
end
if a.last_event_at ~= '' then
    redis.call('HSET', meta, 'last_event_at', a.last_event_at)
end
redis.call('HINCRBY', meta, 'events_applied', a.events)

-- Change notices for the query side's live stream: the capped stream lets a reconnecting client
-- resume (or learn that it missed too much); pub/sub wakes waiting readers at once. A notice is
-- identified by the watermark it reflects, so notices wait (latest values per item) until the
-- watermark moves: every notice then has its own, increasing position. Each item is the JSON of
-- projections.redis_store.ChangedItem.
local pending = ns .. ':pending'
for first = 1, #changed, OWNER_CHUNK do  -- one HSET per chunk of items, not one per item
    local set = {}
    for i = first, math.min(first + OWNER_CHUNK - 1, #changed) do
        set[#set + 1] = changed[i].item_id
        set[#set + 1] = cjson.encode(changed[i])
    end
    redis.call('HSET', pending, unpack(set))
end
local streamed = tonumber(redis.call('HGET', meta, 'streamed') or '-1')
local position = tonumber(a.watermark)
if position > 0 and position > streamed and redis.call('EXISTS', pending) == 1 then
    local rows = redis.call('HVALS', pending)
    redis.call('XADD', ns .. ':changes', 'MAXLEN', '~', a.stream_max, a.watermark .. '-0',
               'position', a.watermark, 'epoch', a.epoch,
               'items', '[' .. table.concat(rows, ',') .. ']')
    redis.call('DEL', pending)
    redis.call('HSET', meta, 'streamed', a.watermark)
end
redis.call('PUBLISH', ns .. ':changes', a.watermark)
return cjson.encode({applied = true})
