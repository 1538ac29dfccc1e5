-- wrk script: as post.lua, but every request asks for "Connection: close", so that each
-- request arrives on a new TCP connection (clients without keep-alive). Prints "WRKJSON {…}".
local tokens = {}
local n = 0
local types = {"Blog Post Outline", "Product Description", "Social Media Caption"}

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then tokens[#tokens + 1] = line end
  end
  n = math.random(#tokens)
end

function request()
  n = n + 1
  local token = tokens[(n % #tokens) + 1]
  local body = string.format(
    '{"prompt":"Benchmark prompt %d: how to bake sourdough bread","contentType":"%s"}',
    n, types[(n % 3) + 1])
  return wrk.format("POST", "/generate-content", {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
    ["Connection"] = "close",
  }, body)
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
