-- GET BENCH_PATH (the constant baseline): the cheapest request gunicorn + Flask can serve.
local bench = dofile((os.getenv("BENCH_LUA_DIR") or ".") .. "/common.lua")

local req

function init(args)
  req = wrk.format("GET", bench.path, {})
end

function request()
  return req
end
