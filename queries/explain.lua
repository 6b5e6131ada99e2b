-- One item's stored numbers on one chart, for its score's explanation, with the watermark they
-- reflect, in one atomic call.
-- KEYS[1]: the generation's namespace. ARGV[1]: a JSON map (queries.redis_reader.ExplainArgs):
-- item_id, sort (net, confidence, independent, trending) and, for trending, days (the UTC days
-- Redis keeps, oldest first).
-- Returns a JSON map (queries.redis_reader.ExplainReply), without `item` for an unknown item.
-- Scores stay the strings Redis gives (exact doubles); absent values are left out.
local ns = KEYS[1]
local args = cjson.decode(ARGV[1])
local id = args.item_id
local meta = redis.call('HMGET', ns .. ':meta', 'watermark', 'epoch', 'live', 'head', 'day_trend')
local reply = {watermark = meta[1] or '0', live = meta[3] == '1'}
if meta[2] then reply.epoch = meta[2] end
if meta[4] then reply.head = meta[4] end
local h = redis.call('HMGET', ns .. ':item:' .. id, 'item_type', 'up', 'down', 'first_day')
if not h[1] then
    return cjson.encode(reply)
end
local t = h[1]
local item = {item_type = t, up = tonumber(h[2] or '0'), down = tonumber(h[3] or '0')}
local chart = {net = 'top', confidence = 'conf', independent = 'indep', trending = 'trend'}
item.score = redis.call('ZSCORE', ns .. ':' .. chart[args.sort] .. ':' .. t, id) or '0'
if args.sort == 'independent' then
    local own = redis.call('HGETALL', ns .. ':own:' .. id)
    if #own > 0 then item.own = own end
elseif args.sort == 'trending' then
    -- Complete only if the generation keeps per-day sums and no day of the item has expired.
    item.complete = meta[5] ~= false and not (h[4] and h[4] < args.days[1])
    local days = {}
    for _, day in ipairs(args.days) do
        local net = redis.call('ZSCORE', ns .. ':daily:' .. t .. ':' .. day, id)
        local trend = redis.call('ZSCORE', ns .. ':daily:' .. t .. ':' .. day .. ':trend', id)
        if net or trend then
            days[#days + 1] = {day = day, net = net or '0', trend = trend or '0'}
        end
    end
    if #days > 0 then item.days = days end
end
reply.item = item
return cjson.encode(reply)
