-- wrk script for `python bench/load.py`: POST the JSON body in $BODY_FILE and count every
-- answer by status, so a scenario whose right answer is 403 (deny) or 202 (hold) is judged
-- by its own expectation rather than wrk's ">399 is an error".
--   $AUTH_TOKEN  -> Authorization: Bearer ...        $RUN_ID -> X-Agent-Run-Id
--   $KEY_MODE    fresh: a new Idempotency-Key per request (every call claims and stores
--                its key); fixed: $KEY on every request (replays); none: no key
-- done() prints one machine-readable RESULT line (latencies in ms, statuses as code:n).
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"

local tok = os.getenv("AUTH_TOKEN")
if tok and #tok > 0 then
  wrk.headers["Authorization"] = "Bearer " .. tok
end
local run = os.getenv("RUN_ID")
if run and #run > 0 then
  wrk.headers["X-Agent-Run-Id"] = run
end

local mode = os.getenv("KEY_MODE") or "none"
if mode == "fixed" then
  wrk.headers["Idempotency-Key"] = os.getenv("KEY")
elseif mode == "fresh" then
  local n = 0
  local prefix = "load-" .. os.getenv("KEY") .. "-" .. tostring(math.random(1, 1e9)) .. "-"
  request = function()
    n = n + 1
    wrk.headers["Idempotency-Key"] = prefix .. n
    return wrk.format()
  end
end

-- Per-thread counters (each wrk thread has its own Lua state); done() gathers them.
statuses = {}
replayed = 0
local threads = {}
setup = function(thread)
  table.insert(threads, thread)
end

-- Parsing every answer costs wrk some CPU (about 8% of its rate against bare nginx); every
-- target pays it alike, and it is what lets each scenario be judged by its own statuses.
response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if headers["Idempotent-Replayed"] == "true" then
    replayed = replayed + 1
  end
end

done = function(summary, latency, requests)
  local counts, n_replayed = {}, 0
  for _, thread in ipairs(threads) do
    for code, n in pairs(thread:get("statuses")) do
      counts[code] = (counts[code] or 0) + n
    end
    n_replayed = n_replayed + thread:get("replayed")
  end
  local parts = {}
  for code, n in pairs(counts) do
    table.insert(parts, code .. ":" .. n)
  end
  local e = summary.errors
  io.write(string.format(
    "RESULT rps=%.1f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f requests=%d "
      .. "status_errors=%d sockerr=%d replayed=%d statuses=%s\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000,
    summary.requests, e.status, e.connect + e.read + e.write + e.timeout,
    n_replayed, table.concat(parts, ",")))
end
