//! Prometheus metrics (`docs/reference.md` §5 `GET /metrics`): names and buckets in one place, recorded through
//! the `metrics` facade and rendered by `metrics-exporter-prometheus`.
//!
//! The recorder is process-global (the facade's design), installed once on first use; several
//! apps in one process (tests) share it.

use std::cell::RefCell;
use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use axum::http::Method;
use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// HTTP requests by method, route pattern and status.
pub const HTTP_REQUESTS: &str = "http_requests_total";
/// HTTP request latency by route pattern.
pub const HTTP_DURATION: &str = "http_request_duration_seconds";
/// Buys committed.
pub const BUYS_RECORDED: &str = "buy_tracker_buys_recorded_total";
/// Views recorded (`docs/reference.md` §9).
pub const VIEWS_RECORDED: &str = "buy_tracker_views_recorded_total";
/// Refunds committed (replays not counted).
pub const REFUNDS_RECORDED: &str = "buy_tracker_refunds_recorded_total";
/// Time of one group commit.
pub const COMMIT_DURATION: &str = "buy_tracker_commit_duration_seconds";
/// Buys per group commit.
pub const COMMIT_BATCH: &str = "buy_tracker_commit_batch_size";
/// Writes waiting for the writer.
pub const QUEUE_DEPTH: &str = "buy_tracker_write_queue_depth";
/// Commits that failed (nothing of them acknowledged).
pub const COMMIT_FAILURES: &str = "buy_tracker_commit_failures_total";
/// Writes discarded uncommitted because their requester had given up.
pub const WRITES_ABANDONED: &str = "buy_tracker_writes_abandoned_total";
/// Facts committed that the views have not applied yet, by kind.
pub const VIEWS_BEHIND: &str = "buy_tracker_views_behind_facts";

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
        start_upkeep(handle.clone());
        handle
    })
}

/// How often recorded histogram samples are folded into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The exporter keeps histogram samples until upkeep folds them into the buckets; with
/// `build_recorder` nothing runs it but a scrape of `/metrics` (the crate's documentation asks
/// for a periodic `run_upkeep`), so a server nobody scrapes could hold samples without bound.
fn start_upkeep(handle: PrometheusHandle) {
    let started = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
        loop {
            std::thread::sleep(UPKEEP_EVERY);
            handle.run_upkeep();
        }
    });
    if let Err(e) = started {
        tracing::warn!(error = %e, "cannot start the metrics upkeep thread; memory grows until /metrics is scraped");
    }
}

fn describe() {
    metrics::describe_counter!(HTTP_REQUESTS, "HTTP requests by method, route pattern and status");
    metrics::describe_histogram!(HTTP_DURATION, metrics::Unit::Seconds, "HTTP request latency by route pattern");
    metrics::describe_counter!(BUYS_RECORDED, "Buys committed to the store");
    metrics::describe_counter!(VIEWS_RECORDED, "Page views committed to the store");
    metrics::describe_counter!(REFUNDS_RECORDED, "Refunds committed to the store");
    metrics::describe_histogram!(COMMIT_DURATION, metrics::Unit::Seconds, "Duration of one group commit");
    metrics::describe_histogram!(COMMIT_BATCH, "Buys per group commit");
    metrics::describe_gauge!(QUEUE_DEPTH, "Writes waiting for the writer");
    metrics::describe_counter!(COMMIT_FAILURES, "Group commits that failed (nothing in them acknowledged)");
    metrics::describe_counter!(WRITES_ABANDONED, "Writes discarded uncommitted because their requester had given up");
    metrics::describe_gauge!(
        VIEWS_BEHIND,
        "Facts committed to the log that the views have not applied yet, by kind (reads add them from the log; past 20,000 a read waits for the views)"
    );
}

/// How far the views are behind the log, as the view stage last saw it: `(buys, views, refunds)`
/// committed but not yet applied. Three series, one per kind.
pub fn views_behind((buys, views, refunds): (i64, i64, i64)) {
    static GAUGES: LazyLock<[Gauge; 3]> = LazyLock::new(|| {
        handle();
        ["buys", "views", "refunds"].map(|kind| metrics::gauge!(VIEWS_BEHIND, "kind" => kind))
    });
    for (gauge, behind) in GAUGES.iter().zip([buys, views, refunds]) {
        gauge.set(behind.max(0) as f64);
    }
}

