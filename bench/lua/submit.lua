-- POST BENCH_PATH (/v1/notes) with a small synthetic note, each for its own appointment.
-- Note text is fixed filler, never PHI.
local bench = dofile((os.getenv("BENCH_LUA_DIR") or ".") .. "/common.lua")

local counter = 0
local headers

function init(args)
  headers = bench.api_headers()
  headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"appointment_id":"appt-%s-%d-%d","note":"Synthetic bench note %d: vitals stable."}',
    bench.nonce, tid, counter, counter)
  return wrk.format("POST", bench.path, headers, body)
end
