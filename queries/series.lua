-- One item's net votes on each of the given UTC days, with the watermark it reflects, in one
-- atomic call.
-- KEYS[1]: the generation's namespace. ARGV[1]: a JSON map (queries.redis_reader.SeriesArgs):
-- item_id, days (YYYY-MM-DD, at least one; the caller asks only for days Redis still keeps).
-- `head` is the ledger head the projector last saw (absent until it has written one).
-- Returns a JSON map (queries.redis_reader.SeriesReply), without `nets` for an unknown item;
-- `nets` has one score string per day ('0' when the item gained nothing that day).
local ns = KEYS[1]
local args = cjson.decode(ARGV[1])
local id = args.item_id
local meta = redis.call('HMGET', ns .. ':meta', 'watermark', 'live', 'head')
local reply = {watermark = meta[1] or '0', live = meta[2] == '1'}
if meta[3] then reply.head = meta[3] end
local t = redis.call('HGET', ns .. ':item:' .. id, 'item_type')
if not t then
    return cjson.encode(reply)
end
local nets = {}
for i, day in ipairs(args.days) do
    nets[i] = redis.call('ZSCORE', ns .. ':daily:' .. t .. ':' .. day, id) or '0'
end
reply.nets = nets
return cjson.encode(reply)
