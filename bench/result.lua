-- Shared by the wrk scripts of bench/: the POST /buy request they send, and `done`, which prints
-- one machine-readable RESULT line per run.

-- The n-th buy: a new user each time, 50 promotions, 500 products, 1 to 5 units.
function buy_request(n)
  local body = string.format(
    '{"user_id": %d, "promotion_id": %d, "product_id": %d, "product_quantity": %d}',
    n, n % 50, n % 500, 1 + n % 5)
  return wrk.format("POST", "/buy", {["Content-Type"] = "application/json"}, body)
end

-- Socket errors are split by kind (a timeout is a request wrk gave up on after 2 s, a connect
-- error a refused or reset connection) because they mean different things; errors is their sum,
-- non2xx counts HTTP statuses of 400 and above. Latencies are in ms, rps over the whole run.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT rps=%.0f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f errors=%d non2xx=%d"
      .. " requests=%d connect_errors=%d read_errors=%d write_errors=%d timeouts=%d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000,
    e.connect + e.read + e.write + e.timeout, e.status,
    summary.requests, e.connect, e.read, e.write, e.timeout))
end
