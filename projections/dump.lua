-- A consistent snapshot of one generation's Redis read models, for verification and rebuilds.
-- KEYS[1]: the namespace. ARGV: the dates (YYYY-MM-DD) whose daily lists to include.
-- Returns {meta, items, days}: items as {id, type, title|false, up, down, net, top, conf, trend};
-- days as {date, type, {member, score, ...}}.
local ns = KEYS[1]
local meta = redis.call('HGETALL', ns .. ':meta')
local items, days = {}, {}
for _, t in ipairs({'song', 'tool'}) do
    local members = redis.call('ZRANGE', ns .. ':top:' .. t, 0, -1, 'WITHSCORES')
    for i = 1, #members, 2 do
        local id = members[i]
        local h = redis.call('HMGET', ns .. ':item:' .. id, 'item_type', 'title', 'up', 'down', 'net')
        items[#items + 1] = {
            id, h[1] or false, h[2] or false, h[3] or '0', h[4] or '0', h[5] or '0',
            members[i + 1],
            redis.call('ZSCORE', ns .. ':conf:' .. t, id) or false,
            redis.call('ZSCORE', ns .. ':trend:' .. t, id) or false,
        }
    end
    for _, d in ipairs(ARGV) do
        local scores = redis.call('ZRANGE', ns .. ':daily:' .. t .. ':' .. d, 0, -1, 'WITHSCORES')
        if #scores > 0 then days[#days + 1] = {d, t, scores} end
    end
end
return {meta, items, days}
