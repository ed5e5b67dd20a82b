-- Shared `done` for the wrk scripts of bench/: one machine-readable RESULT line per run.
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
