//! Reading a request's body: the bytes within the route's limit and the body timeout, and JSON
//! in the original's 422 shape.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;

use crate::field_error::FieldError;
use crate::http::error::ApiError;

/// The body bytes, 413 when over `limit` (set per route with `DefaultBodyLimit`), or 408 when it
/// did not arrive within the body timeout (the layer in `app.rs`).
pub fn body_bytes(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge { limit },
        _ if timed_out(&rejection) => ApiError::BodyTimeout,
        _ => ApiError::Validation(vec![FieldError::json_invalid_text(&rejection.body_text())]),
    })
}

/// Whether reading the body failed because the body timeout expired.
fn timed_out(rejection: &BytesRejection) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(error) = cause {
        if error.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = error.source();
    }
    false
}

/// The request's headers and body bytes (413 past the route's limit, as the `Bytes` extractor
/// does: the limit and the length come from the request's extensions and body, not its headers).
/// Takes the headers out instead of copying them as axum's `HeaderMap` extractor does.
pub async fn headers_and_body(mut request: Request) -> (HeaderMap, Result<Bytes, BytesRejection>) {
    let headers = std::mem::take(request.headers_mut());
    (headers, Bytes::from_request(request, &()).await)
}

/// The body as JSON, or 422 `json_invalid` (serde_json also bounds nesting depth at 128).
pub fn json_body(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::Validation(vec![FieldError::json_invalid(&e)]))
}
