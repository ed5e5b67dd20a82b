//! One error type for the HTTP layer, turned into JSON responses in one place (SPEC §6).
//!
//! Validation problems keep the original (FastAPI/pydantic) shape:
//! `{"detail": [{"type", "loc", "msg", "input", "ctx"?}]}` so existing clients can read them.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

use crate::http::reads::ReadError;
use crate::store::StoreError;
use crate::writer::SubmitError;

/// One problem with one input field, in pydantic's error shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldError {
    /// Machine-readable kind (`missing`, `int_type`, `greater_than_equal`, ...).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Where the problem is: `["body", "product_quantity"]`, `["query", "timeframe_hours"]`.
    pub loc: Vec<Value>,
    /// Human-readable message.
    pub msg: String,
    /// The offending input.
    pub input: Value,
    /// Extra context such as the violated bound.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ctx: Option<Box<Value>>,
}

/// The most of an offending input an error echoes, in bytes of JSON. Without a bound, a 2 MiB
/// batch whose items each miss three fields answered about 8 MiB: every error copied its item.
pub const MAX_ECHO_BYTES: usize = 256;

/// `input` as an error echoes it: whole when small, else a string saying what it was (a long
/// string keeps its start).
fn echo(input: &Value) -> Value {
    let size = serde_json::to_string(input).map_or(usize::MAX, |s| s.len());
    if size <= MAX_ECHO_BYTES {
        return input.clone();
    }
    match input {
        Value::String(text) => {
            let end = (0..=MAX_ECHO_BYTES / 2).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
            Value::from(format!("{}… ({} bytes)", &text[..end], text.len()))
        }
        Value::Object(fields) => Value::from(format!("<object of {} fields, {size} bytes>", fields.len())),
        Value::Array(items) => Value::from(format!("<list of {} items, {size} bytes>", items.len())),
        other => other.clone(),
    }
}

impl FieldError {
    fn new(kind: &'static str, loc: &[Value], msg: impl Into<String>, input: &Value) -> Self {
        FieldError { kind, loc: loc.to_vec(), msg: msg.into(), input: echo(input), ctx: None }
    }

    fn with_ctx(mut self, ctx: Value) -> Self {
        self.ctx = Some(Box::new(ctx));
        self
    }

    /// A required field is absent; `input` is the enclosing object.
    pub fn missing(loc: &[Value], input: &Value) -> Self {
        Self::new("missing", loc, "Field required", input)
    }

    /// The value is not a JSON integer.
    pub fn not_an_int(loc: &[Value], input: &Value) -> Self {
        Self::new("int_type", loc, "Input should be a valid integer", input)
    }

    /// The integer does not fit in signed 64 bits.
    pub fn int_too_large(loc: &[Value], input: &Value) -> Self {
        Self::new("int_too_large", loc, "Input should be a valid integer within the signed 64-bit range", input)
    }

    /// Below the lower bound `ge`.
    pub fn too_small(loc: &[Value], input: &Value, ge: impl Into<Value> + std::fmt::Display + Copy) -> Self {
        Self::new("greater_than_equal", loc, format!("Input should be greater than or equal to {ge}"), input)
            .with_ctx(json!({ "ge": ge.into() }))
    }

    /// Above the upper bound `le`.
    pub fn too_large(loc: &[Value], input: &Value, le: impl Into<Value> + std::fmt::Display + Copy) -> Self {
        Self::new("less_than_equal", loc, format!("Input should be less than or equal to {le}"), input)
            .with_ctx(json!({ "le": le.into() }))
    }

    /// The value is not a JSON object.
    pub fn not_an_object(loc: &[Value], input: &Value) -> Self {
        Self::new(
            "model_attributes_type",
            loc,
            "Input should be a valid dictionary or object to extract fields from",
            input,
        )
    }

    /// The value is not a JSON array.
    pub fn not_a_list(loc: &[Value], input: &Value) -> Self {
        Self::new("list_type", loc, "Input should be a valid list", input)
    }

    /// A list with a length outside `1..=max`.
    pub fn list_length(loc: &[Value], len: usize, max: usize) -> Self {
        let input = json!(format!("<list of {len} items>"));
        if len == 0 {
            Self::new("too_short", loc, "List should have at least 1 item after validation, not 0", &input)
                .with_ctx(json!({"field_type": "List", "min_length": 1, "actual_length": 0}))
        } else {
            Self::new(
                "too_long",
                loc,
                format!("List should have at most {max} items after validation, not {len}"),
                &input,
            )
            .with_ctx(json!({"field_type": "List", "max_length": max, "actual_length": len}))
        }
    }

    /// The body is not valid JSON.
    pub fn json_invalid(error: &serde_json::Error) -> Self {
        Self::new("json_invalid", &[json!("body"), json!(error.column())], "JSON decode error", &json!({}))
            .with_ctx(json!({ "error": error.to_string() }))
    }

    /// The body could not be read (for a reason other than its size).
    pub fn json_invalid_text(reason: &str) -> Self {
        Self::new("json_invalid", &[json!("body")], "JSON decode error", &json!({}))
            .with_ctx(json!({ "error": reason }))
    }

    /// A query string that cannot be decoded.
    pub fn query_invalid(reason: &str, input: &str) -> Self {
        Self::new("query_invalid", &[json!("query")], format!("Malformed query string: {reason}"), &json!(input))
    }

    /// A query parameter that is not a number.
    pub fn not_a_number(loc: &[Value], input: &Value) -> Self {
        Self::new("float_parsing", loc, "Input should be a valid number, unable to parse string as a number", input)
    }

    /// A query parameter that is not an integer.
    pub fn not_an_int_string(loc: &[Value], input: &Value) -> Self {
        Self::new("int_parsing", loc, "Input should be a valid integer, unable to parse string as an integer", input)
    }

