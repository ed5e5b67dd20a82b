//! `GET /health` (the store answers) and `GET /health/live` (the process runs), `docs/reference.md` §2.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::state::AppState;
use crate::clock::format_time;

/// Health of the service and its store.
#[derive(Serialize, ToSchema)]
pub struct HealthResponse {
    /// `healthy`, or `degraded` when the store does not answer.
    status: &'static str,
    /// Server time, RFC 3339 UTC with microseconds.
    timestamp: String,
    /// Seconds since the service started.
    uptime_seconds: f64,
    /// Why the service is degraded (only when it is).
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

/// Readiness: 200 when the store answers, 503 `degraded` when not (for load balancers).
#[utoipa::path(get, path = "/health", tag = "health", responses(
    (status = 200, description = "The store answers", body = HealthResponse),
    (status = 503, description = "The store does not answer, or the writer has stopped so every write would be refused (status `degraded`, with a fixed-sentence `detail`)", body = HealthResponse),
))]
pub async fn health(State(state): State<AppState>) -> Response {
    // A dead writer refuses every write while reads still work: as unhealthy as a dead store.
    let problem = if !state.writer.is_running() {
        Some("the writer has stopped: writes are refused".to_string())
    } else {
        match state.read_store(|store| store.ping()).await {
            Ok(()) => None,
            // A fixed sentence: the cause may hold driver text.
            Err(e) => {
                tracing::warn!(cause = %crate::telemetry::error_chain(&e), "health check: the store does not answer");
                Some(e.unavailable_sentence().to_string())
            }
        }
    };
    let (code, status, detail) = match problem {
        None => (StatusCode::OK, "healthy", None),
        Some(detail) => (StatusCode::SERVICE_UNAVAILABLE, "degraded", Some(detail)),
    };
    let body = HealthResponse {
        status,
        timestamp: format_time(state.clock.now()),
        uptime_seconds: state.uptime_seconds(),
        detail,
    };
    (code, Json(body)).into_response()
}

/// Liveness: 200 whenever the process runs, whatever the store does (so an orchestrator does
/// not restart replicas because a shared store is down).
#[utoipa::path(get, path = "/health/live", tag = "health", responses(
    (status = 200, description = "The process runs", body = HealthResponse),
))]
pub async fn live(State(state): State<AppState>) -> Json<HealthResponse> {
    Json(HealthResponse {
        status: "healthy",
        timestamp: format_time(state.clock.now()),
        uptime_seconds: state.uptime_seconds(),
        detail: None,
    })
}
