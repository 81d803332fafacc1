-- Shared by the bench's wrk scripts: data files, the optional bearer token, per-status
-- counts, and a one-line JSON summary (BENCH_RESULT {...}) that bench/load.py parses.
local bench = {}

bench.token = os.getenv("BENCH_AUTH_TOKEN") or ""
bench.path = os.getenv("BENCH_PATH") or "/"
bench.nonce = os.getenv("BENCH_NONCE") or tostring(os.time())

-- The non-empty lines of the file named by environment variable `name`.
function bench.lines(name)
  local out = {}
  local path = os.getenv(name)
  if path == nil or path == "" then return out end
  for line in io.lines(path) do
    if line ~= "" then out[#out + 1] = line end
  end
  return out
end

-- Headers for /v1/* requests: `Authorization: Bearer …` only when BENCH_AUTH_TOKEN is set.
function bench.api_headers()
  local headers = {}
  if bench.token ~= "" then headers["Authorization"] = "Bearer " .. bench.token end
  return headers
end

-- wrk callbacks. `tid` is set on each thread by setup(); `statuses` counts responses.
local threads = {}
tid = 0
statuses = {}

function setup(thread)
  threads[#threads + 1] = thread
  thread:set("tid", #threads)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses") or {}) do
      counts[status] = (counts[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(counts) do
    parts[#parts + 1] = string.format('"%d":%d', status, count)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p95":%d,"p99":%d,"max":%d,"mean":%.1f},' ..
    '"statuses":{%s}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(95),
    latency:percentile(99),
    latency.max, latency.mean, table.concat(parts, ",")))
end

return bench
