-- Support search, first page only. BENCH_QUERIES_FILE holds one request per line:
-- "GET<TAB>?status=failed" (a filtered list: BENCH_PATH .. query) or
-- "POST<TAB>{json}" (a search with PHI in the body: POST to BENCH_PATH .. "/search").
-- Lines are drawn at random. MRNs are synthetic ("MRN<n>"), never PHI.
local bench = dofile((os.getenv("BENCH_LUA_DIR") or ".") .. "/common.lua")

local methods, args = {}, {}
local headers

function init(_)
  math.randomseed(os.time() + tid * 7919)
  for _, line in ipairs(bench.lines("BENCH_QUERIES_FILE")) do
    local method, arg = line:match("^(%u+)\t(.*)$")
    methods[#methods + 1] = method
    args[#args + 1] = arg
  end
  assert(#methods > 0, "BENCH_QUERIES_FILE has no requests")
  headers = bench.api_headers()
  headers["Content-Type"] = "application/json"
end

function request()
  local i = math.random(#methods)
  if methods[i] == "POST" then
    return wrk.format("POST", bench.path .. "/search", headers, args[i])
  end
  return wrk.format("GET", bench.path .. args[i], headers)
end
