-- wrk: the same runs/search request again and again (run it with -c1: sequential requests).
-- BENCH_LUA_DIR, BENCH_BODY (the JSON request), BENCH_TOKEN.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local path = "/api/2.0/mlflow/runs/search"
local req

function init(args)
  req = wrk.format("POST", path, bench.headers, os.getenv("BENCH_BODY"))
end

function request()
  return req
end
