-- POST BENCH_PATH with Cobalt-style signed webhooks. Bodies and their signatures
-- (HMAC-SHA256 hex of the exact bytes) come from BENCH_BODIES_FILE ("signature<TAB>body");
-- every request gets its own `webhook-id` (nonce, thread, counter; the bench gives each wrk
-- run its own nonce), so none is a repeat, within a run or across runs.
local bench = dofile((os.getenv("BENCH_LUA_DIR") or ".") .. "/common.lua")

local bodies, signatures = {}, {}
local counter = 0
local headers = {
  ["Content-Type"] = "application/json",
  ["User-Agent"] = "bench-cobalt-webhooks",
  ["webhook-attempt"] = "1",
}

function init(args)
  math.randomseed(os.time() + tid * 104729)
  for _, line in ipairs(bench.lines("BENCH_BODIES_FILE")) do
    local signature, body = line:match("^([0-9a-f]+)\t(.*)$")
    signatures[#signatures + 1] = signature
    bodies[#bodies + 1] = body
  end
  assert(#bodies > 0, "BENCH_BODIES_FILE has no bodies")
  headers["webhook-timestamp"] = os.date("!%Y-%m-%dT%H:%M:%SZ")
end

function request()
  counter = counter + 1
  local i = math.random(#bodies)
  headers["cobalt-verification"] = signatures[i]
  headers["webhook-id"] = string.format("msg_%s_%d_%d", bench.nonce, tid, counter)
  return wrk.format("POST", bench.path, headers, bodies[i])
end
