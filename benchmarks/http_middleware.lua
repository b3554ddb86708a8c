-- wrk script for benchmarks/http_middleware.py: one kind of request, chosen by environment variables.
--   BENCH_MODE=first   POST /payments with a new Idempotency-Key on every request
--   BENCH_MODE=replay  POST /payments cycling over BENCH_REPLAY_KEYS keys created beforehand
--   BENCH_MODE=nokey   POST /payments without a key
--   BENCH_MODE=get     GET /payments (a method the middleware does not cover)
-- BENCH_RUN makes keys unique to one benchmark run. done() prints one JSON line.

local mode = os.getenv("BENCH_MODE") or "first"
local run = os.getenv("BENCH_RUN") or tostring(os.time())
local pool = tonumber(os.getenv("BENCH_REPLAY_KEYS") or "100")
local body = '{"customer":"cus_42","amount":1250,"currency":"EUR"}'
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_id", #threads)
end

local counter = 0

request = function()
  counter = counter + 1
  if mode == "get" then
    return wrk.format("GET", "/payments")
  end
  -- A credential on every POST: keyed requests need a caller to be scoped to (B8).
  local headers = { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer bench" }
  if mode == "first" then
    headers["Idempotency-Key"] = run .. "-" .. thread_id .. "-" .. counter
  elseif mode == "replay" then
    headers["Idempotency-Key"] = run .. "-replay-" .. (counter % pool)
  end
  return wrk.format("POST", "/payments", headers, body)
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"status_errors":%d,"socket_errors":%d,' ..
    '"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, errors.status,
    errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
