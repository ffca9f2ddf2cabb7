-- wrk: POST runs/log-metric, every request a different body (run, key, value, timestamp, step).
-- BENCH_LUA_DIR, BENCH_RUNS_FILE (one run id a line), BENCH_TOKEN, BENCH_PHASE.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local path = "/api/2.0/mlflow/runs/log-metric"
local keys = { "loss", "accuracy", "lr", "grad_norm", "val_loss", "val_accuracy", "throughput",
               "epoch_time" }
local runs, counter, t0, step0

function init(args)
  runs = bench.read_lines(os.getenv("BENCH_RUNS_FILE"))
  counter = 0
  math.randomseed(1000 * bench.phase + 17 * tid + 1)
  -- Timestamps and steps of each (thread, phase) live in their own range: no two requests of a
  -- whole benchmark carry the same point.
  t0 = 1700000000000 + bench.phase * 100000000000 + tid * 10000000000
  step0 = bench.phase * 100000000 + tid * 10000000
end

function request()
  counter = counter + 1
  local n = counter
  local body = string.format(
    '{"run_id":"%s","key":"%s","value":%.17g,"timestamp":%d,"step":%d}',
    runs[(2 * n + tid) % #runs + 1], keys[n % #keys + 1], math.random(), t0 + n, step0 + n)
  return wrk.format("POST", path, bench.headers, body)
end
