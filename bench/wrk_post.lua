-- wrk script: POST pre-signed webhook bodies, one per request, in file order (wrapping at the end).
-- wrk's Lua has no HMAC-SHA1, so webhook_ack.py signs every body beforehand and writes
-- "id<TAB>signature<TAB>body" lines to the file named by BENCH_BODIES. Each body carries its own data.id,
-- so the bot sees new events, not duplicates, until the file wraps (the counters below tell).
-- Prints one JSON line at the end: requests, seconds, latency percentiles (us) and answer counts.

local path = os.getenv("BENCH_BODIES")
local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  thread:set("nthreads", tonumber(os.getenv("BENCH_THREADS") or "1"))
  table.insert(threads, thread)
end

function init(args)
  -- Pre-format every request so the Lua side costs a table lookup per request.
  requests, n, i = {}, 0, 0
  queued, duplicate, other, non200 = 0, 0, 0, 0
  local lineno = 0
  for line in io.lines(path) do
    if lineno % nthreads == tid then
      local a = line:find("\t", 1, true)
      local b = line:find("\t", a + 1, true)
      n = n + 1
      requests[n] = wrk.format("POST", "/webhooks/webex", {
        ["Content-Type"] = "application/json",
        ["X-Spark-Signature"] = line:sub(a + 1, b - 1),
      }, line:sub(b + 1))
    end
    lineno = lineno + 1
  end
end

function request()
  i = i % n + 1
  return requests[i]
end

function response(status, headers, body)
  if status ~= 200 then
    non200 = non200 + 1
  elseif body:find('"queued"', 1, true) then
    queued = queued + 1
  elseif body:find('"duplicate"', 1, true) then
    duplicate = duplicate + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local counts = { queued = 0, duplicate = 0, other = 0, non200 = 0 }
  for _, thread in ipairs(threads) do
    for key, _ in pairs(counts) do
      counts[key] = counts[key] + (thread:get(key) or 0)
    end
  end
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "seconds": %.6f, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, '
      .. '"mean_us": %.1f, "queued": %d, "duplicate": %d, "other": %d, "non200": %d, '
      .. '"socket_errors": %d, "timeouts": %d}\n',
    summary.requests, summary.duration / 1e6,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    counts.queued, counts.duplicate, counts.other, counts.non200,
    e.connect + e.read + e.write, e.timeout))
end
