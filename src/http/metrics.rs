//! `GET /metrics`: Prometheus text format (`docs/reference.md` §5).

use axum::http::header;
use axum::response::IntoResponse;

/// Prometheus text exposition of the service's metrics.
#[utoipa::path(get, path = "/metrics", tag = "health", responses(
    (status = 200, description = "Prometheus text format: http_requests_total{method,route,status}, http_request_duration_seconds{route}, buy_tracker_buys_recorded_total, buy_tracker_commit_duration_seconds, buy_tracker_commit_batch_size, buy_tracker_write_queue_depth, buy_tracker_commit_failures_total, buy_tracker_writes_abandoned_total, buy_tracker_views_recorded_total, buy_tracker_refunds_recorded_total, buy_tracker_views_behind_facts{kind}", content_type = "text/plain"),
))]
pub async fn metrics() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], crate::metrics::render())
}
