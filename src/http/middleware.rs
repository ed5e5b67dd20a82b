//! Cross-cutting request handling: the request id on every response, and the one place where
//! unexpected failures (errors and panics) are logged and turned into a 500 that names the id.

use std::panic::AssertUnwindSafe;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Json;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;

use crate::error::{InternalFailure, internal_error_body};

/// The header carrying the request id, both ways.
pub const REQUEST_ID: &str = "x-request-id";

/// This request's id, available to handlers as an extension.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// A fresh id: a random per-process prefix and a counter. Unique across restarts and replicas
/// (the prefix is random), cheaper than a random UUID per request (one getrandom call each).
fn new_request_id() -> String {
    static PREFIX: LazyLock<String> = LazyLock::new(|| uuid::Uuid::new_v4().simple().to_string()[..16].to_string());
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!("{}-{:08x}", *PREFIX, COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Take the client's `x-request-id` when it is a sane token, else make one.
fn request_id_for(request: &Request) -> String {
    request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 200 && v.bytes().all(|b| (0x21..=0x7e).contains(&b)))
        .map(str::to_string)
        .unwrap_or_else(new_request_id)
}

/// Tag every response with the request id; log and hide the cause of every 500; count and time
/// the request by its route pattern (never the raw path, which would make labels unbounded).
pub async fn request_id(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id_for(&request);
    request.extensions_mut().insert(RequestId(id.clone()));
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_string();
    // A panicking handler must not take the connection (or the process) down: answer 500.
    let mut response = match AssertUnwindSafe(next.run(request)).catch_unwind().await {
        Ok(response) => response,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(request_id = %id, %method, %path, panic = %what, "handler panicked");
            internal(&id)
        }
    };
    if let Some(InternalFailure(cause)) = response.extensions_mut().remove::<InternalFailure>() {
        tracing::error!(request_id = %id, %method, %path, %cause, "internal error");
        response = internal(&id);
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    crate::metrics::request(&method, &route, response.status().as_u16(), started.elapsed());
    response
}

fn internal(id: &str) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, Json(internal_error_body(id))).into_response()
}
