-- GCRA for a batch of vote requests, in order (an agent twice in a batch is charged twice).
-- KEYS: one per request, the agent's key (all under one hash tag). ARGV[1]: the JSON of
-- commands.ratelimit.GcraArgs. The reply is the JSON of a list of GcraDecision, one per key.
-- With `peek`, nothing is charged or written: each decision is the key's state, `remaining`
-- being how many requests would be allowed now (commands.ratelimit.gcra_peek).
-- Times are whole milliseconds of Redis's clock, as Redis would make integers of them.
local a = cjson.decode(ARGV[1])
local interval, tolerance = a.interval_ms, a.tolerance_ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for _, key in ipairs(KEYS) do
    local tat = tonumber(redis.call('GET', key)) or now
    if tat < now then tat = now end
    local new_tat = tat + interval
    local allow_at = new_tat - tolerance
    if a.peek then
        local remaining = math.max(0, math.floor((now + tolerance - tat) / interval + 1e-9))
        out[#out + 1] = {allowed = remaining > 0, remaining = remaining,
                         retry_ms = remaining > 0 and 0 or math.floor(allow_at - now),
                         reset_ms = math.floor(tat - now)}
    elseif allow_at > now then
        out[#out + 1] = {allowed = false, remaining = 0, retry_ms = math.floor(allow_at - now),
                         reset_ms = math.floor(tat - now)}
    else
        redis.call('SET', key, new_tat, 'PX', math.max(1, math.floor(new_tat - now)))
        out[#out + 1] = {allowed = true, remaining = math.floor((now - allow_at) / interval),
                         retry_ms = 0, reset_ms = math.floor(new_tat - now)}
    end
end
return cjson.encode(out)
