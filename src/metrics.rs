//! Prometheus metrics (SPEC §5 `GET /metrics`): names and buckets in one place, recorded through
//! the `metrics` facade and rendered by `metrics-exporter-prometheus`.
//!
//! The recorder is process-global (the facade's design), installed once on first use; several
//! apps in one process (tests) share it.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// HTTP requests by method, route pattern and status.
pub const HTTP_REQUESTS: &str = "http_requests_total";
/// HTTP request latency by route pattern.
pub const HTTP_DURATION: &str = "http_request_duration_seconds";
/// Buys committed.
pub const BUYS_RECORDED: &str = "buy_tracker_buys_recorded_total";
/// Time of one group commit.
pub const COMMIT_DURATION: &str = "buy_tracker_commit_duration_seconds";
/// Buys per group commit.
pub const COMMIT_BATCH: &str = "buy_tracker_commit_batch_size";
/// Writes waiting for the writer.
pub const QUEUE_DEPTH: &str = "buy_tracker_write_queue_depth";
/// Commits that failed (nothing of them acknowledged).
pub const COMMIT_FAILURES: &str = "buy_tracker_commit_failures_total";

const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
const BATCH_BUCKETS: &[f64] =
    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0];

/// The process's recorder, installed on first call.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.into()), LATENCY_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(COMMIT_DURATION.into()), LATENCY_BUCKETS))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(COMMIT_BATCH.into()), BATCH_BUCKETS))
            .expect("bucket lists are non-empty constants");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (embedding); ours still renders what it sees.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

fn describe() {
    metrics::describe_counter!(HTTP_REQUESTS, "HTTP requests by method, route pattern and status");
    metrics::describe_histogram!(HTTP_DURATION, metrics::Unit::Seconds, "HTTP request latency by route pattern");
    metrics::describe_counter!(BUYS_RECORDED, "Buys committed to the store");
    metrics::describe_histogram!(COMMIT_DURATION, metrics::Unit::Seconds, "Duration of one group commit");
    metrics::describe_histogram!(COMMIT_BATCH, "Buys per group commit");
    metrics::describe_gauge!(QUEUE_DEPTH, "Writes waiting for the writer");
    metrics::describe_counter!(COMMIT_FAILURES, "Group commits that failed (nothing in them acknowledged)");
}

/// Record one finished commit.
pub fn commit(elapsed: Duration, buys: usize, ok: bool) {
    metrics::histogram!(COMMIT_DURATION).record(elapsed.as_secs_f64());
    metrics::histogram!(COMMIT_BATCH).record(buys as f64);
    if ok {
        metrics::counter!(BUYS_RECORDED).increment(buys as u64);
    } else {
        metrics::counter!(COMMIT_FAILURES).increment(1);
    }
}

/// Record the writer's queue depth.
pub fn queue_depth(depth: usize) {
    metrics::gauge!(QUEUE_DEPTH).set(depth as f64);
}

/// Record one answered HTTP request.
pub fn request(method: &str, route: &str, status: u16, elapsed: Duration) {
    let (method, route) = (method.to_string(), route.to_string());
    metrics::counter!(HTTP_REQUESTS, "method" => method, "route" => route.clone(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!(HTTP_DURATION, "route" => route).record(elapsed.as_secs_f64());
}

/// The text exposition.
pub fn render() -> String {
    let handle = handle();
    handle.run_upkeep();
    handle.render()
}
