-- Shared by the wrk scenario scripts in this folder (loaded with dofile).
--
-- wrk gives every thread its own Lua state; setup() and done() run in the main
-- one. Per-thread counters are copied back with thread:get() in done().

local lib = {}

-- The lines of a file, without blanks; stops wrk with a message if it is missing.
function lib.read_lines(path)
  local file, err = io.open(path or "", "r")
  if not file then
    io.stderr:write("bench: cannot read ", tostring(path), ": ", tostring(err), "\n")
    os.exit(2)
  end
  local lines = {}
  for line in file:lines() do
    line = line:gsub("%s+$", "")
    if line ~= "" then
      lines[#lines + 1] = line
    end
  end
  file:close()
  if #lines == 0 then
    io.stderr:write("bench: ", path, " is empty\n")
    os.exit(2)
  end
  return lines
end

-- Numbers the threads 0..n-1 (call from setup) and remembers them for done().
local threads = {}
function lib.setup(thread)
  thread:set("id", #threads)
  threads[#threads + 1] = thread
end

function lib.thread_count()
  return #threads
end

-- Per-thread status counts, kept in the thread's own state.
statuses = {}
function lib.count(status)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
end

-- One machine-readable line that bench/run.sh parses, plus the status breakdown
-- (only for scripts that call lib.count from response()).
function lib.report(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d " ..
    "non2xx=%d connect=%d read=%d write=%d timeout=%d\n",
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.status, e.connect, e.read, e.write, e.timeout))
  local total = {}
  for _, thread in ipairs(threads) do
    local counts = thread:get("statuses")
    if type(counts) == "table" then
      for status, n in pairs(counts) do
        total[status] = (total[status] or 0) + n
      end
    end
  end
  local parts = {}
  for status, n in pairs(total) do
    parts[#parts + 1] = status .. ":" .. n
  end
  table.sort(parts)
  if #parts > 0 then
    io.write("BENCH_STATUSES ", table.concat(parts, " "), "\n")
  end
  local extra = {}
  for _, thread in ipairs(threads) do
    local switched = thread:get("switched")
    if type(switched) == "number" then
      extra.switched = (extra.switched or 0) + switched
    end
    local exhausted = thread:get("exhausted")
    if exhausted then
      extra.exhausted = (extra.exhausted or 0) + 1
    end
  end
  if extra.switched then
    io.write(string.format("BENCH_SESSIONS switched=%d threads_out_of_sessions=%d\n",
      extra.switched, extra.exhausted or 0))
  end
end

return lib
