-- wrk: POST runs/log-batch with BENCH_BATCH_KEYS distinct keys x BENCH_BATCH_STEPS steps per
-- request (default 10 x 100 = 1000 metrics; 1000 x 1 is a wide batch: per-class accuracies,
-- per-layer norms, autologging). The metric lists are generated in init(), so Lua does no
-- formatting per request: a pool of BENCH_POOL lists per thread, each with its own values, timestamps and steps, is sent to the
-- runs of BENCH_RUNS_FILE in turn. Request n sends list n % pool to run floor(n / pool) % runs, so
-- the first pool * runs requests of a thread are all different (bench.py checks the count).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local path = "/api/2.0/mlflow/runs/log-batch"
local pool_size = tonumber(os.getenv("BENCH_POOL") or "64")
local keys_per_request = tonumber(os.getenv("BENCH_BATCH_KEYS") or "10")
local steps_per_key = tonumber(os.getenv("BENCH_BATCH_STEPS") or "100")
local per_request = keys_per_request * steps_per_key
local runs, pool, counter

function init(args)
  runs = bench.read_lines(os.getenv("BENCH_RUNS_FILE"))
  math.randomseed(1000 * bench.phase + 31 * tid + 7)
  local t0 = 1600000000000 + bench.phase * 100000000000 + tid * 10000000000
  local step0 = bench.phase * 100000000 + tid * 10000000
  local steps = steps_per_key
  pool = {}
  for p = 0, pool_size - 1 do
    local items = {}
    for s = 0, steps - 1 do
      local step = step0 + p * steps + s
      for k = 0, keys_per_request - 1 do
        items[#items + 1] = string.format(
          '{"key":"batch_m%d","value":%.17g,"timestamp":%d,"step":%d}',
          k, math.random(), t0 + step, step)
      end
    end
    pool[p + 1] = '","metrics":[' .. table.concat(items, ",") .. ']}'
  end
  counter = 0
end

function request()
  local n = counter
  counter = counter + 1
  local list = pool[n % pool_size + 1]
  local run = runs[(math.floor(n / pool_size) + tid) % #runs + 1]
  return wrk.format("POST", path, bench.headers, '{"run_id":"' .. run .. list)
end
