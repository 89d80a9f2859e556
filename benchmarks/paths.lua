-- wrk script: request the paths listed in a file, in order, one per request.
-- Usage: wrk -t1 -c N -d S -s benchmarks/paths.lua http://host:port/ -- FILE
--        ["Name: value" ...]   (headers sent with every request)
-- With one wrk thread every request takes the next path. Prints one JSON line.
local paths = {}
local i = 0

init = function(args)
  for line in io.lines(args[1]) do
    paths[#paths + 1] = line
  end
  for n = 2, #args do
    local name, value = args[n]:match("^([^:]+):%s*(.*)$")
    wrk.headers[name] = value
  end
end

request = function()
  i = i + 1
  return wrk.format("GET", paths[(i - 1) % #paths + 1])
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "errors": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
