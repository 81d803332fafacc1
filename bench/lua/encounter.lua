-- POST BENCH_PATH (/v1/telephone-encounters) with ids the clinic's EMR lists hold (the
-- pre-flight check finds them all: a hit, the common case). Synthetic MRNs, never PHI.
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
    '{"patient_mrn":"BENCH-%s-%d-%d","provider_id":"PRV-1001","location_id":"LOC-3001",' ..
    '"assigned_to_id":"STF-2001","pharmacy_ehr_id":"PHR-4001","reason":"Refill request"}',
    bench.nonce, tid, counter)
  return wrk.format("POST", bench.path, headers, body)
end
