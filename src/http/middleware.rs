//! Cross-cutting request handling: the request id on every response, and the one place where
//! unexpected failures (errors and panics) are logged and turned into a 500 that names the id.

use std::io::Write;
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
use tracing::Instrument;

use crate::http::error::{InternalFailure, internal_error_body};

/// The header carrying the request id, both ways.
pub const REQUEST_ID: &str = "x-request-id";

/// A fresh id: a random per-process prefix and a counter. Unique across restarts and replicas
/// (the prefix is random), cheaper than a random UUID per request (one getrandom call each).
/// Formatted on the stack: the header value is the only allocation.
fn new_request_id() -> HeaderValue {
    static PREFIX: LazyLock<String> = LazyLock::new(|| uuid::Uuid::new_v4().simple().to_string()[..16].to_string());
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut buf = [0u8; 16 + 1 + 16];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    // Cannot fail: 16 prefix characters, a dash and at most 16 hex digits fit the buffer.
    let _ = write!(cursor, "{}-{:08x}", *PREFIX, COUNTER.fetch_add(1, Ordering::Relaxed));
    let len = cursor.position() as usize;
    HeaderValue::from_bytes(&buf[..len]).expect("hex digits and a dash are a valid header value")
}

/// Take the client's `x-request-id` when it is a sane token (shared, not copied), else make one.
fn request_id_for(request: &Request) -> HeaderValue {
    request
        .headers()
        .get(REQUEST_ID)
        .filter(|v| {
            let v = v.as_bytes();
            !v.is_empty() && v.len() <= 200 && v.iter().all(|b| (0x21..=0x7e).contains(b))
        })
        .cloned()
        .unwrap_or_else(new_request_id)
}

/// Open the request's span (its id, method and route on every log line of the request); tag
/// every response with the request id; log and hide the cause of every 500; count and time
/// the request by its route pattern (never the raw path, which would make labels unbounded).
/// The path and route are kept by reference (shared buffers), not copied: they are only read
/// when something fails and for the metrics.
pub async fn request_id(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id_for(&request);
    let method = request.method().clone();
    let uri = request.uri().clone();
    let route = request.extensions().get::<MatchedPath>().cloned();
    // Every log line of the request (a 503's cause, a panic) carries its id and route.
    let span = tracing::info_span!(
        "request",
        request_id = id_str(&id),
        method = %method,
        route = route.as_ref().map_or("unmatched", MatchedPath::as_str),
    );
    // A panicking handler must not take the connection (or the process) down: answer 500.
    let mut response = match AssertUnwindSafe(next.run(request)).catch_unwind().instrument(span.clone()).await {
        Ok(response) => response,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let path = uri.path();
            span.in_scope(|| tracing::error!(%path, panic = %what, "handler panicked"));
            internal(id_str(&id))
        }
    };
    if let Some(InternalFailure(cause)) = response.extensions_mut().remove::<InternalFailure>() {
        let path = uri.path();
        span.in_scope(|| tracing::error!(%path, %cause, "internal error"));
        response = internal(id_str(&id));
    }
    let status = response.status().as_u16();
    response.headers_mut().insert(REQUEST_ID, id);
    crate::metrics::request(
        &method,
        route.as_ref().map_or("unmatched", MatchedPath::as_str),
        status,
        started.elapsed(),
    );
    response
}

/// The id as text: always visible ASCII (checked or made so above).
fn id_str(id: &HeaderValue) -> &str {
    id.to_str().unwrap_or_default()
}

fn internal(id: &str) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, Json(internal_error_body(id))).into_response()
}
