-- wrk script: GET /generate-content/:jobId, round-robin over "token jobId" lines in the
-- file named by the first argument. Prints one line "WRKJSON {…}" with the figures.
local pairs_ = {}
local n = 0

function init(args)
  for line in io.lines(args[1]) do
    local token, job = string.match(line, "(%S+)%s+(%S+)")
    if token then pairs_[#pairs_ + 1] = {token, job} end
  end
  n = math.random(#pairs_)
end

function request()
  n = n + 1
  local p = pairs_[(n % #pairs_) + 1]
  return wrk.format("GET", "/generate-content/" .. p[2], {["Authorization"] = "Bearer " .. p[1]})
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,' ..
    '"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
