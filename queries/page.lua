-- One page of a ranking, with the watermark it reflects, in one atomic call.
-- KEYS[1]: the generation's namespace. ARGV: list key suffix ('top:song', 'daily:tool:2026-11-25'),
-- limit, cursor score ('' for the first page), cursor item id, minimum votes (0: no filter).
-- Ranking order is ZREVRANGE's: score descending, ties by item id descending (bytewise).
local ns = KEYS[1]
local key = ns .. ':' .. ARGV[1]
local limit = tonumber(ARGV[2])
local min_votes = tonumber(ARGV[5])
local meta = redis.call('HMGET', ns .. ':meta', 'watermark', 'epoch', 'live')

-- Keyset paging: continue right after (cursor score, cursor id), wherever that now ranks.
local start = 0
if ARGV[3] ~= '' then
    local score = redis.call('ZSCORE', key, ARGV[4])
    if score and tonumber(score) == tonumber(ARGV[3]) then
        start = redis.call('ZREVRANK', key, ARGV[4]) + 1
    else
        start = redis.call('ZCOUNT', key, '(' .. ARGV[3], '+inf')
        for _, member in ipairs(redis.call('ZRANGE', key, ARGV[3], ARGV[3], 'BYSCORE')) do
            if member >= ARGV[4] then start = start + 1 end
        end
    end
end

-- With a minimum-votes filter some members are skipped; the scan is bounded, and the cursor
-- returned points at the last member looked at, so the next page carries on from there.
local rows, pos, scanned = {}, start, 0
local last_id, last_score = '', ''
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
            rows[#rows + 1] = {id, score, h[1] or '', h[2] or '', up, down}
            if #rows >= limit then break end
        end
    end
end
local more = 0
if redis.call('ZCARD', key) > pos then more = 1 end
return {meta[1] or '0', meta[2] or '', meta[3] or '0', rows, last_id, last_score, more}