    /// A query parameter outside its allowed values.
    pub fn not_a_choice(loc: &[Value], input: &Value, choices: &[&str]) -> Self {
        let expected = choices.iter().map(|c| format!("'{c}'")).collect::<Vec<_>>().join(" or ");
        Self::new("enum", loc, format!("Input should be {expected}"), input).with_ctx(json!({ "expected": expected }))
    }

    /// A query parameter that is not an RFC 3339 time.
    pub fn not_a_time(loc: &[Value], input: &Value) -> Self {
        Self::new("datetime_parsing", loc, "Input should be an RFC 3339 time, such as 2025-06-27T20:14:12Z", input)
    }

    /// A header value that breaks its rules.
    pub fn bad_header(name: &str, msg: &str, input: &Value) -> Self {
        Self::new("value_error", &[json!("header"), json!(name)], msg, input)
    }
}

/// Everything a handler can fail with; each variant maps to one status code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 422: the request's body, query or headers break the contract.
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    /// 413: the body is over the route's limit.
    #[error("payload too large")]
    PayloadTooLarge { limit: usize },
    /// 408: the body did not arrive within the body timeout.
    #[error("request body timed out")]
    BodyTimeout,
    /// 401: a key is required and was missing or wrong.
    #[error("unauthorized")]
    Unauthorized,
    /// 403: a write from a browser page whose origin `--cors-origin` does not allow.
    #[error("origin not allowed")]
    ForbiddenOrigin,
    /// 415: a write whose body is declared as something the endpoint does not take.
    #[error("unsupported media type")]
    UnsupportedMediaType(&'static str),
    /// 404: nothing at this path.
    #[error("not found")]
    NotFound,
    /// 409: the same Idempotency-Key is still being processed.
    #[error("idempotency key in flight")]
    IdempotencyInFlight,
    /// 422: the same Idempotency-Key was used with another body.
    #[error("idempotency key reused")]
    IdempotencyMismatch,
    /// 503: the store failed; the client is told the kind, the cause is logged.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// 503: the write was not acknowledged (queue full, writer stopped, commit failed or
    /// unconfirmed).
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// 503: a read got no answer in time.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// 503 with `Retry-After: 1`: the service is busy with work of this kind; retry shortly.
    #[error("busy: {0}")]
    Busy(String),
    /// 500: a bug or an unexpected failure; details are logged, never sent.
    #[error("internal: {0}")]
    Internal(String),
}

/// Marker attached to 500 responses: the request-id middleware logs the cause with the request id
/// and fills the id into the body, so handlers need not know it.
#[derive(Debug, Clone)]
pub struct InternalFailure(pub String);

/// The body of every 500, with the request id the failure was logged under.
pub fn internal_error_body(request_id: &str) -> Value {
    json!({"detail": "Internal server error", "request_id": request_id})
}

impl ApiError {
    /// The fixed sentence a 503 tells the client.
    pub fn unavailable_sentence(&self) -> &'static str {
        match self {
            ApiError::Store(e) | ApiError::Submit(SubmitError::Store { source: e, .. }) => e.kind().sentence(),
            ApiError::Submit(SubmitError::QueueFull) => "the write queue is full; retry shortly",
            ApiError::Submit(SubmitError::Closed) => "the service is not taking writes; retry",
            ApiError::Submit(SubmitError::Timeout) => {
                "the store did not confirm the write in time; retry with an Idempotency-Key"
            }
            ApiError::Read(_) => "the store did not answer in time; retry",
            _ => "the service is unavailable; retry",
        }
    }
}

/// An error and its sources, joined for one log line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            ApiError::Validation(errors) => (StatusCode::UNPROCESSABLE_ENTITY, json!({ "detail": errors })),
            ApiError::PayloadTooLarge { limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"detail": format!("Request body too large: the limit for this endpoint is {limit} bytes")}),
            ),
            ApiError::BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                json!({"detail": "Request body not received in time: send the whole body promptly"}),
            ),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                json!({"detail": "Missing or invalid API key: send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"}),
            ),
            ApiError::ForbiddenOrigin => (
                StatusCode::FORBIDDEN,
                json!({"detail": "Writes from this origin are not allowed: the service's --cors-origin does not list it"}),
            ),
            ApiError::UnsupportedMediaType(why) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, json!({ "detail": why })),
            ApiError::NotFound => (StatusCode::NOT_FOUND, json!({"detail": "Not Found"})),
            ApiError::IdempotencyInFlight => (
                StatusCode::CONFLICT,
                json!({"detail": "A request with this Idempotency-Key is still being processed; retry later"}),
            ),
            ApiError::IdempotencyMismatch => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"detail": [{
                    "type": "idempotency_key_reused",
                    "loc": ["header", "idempotency-key"],
                    "msg": "This Idempotency-Key was already used with a different request body",
                    "input": null,
                }]}),
            ),
            ApiError::Store(_) | ApiError::Submit(_) | ApiError::Read(_) => {
                // The cause can hold driver text (SQL states, table names, paths): logged under
                // the request's span, never sent.
                tracing::warn!(cause = %error_chain(&self), "answered 503");
                (StatusCode::SERVICE_UNAVAILABLE, json!({ "detail": self.unavailable_sentence() }))
            }
            ApiError::Busy(why) => (StatusCode::SERVICE_UNAVAILABLE, json!({ "detail": why })),
            ApiError::Internal(cause) => {
                let mut response =
                    (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(internal_error_body(""))).into_response();
                response.extensions_mut().insert(InternalFailure(cause.clone()));
                return response;
            }
        };
        let mut response = (status, axum::Json(body)).into_response();
        if matches!(self, ApiError::Busy(_)) {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"buy-tracker\""));
        }
        response
    }
}
