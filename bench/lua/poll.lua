-- GET BENCH_PATH..<id> with ids drawn at random from BENCH_IDS_FILE (one per line, or
-- "id<TAB>etag"). With BENCH_CONDITIONAL=1 it sends If-None-Match with the id's ETag (304).
local bench = dofile((os.getenv("BENCH_LUA_DIR") or ".") .. "/common.lua")

local ids, etags = {}, {}
local conditional = os.getenv("BENCH_CONDITIONAL") == "1"
local headers

function init(args)
  math.randomseed(os.time() + tid * 7919)
  for _, line in ipairs(bench.lines("BENCH_IDS_FILE")) do
    local id, etag = line:match("^([^\t]+)\t?(.*)$")
    ids[#ids + 1] = id
    etags[#etags + 1] = etag
  end
  assert(#ids > 0, "BENCH_IDS_FILE has no ids")
  headers = bench.api_headers()
end

function request()
  local i = math.random(#ids)
  if conditional then headers["If-None-Match"] = etags[i] end
  return wrk.format("GET", bench.path .. ids[i], headers)
end
