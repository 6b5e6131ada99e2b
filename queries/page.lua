-- One page of a ranking, with the watermark it reflects, in one atomic call.
-- KEYS[1]: the generation's namespace. ARGV[1]: a JSON map (queries.redis_reader.PageArgs):
-- list_key (the key suffix: 'top:song', 'daily:tool:2026-11-25'), limit, min_votes (0: no filter),
-- and after_score, after_id (the cursor; absent on the first page).
-- `head` is the ledger head the projector last saw (absent until it has written one).
-- Returns a JSON map (queries.redis_reader.PageReply). Scores stay the strings Redis gives, so they
-- are exact doubles; absent values and empty lists are left out (cjson has no null, and encodes
-- an empty table as a map).
-- Ranking order is ZREVRANGE's: score descending, ties by item id descending (bytewise).
local ns = KEYS[1]
local args = cjson.decode(ARGV[1])
local key = ns .. ':' .. args.list_key
local limit = args.limit
local min_votes = args.min_votes
local meta = redis.call('HMGET', ns .. ':meta', 'watermark', 'epoch', 'live', 'head')

-- Keyset paging: continue right after (cursor score, cursor id), wherever that now ranks.
local start = 0
if args.after_score then
    local after_score, after_id = args.after_score, args.after_id
    local score = redis.call('ZSCORE', key, after_id)
    if score and tonumber(score) == tonumber(after_score) then
        start = redis.call('ZREVRANK', key, after_id) + 1
    else
        start = redis.call('ZCOUNT', key, '(' .. after_score, '+inf')
        for _, member in ipairs(redis.call('ZRANGE', key, after_score, after_score, 'BYSCORE')) do
            if member >= after_id then start = start + 1 end
        end
    end
end

-- With a minimum-votes filter some members are skipped; the scan is bounded, and the cursor
-- returned points at the last member looked at, so the next page carries on from there.
local rows, pos, scanned = {}, start, 0
local last_id, last_score
local max_scan = limit * 20 + 200
while #rows < limit and scanned < max_scan do
    local chunk = redis.call('ZREVRANGE', key, pos, pos + limit - 1, 'WITHSCORES')
    if #chunk == 0 then break end
    for i = 1, #chunk, 2 do
        local id, score = chunk[i], chunk[i + 1]
        pos, scanned = pos + 1, scanned + 1
        last_id, last_score = id, score
        local h = redis.call('HMGET', ns .. ':item:' .. id, 'item_type', 'title', 'up', 'down')
        local up, down = tonumber(h[3] or '0'), tonumber(h[4] or '0')
        if up + down >= min_votes then
            rows[#rows + 1] = {
                item_id = id, score = score, item_type = h[1] or '', title = h[2] or '',
                up = up, down = down,
            }
            if #rows >= limit then break end
        end
    end
end

local reply = {
    watermark = meta[1] or '0',
    live = meta[3] == '1',
    more = redis.call('ZCARD', key) > pos,
}
if last_id then reply.last = {item_id = last_id, score = last_score} end
if meta[2] then reply.epoch = meta[2] end
if meta[4] then reply.head = meta[4] end
if #rows > 0 then reply.rows = rows end
return cjson.encode(reply)
