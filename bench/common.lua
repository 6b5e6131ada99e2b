-- Shared by the wrk scripts (loaded with dofile): count response statuses in every thread and
-- print one machine-readable line when the run is done. wrk loads a script once per thread and
-- once more for setup()/done(), so `threads` is only filled in that last one.
local threads = {}

function setup(thread)
   thread:set("id", #threads + 1)
   table.insert(threads, thread)
end

statuses = {}

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
   local counts, parts = {}, {}
   for _, t in ipairs(threads) do
      for status, n in pairs(t:get("statuses") or {}) do
         counts[status] = (counts[status] or 0) + n
      end
   end
   for status, n in pairs(counts) do
      table.insert(parts, string.format('"%d":%d', status, n))
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
      '"max_us":%d,"mean_us":%.1f,"errors":{"connect":%d,"read":%d,"write":%d,' ..
      '"status":%d,"timeout":%d},"statuses":{%s}}\n',
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.max, latency.mean, e.connect, e.read, e.write,
      e.status, e.timeout, table.concat(parts, ",")))
end
