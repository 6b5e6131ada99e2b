-- Vote load: POST /api/v1/vote as a random agent (its own Authorization header) on a random
-- item, in a random direction. BENCH_KEYS and BENCH_ITEMS are files with one API key / item id
-- a line.
dofile(os.getenv("BENCH_DIR") .. "/common.lua")

local keys, items = {}, {}
for line in io.lines(os.getenv("BENCH_KEYS")) do keys[#keys + 1] = "Bearer " .. line end
for line in io.lines(os.getenv("BENCH_ITEMS")) do items[#items + 1] = line end
local directions = { "up", "down", "none" }

function init(args)
   math.randomseed(os.time() * 1000 + (id or 0))
end

function request()
   local headers = {
      ["Authorization"] = keys[math.random(#keys)],
      ["Content-Type"] = "application/json",
   }
   local body = string.format('{"item_id":"%s","vote":"%s"}',
      items[math.random(#items)], directions[math.random(3)])
   return wrk.format("POST", "/api/v1/vote", headers, body)
end