/// The writer's metrics, registered once: each commit then updates them without a registry lookup.
struct WriterMetrics {
    commit_duration: Histogram,
    commit_batch: Histogram,
    buys_recorded: Counter,
    views_recorded: Counter,
    commit_failures: Counter,
    writes_abandoned: Counter,
    queue_depth: Gauge,
}

fn writer_metrics() -> &'static WriterMetrics {
    static METRICS: LazyLock<WriterMetrics> = LazyLock::new(|| {
        handle();
        WriterMetrics {
            commit_duration: metrics::histogram!(COMMIT_DURATION),
            commit_batch: metrics::histogram!(COMMIT_BATCH),
            buys_recorded: metrics::counter!(BUYS_RECORDED),
            views_recorded: metrics::counter!(VIEWS_RECORDED),
            commit_failures: metrics::counter!(COMMIT_FAILURES),
            writes_abandoned: metrics::counter!(WRITES_ABANDONED),
            queue_depth: metrics::gauge!(QUEUE_DEPTH),
        }
    });
    &METRICS
}

/// Record one finished commit of `buys` buys and `views` views.
pub fn commit(elapsed: Duration, (buys, views): (usize, usize), ok: bool) {
    let m = writer_metrics();
    m.commit_duration.record(elapsed.as_secs_f64());
    m.commit_batch.record((buys + views) as f64);
    if ok {
        m.buys_recorded.increment(buys as u64);
        m.views_recorded.increment(views as u64);
    } else {
        m.commit_failures.increment(1);
    }
}

/// Count one committed refund.
pub fn refund_recorded() {
    metrics::counter!(REFUNDS_RECORDED).increment(1);
}

/// Count a write discarded because its requester had given up.
pub fn write_abandoned() {
    writer_metrics().writes_abandoned.increment(1);
}

/// Record the writer's queue depth.
pub fn queue_depth(depth: usize) {
    writer_metrics().queue_depth.set(depth as f64);
}

/// The `method` label of a request: one of a fixed set, so that clients inventing methods
/// (`curl -X XM123`) cannot create series without bound. Methods are case-sensitive (RFC 9110),
/// so `get` is `other` too.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The handles of one (method, route, status), registered on first use.
struct RequestMetrics {
    method: &'static str,
    route: Box<str>,
    status: u16,
    requests: Counter,
    duration: Histogram,
}

/// Distinct (method, route, status) handles each worker thread keeps. Methods, routes and
/// statuses are few, so this holds them all; past it, lookups take the registry's slower path.
const REQUEST_CACHE_SIZE: usize = 64;

thread_local! {
    /// Per thread, so lookups share no lock or cache line between workers; a linear scan over a
    /// few entries costs less than building the label key and hashing it into the registry
    /// (which allocated the label strings on every request).
    static REQUEST_CACHE: RefCell<Vec<RequestMetrics>> = const { RefCell::new(Vec::new()) };
}

/// Record one answered HTTP request.
pub fn request(method: &Method, route: &str, status: u16, elapsed: Duration) {
    let seconds = elapsed.as_secs_f64();
    let method = method_label(method);
    REQUEST_CACHE.with_borrow_mut(|cache| {
        if let Some(m) = cache.iter().find(|m| m.status == status && m.method == method && *m.route == *route) {
            m.requests.increment(1);
            m.duration.record(seconds);
            return;
        }
        handle();
        let (requests, duration) = register_request(method, route, status);
        requests.increment(1);
        duration.record(seconds);
        if cache.len() < REQUEST_CACHE_SIZE {
            cache.push(RequestMetrics { method, route: route.into(), status, requests, duration });
        }
    });
}

fn register_request(method: &'static str, route: &str, status: u16) -> (Counter, Histogram) {
    let route = route.to_string();
    let requests =
        metrics::counter!(HTTP_REQUESTS, "method" => method, "route" => route.clone(), "status" => status.to_string());
    (requests, metrics::histogram!(HTTP_DURATION, "route" => route))
}

/// The text exposition.
pub fn render() -> String {
    let handle = handle();
    handle.run_upkeep();
    handle.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_the_fixed_set_are_other() {
        for (method, label) in [("GET", "GET"), ("OPTIONS", "OPTIONS"), ("get", "other"), ("XM123", "other")] {
            assert_eq!(method_label(&Method::from_bytes(method.as_bytes()).unwrap()), label, "{method}");
        }
    }
}
