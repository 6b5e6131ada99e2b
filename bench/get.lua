-- GET load. With BENCH_ITEMS (a file of item ids, one a line) every request asks for a random
-- one: BENCH_PATH is then a format string such as /api/v1/items/%s. Otherwise the URL given on
-- the command line is requested over and over.
dofile(os.getenv("BENCH_DIR") .. "/common.lua")

local items_file = os.getenv("BENCH_ITEMS")
if items_file then
   local items, template = {}, os.getenv("BENCH_PATH")
   for line in io.lines(items_file) do items[#items + 1] = line end

   function init(args)
      math.randomseed(os.time() * 1000 + (id or 0))
   end

   function request()
      return wrk.format("GET", string.format(template, items[math.random(#items)]))
   end
end
