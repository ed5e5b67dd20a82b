-- wrk script: POST /buy with a valid body, varying ids so rows differ.
local counter = 0
request = function()
  counter = counter + 1
  local body = string.format(
    '{"user_id": %d, "promotion_id": %d, "product_id": %d, "product_quantity": %d}',
    counter, counter % 50, counter % 500, 1 + counter % 5)
  return wrk.format("POST", "/buy", {["Content-Type"] = "application/json"}, body)
end

done = function(summary, latency, requests)
  io.write(string.format("RESULT rps=%.0f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f errors=%d non2xx=%d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end
