-- Shared by the wrk scripts (loaded with dofile): headers, thread numbering and a done() that
-- prints one machine-readable line for bench.py. Configuration comes from the environment
-- (BENCH_*), which is more robust than wrk's script arguments.

bench = {}
bench.headers = { ["Content-Type"] = "application/json" }
local token = os.getenv("BENCH_TOKEN") or ""
if token ~= "" then
  bench.headers["Authorization"] = "Bearer " .. token
end
bench.phase = tonumber(os.getenv("BENCH_PHASE") or "0")

function bench.read_lines(path)
  local out = {}
  local f = assert(io.open(path, "r"))
  for line in f:lines() do
    if line ~= "" then out[#out + 1] = line end
  end
  f:close()
  return out
end

-- setup() runs in the main Lua state once per thread, before that thread's init(): number them.
local next_tid = 0
function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"err_connect":%d,"err_read":%d,' ..
    '"err_write":%d,"err_status":%d,"err_timeout":%d,"lat_p50_us":%d,"lat_p90_us":%d,' ..
    '"lat_p99_us":%d,"lat_max_us":%d,"lat_mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
