-- wrk -t2 -c64 -d10s -s bench/wrk/health.lua http://127.0.0.1:8080
-- GET /health over keep-alive connections: the server's request path with no
-- engine work (the figure for "/health answers at once"). Prints a summary.
wrk.method = "GET"
wrk.path = "/health"
wrk.headers["Accept"] = "application/json"

local non200 = 0

response = function(status, headers, body)
  if status ~= 200 then
    non200 = non200 + 1
  end
end

done = function(summary, latency, requests)
  io.write(string.format("requests %d, errors %d, p50 %.0f us, p99 %.0f us, max %.0f us\n",
    summary.requests, summary.errors.status + summary.errors.connect + summary.errors.read +
    summary.errors.write + summary.errors.timeout, latency:percentile(50),
    latency:percentile(99), latency.max))
end
