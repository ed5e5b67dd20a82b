//! `GET /` (what the API offers), and the JSON answers for unknown paths (404) and wrong
//! methods (405), `docs/reference.md` §2 and §6.

use axum::Json;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// Every endpoint with a one-line description, listed by `GET /` and in 404 answers.
pub const ENDPOINTS: &[(&str, &str)] = &[
    ("POST /buy", "Record one buy (durable before the answer)"),
    ("POST /buys", "Record 1 to 1000 buys atomically"),
    ("POST /view", "Record one page view (JSON or text/plain, for navigator.sendBeacon)"),
    ("POST /views", "Record 1 to 1000 page views atomically"),
    ("GET /stats", "Total buys and buys in the last timeframe_hours (0.1 to 168, default 1); optional promotion_id"),
    (
        "GET /promotions/{promotion_id}/customers",
        "One promotion's buyers by revenue, units or buys (limit, offset, order_by)",
    ),
    ("GET /stats/timeseries", "Buys and units per minute or hour over timeframe_hours"),
    ("GET /stats/timing", "Buys by local weekday and hour in any IANA time zone (tz, timeframe_hours, promotion_id)"),
    ("GET /promotions", "Promotions ranked by buys (limit, offset, timeframe_hours)"),
    ("GET /promotions/{promotion_id}/stats", "One promotion: buys, units, revenue, unique buyers, top products"),
    ("GET /export", "Every stored field of the selected buys as CSV or NDJSON, streamed"),
    ("GET /events", "Server-Sent Events: a stats snapshot every second"),
    ("GET /dashboard", "Live dashboard for the campaign team"),
    ("GET /health", "Readiness: 200 when the store answers, 503 when degraded"),
    ("GET /health/live", "Liveness: 200 while the process runs"),
    ("GET /metrics", "Prometheus metrics"),
    ("GET /", "This overview"),
    ("GET /docs", "Swagger UI"),
    ("GET /redoc", "API reference"),
    ("GET /openapi.json", "OpenAPI 3 document"),
];

/// The API's name, version and endpoints.
#[utoipa::path(get, path = "/", tag = "health", responses(
    (status = 200, description = "`{\"message\": \"Buy Tracker API\", \"version\", \"endpoints\": {...}}`"),
))]
pub async fn index() -> Json<Value> {
    let endpoints: Map<String, Value> = ENDPOINTS.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    Json(json!({
        "message": "Buy Tracker API",
        "version": env!("CARGO_PKG_VERSION"),
        "endpoints": endpoints,
    }))
}

/// 404 in the original's shape, plus `detail`.
pub async fn not_found(uri: Uri) -> Response {
    let body = json!({
        "detail": "Not Found",
        "error": "Not Found",
        "message": format!("The requested path '{}' was not found", uri.path()),
        "available_endpoints": ENDPOINTS.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
    });
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

/// 405 for a known path with another method.
pub async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let body = json!({
        "detail": "Method Not Allowed",
        "message": format!("{method} is not allowed on '{}'", uri.path()),
    });
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}
