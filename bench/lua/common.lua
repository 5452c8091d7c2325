-- Shared by every script: a done() that prints one JSON line of figures.
local threads = {}

function percentiles(latency)
  return latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000
end

function report(summary, latency, requests)
  local p50, p95, p99 = percentiles(latency)
  local e = summary.errors
  local errors = e.connect + e.read + e.write + e.status + e.timeout
  -- How far into the data file the threads got: the next slice of a row starts there.
  local cursor = 0
  for _, thread in ipairs(threads) do
    local at = thread:get("cursor")
    if at ~= nil and at > cursor then cursor = at end
  end
  io.write(string.format(
    'JSON {"requests": %d, "rps": %.1f, "p50_ms": %.3f, "p95_ms": %.3f, "p99_ms": %.3f, "errors": %d, "status_errors": %d, "timeouts": %d, "cursor": %d}\n',
    summary.requests, summary.requests / (summary.duration / 1e6), p50, p95, p99, errors, e.status, e.timeout, cursor))
end

function lines(path)
  local out = {}
  if path == nil or path == "" then return out end
  for line in io.lines(path) do
    if #line > 0 then out[#out + 1] = line end
  end
  return out
end

function basic(id, secret)
  -- base64 of "id:secret"
  local b = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  local data = id .. ":" .. secret
  return ((data:gsub(".", function(x)
    local r, byte = "", x:byte()
    for i = 8, 1, -1 do r = r .. (byte % 2 ^ i - byte % 2 ^ (i - 1) > 0 and "1" or "0") end
    return r
  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
    if #x < 6 then return "" end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0) end
    return b:sub(c + 1, c + 1)
  end) .. ({"", "==", "="})[#data % 3 + 1])
end

function urlencode(s)
  return (s:gsub("[^%w%-_%.~]", function(c) return string.format("%%%02X", c:byte()) end))
end

-- Threads take every n-th item so no two requests present the same one-time credential.
function setup(thread)
  thread:set("index", #threads)
  table.insert(threads, thread)
end

function init(args)
  items = lines(os.getenv("BENCH_DATA"))
  step = #threads > 0 and #threads or 2
  cursor = tonumber(os.getenv("BENCH_OFFSET") or "0") + (index or 0) + 1
end

function next_item()
  local item = items[((cursor - 1) % #items) + 1]
  cursor = cursor + step
  return item
end

done = report
