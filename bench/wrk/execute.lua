-- wrk -t2 -c16 -d10s -s bench/wrk/execute.lua http://127.0.0.1:8080
-- POST /execute with a short generation (max_tokens 4, greedy), each request a
-- fresh job_id; wrk reads each SSE stream to its end (chunked, keep-alive),
-- so the latency is the whole stream's. Override with env: MAX_TOKENS, PROMPT.
local counter = 0
local max_tokens = tonumber(os.getenv("MAX_TOKENS") or "4")
local prompt = os.getenv("PROMPT") or "Once upon a time"

setup = function(thread)
  counter = counter + 1
  thread:set("tid", counter)
end

init = function(args)
  seq = 0
end

request = function()
  seq = seq + 1
  local body = string.format(
    '{"job_id":"wrk-%d-%d","prompt":"%s","max_tokens":%d,"temperature":0}',
    tid, seq, prompt, max_tokens)
  return wrk.format("POST", "/execute",
    {["Content-Type"] = "application/json", ["Accept"] = "text/event-stream"}, body)
end

response = function(status, headers, body)
  if status ~= 200 or not string.find(body, "event: end", 1, true) then
    errors_seen = (errors_seen or 0) + 1
  end
end

done = function(summary, latency, requests)
  io.write(string.format("streams %d, p50 %.1f ms, p99 %.1f ms\n", summary.requests,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
