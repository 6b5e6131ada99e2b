-- A consistent snapshot of one generation's Redis read models, for verification.
-- KEYS[1]: the namespace. ARGV[1]: the JSON of projections.redis_dump.DumpArgs (the item types,
-- and the dates whose daily lists to include). The reply is the JSON of DumpReply there; empty
-- lists and absent values are left out (cjson would write an empty table as {} and nil as null).
local ns = KEYS[1]
local a = cjson.decode(ARGV[1])
local raw = redis.call('HGETALL', ns .. ':meta')
local meta = {}
for i = 1, #raw, 2 do
    meta[raw[i]] = raw[i + 1]
end
local items, days = {}, {}
for _, t in ipairs(a.item_types) do
    local members = redis.call('ZRANGE', ns .. ':top:' .. t, 0, -1, 'WITHSCORES')
    for i = 1, #members, 2 do
        local id = members[i]
        local h = redis.call('HMGET', ns .. ':item:' .. id, 'item_type', 'title', 'up', 'down', 'net',
                             'independent', 'owners')
        local own = redis.call('HGETALL', ns .. ':own:' .. id)
        items[#items + 1] = {
            item_id = id, item_type = h[1] or nil, title = h[2] or nil,
            up = h[3] or '0', down = h[4] or '0', net = h[5] or '0', top = members[i + 1],
            conf = redis.call('ZSCORE', ns .. ':conf:' .. t, id) or nil,
            trend = redis.call('ZSCORE', ns .. ':trend:' .. t, id) or nil,
            independent = h[6] or '0', owners = h[7] or '0',
            indep = redis.call('ZSCORE', ns .. ':indep:' .. t, id) or nil,
            own = #own > 0 and own or nil,
        }
    end
    for _, d in ipairs(a.dates) do
        local scores = redis.call('ZRANGE', ns .. ':daily:' .. t .. ':' .. d, 0, -1, 'WITHSCORES')
        local trend_key = ns .. ':daily:' .. t .. ':' .. d .. ':trend'
        local trends = redis.call('ZRANGE', trend_key, 0, -1, 'WITHSCORES')
        if #scores > 0 or #trends > 0 then
            local day = {day = d, item_type = t}
            if #scores > 0 then day.scores = scores end
            if #trends > 0 then day.trends = trends end
            days[#days + 1] = day
        end
    end
end
local reply = {meta = meta}
if #items > 0 then reply.items = items end
if #days > 0 then reply.days = days end
return cjson.encode(reply)
