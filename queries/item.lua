-- One item's detail and its ranks, with the watermark it reflects, in one atomic call.
-- KEYS[1]: the generation's namespace. ARGV[1]: a JSON map (queries.redis_reader.ItemArgs):
-- item_id, day (today, YYYY-MM-DD).
-- `head` is the ledger head the projector last saw (absent until it has written one).
-- Returns a JSON map (queries.redis_reader.ItemReply), without `item` for an unknown item. Scores
-- stay the strings Redis gives, so they are exact doubles; absent values are left out (cjson has
-- no null).
local ns = KEYS[1]
local args = cjson.decode(ARGV[1])
local id = args.item_id
local meta = redis.call('HMGET', ns .. ':meta', 'watermark', 'epoch', 'live', 'head')
local reply = {watermark = meta[1] or '0', live = meta[3] == '1'}
if meta[2] then reply.epoch = meta[2] end
if meta[4] then reply.head = meta[4] end
local h = redis.call('HMGET', ns .. ':item:' .. id, 'item_type', 'title', 'up', 'down',
                     'independent', 'owners')
if not h[1] then
    return cjson.encode(reply)
end
local t = h[1]
local daily = ns .. ':daily:' .. t .. ':' .. args.day
local function rank(key)
    local r = redis.call('ZREVRANK', key, id)
    if r then return r + 1 end
    return nil
end
reply.item = {
    item_type = t,
    title = h[2] or '',
    up = tonumber(h[3] or '0'),
    down = tonumber(h[4] or '0'),
    confidence = redis.call('ZSCORE', ns .. ':conf:' .. t, id) or '0',
    trend = redis.call('ZSCORE', ns .. ':trend:' .. t, id) or '0',
    rank_top = rank(ns .. ':top:' .. t),
    rank_trending = rank(ns .. ':trend:' .. t),
    rank_daily = rank(daily),
    daily_net = redis.call('ZSCORE', daily, id) or nil,
    independent = tonumber(h[5] or '0'),
    owners = tonumber(h[6] or '0'),
    rank_independent = rank(ns .. ':indep:' .. t),
}
return cjson.encode(reply)
