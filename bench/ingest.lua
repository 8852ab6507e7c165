-- wrk script for bench_ingest.py: POST /v1/metrics/ingest with fresh samples every request.
-- Each wrk thread has its own GPUs (GPU-<run>-<thread>-<g>); request c of a thread carries the
-- ticks [c*ticks, (c+1)*ticks) of all its GPUs, one second apart, so no sample is a duplicate
-- and every GPU's timestamps only grow (what real agents send).
-- args: <samples per body> <gpus> <api key> <run tag>

local threads = {}
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("tid", thread_count)
  table.insert(threads, thread)
end

local parts, ts_slots, ticks, counter, base
acked, errors, non200 = 0, 0, 0

function init(args)
  local n, gpus, key, tag = tonumber(args[1]), tonumber(args[2]), args[3], args[4]
  ticks = math.floor(n / gpus)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["X-API-Key"] = key
  base = 1577836800  -- 2020-01-01: threads differ by GPU, not by time
  counter = 0
  parts, ts_slots = {"["}, {}
  for t = 0, ticks - 1 do
    for g = 0, gpus - 1 do
      if #parts > 1 then table.insert(parts, ",") end
      table.insert(parts, '{"timestamp":"')
      table.insert(parts, "")  -- the timestamp goes here
      table.insert(ts_slots, {#parts, t})
      table.insert(parts, string.format(
        '","gpu_index":%d,"gpu_uuid":"GPU-%s-%d-%d","gpu_name":"NVIDIA H100 80GB HBM3",' ..
        '"power_draw_w":%.1f,"power_limit_w":700,"energy_delta_j":%.1f,' ..
        '"utilization_gpu_pct":%d,"utilization_memory_pct":%d,"temperature_c":%d,' ..
        '"memory_used_mb":%d,"memory_total_mb":81559,"job_id":"bench-job-%d",' ..
        '"team_id":"team-%d","model_tag":"model-%d","scheduler_source":"slurm"}',
        g, tag, tid, g, 250 + g * 10.5, 15000 + g, 40 + g, 30 + g, 50 + g, 40000 + g * 100,
        g, g % 3, g % 4))
    end
  end
  table.insert(parts, "]")
end

function request()
  local start = base + counter * ticks
  counter = counter + 1
  local stamps = {}
  for _, slot in ipairs(ts_slots) do
    local t = slot[2]
    local s = stamps[t]
    if s == nil then
      s = os.date("!%Y-%m-%dT%H:%M:%SZ", start + t)
      stamps[t] = s
    end
    parts[slot[1]] = s
  end
  return wrk.format(nil, "/v1/metrics/ingest", nil, table.concat(parts))
end

function response(status, headers, body)
  if status == 200 then
    local n = string.match(body, '"inserted":(%d+)')
    acked = acked + (tonumber(n) or 0)
  else
    non200 = non200 + 1
    if non200 == 1 then io.stderr:write(string.format("first error: %d %s\n", status, body)) end
  end
end

function done(summary, latency, requests)
  local total_acked, total_non200 = 0, 0
  for _, thread in ipairs(threads) do
    total_acked = total_acked + thread:get("acked")
    total_non200 = total_non200 + thread:get("non200")
  end
  io.write(string.format("GPUFLEET acked=%d non200=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d\n",
    total_acked, total_non200, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
