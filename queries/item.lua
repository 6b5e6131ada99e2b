-- One item's detail and its ranks, with the watermark it reflects, in one atomic call.
-- KEYS[1]: the generation's namespace. ARGV: item id, today's date (YYYY-MM-DD).
local ns = KEYS[1]
local id = ARGV[1]
local meta = redis.call('HMGET', ns .. ':meta', 'watermark', 'epoch', 'live')
local h = redis.call('HMGET', ns .. ':item:' .. id, 'item_type', 'title', 'up', 'down')
if not h[1] then
    return {meta[1] or '0', meta[2] or '', meta[3] or '0', false}
end
local t = h[1]
local function rank(key)
    local r = redis.call('ZREVRANK', key, id)
    if r then return r + 1 end
    return false
end
local detail = {
    t, h[2] or '', h[3] or '0', h[4] or '0',
    redis.call('ZSCORE', ns .. ':conf:' .. t, id) or '0',
    redis.call('ZSCORE', ns .. ':trend:' .. t, id) or '0',
    rank(ns .. ':top:' .. t), rank(ns .. ':trend:' .. t),
    rank(ns .. ':daily:' .. t .. ':' .. ARGV[2]),
    redis.call('ZSCORE', ns .. ':daily:' .. t .. ':' .. ARGV[2], id) or false,
}
return {meta[1] or '0', meta[2] or '', meta[3] or '0', detail}
