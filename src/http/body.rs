//! Reading a request's body: the bytes within the route's limit and the body timeout.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode};
use std::time::Duration;

use crate::field_error::FieldError;
use crate::http::error::ApiError;

/// The request's headers and its whole body: 413 past `limit` (also set per route with
/// `DefaultBodyLimit`, which the `Bytes` extractor reads), 408 when the body is not complete
/// within `timeout` from now. The deadline is for the whole body: a client that sends a byte
/// now and then cannot hold its connection longer. The headers are taken out of the request
/// rather than copied, as axum's `HeaderMap` extractor would.
pub async fn read_body(mut request: Request, limit: usize, timeout: Duration) -> Result<(HeaderMap, Bytes), ApiError> {
    let headers = std::mem::take(request.headers_mut());
    match tokio::time::timeout(timeout, Bytes::from_request(request, &())).await {
        Err(_) => Err(ApiError::BodyTimeout),
        Ok(Ok(body)) => Ok((headers, body)),
        Ok(Err(rejection)) => Err(match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge { limit },
            _ => ApiError::Validation(vec![FieldError::json_invalid_text(&rejection.body_text())]),
        }),
    }
}
