//! One error type for the HTTP layer, turned into JSON responses in one place
//! (`docs/reference.md` §6): every handler returns [`ApiError`], and its [`IntoResponse`] is the
//! only place that picks a status code and a body.
//!
//! Validation problems keep the original (FastAPI/pydantic) shape,
//! `{"detail": [{"type", "loc", "msg", "input", "ctx"?}]}` ([`FieldError`]); failures of the store
//! and the writer are told as fixed sentences, their causes logged in the request's span.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa::openapi::schema::{ArrayBuilder, Object, OneOfBuilder, SchemaType, Type};

use crate::field_error::FieldError;
use crate::http::reads::ReadError;
use crate::store::StoreError;
use crate::telemetry::error_chain;
use crate::writer::SubmitError;

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
    /// 404: what the request names does not exist.
    #[error("not found")]
    NotFound(&'static str),
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
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Marker attached to 500 responses, holding the cause as one line: the request-id middleware
/// logs it with the request id and fills the id into the body, so handlers need not know it.
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
            ApiError::NotFound(what) => (StatusCode::NOT_FOUND, json!({ "detail": what })),
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
            ApiError::Internal(_) => {
                let mut response =
                    (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(internal_error_body(""))).into_response();
                response.extensions_mut().insert(InternalFailure(error_chain(&self)));
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

/// A 422 answer: one entry per problem, in the original (FastAPI) shape.
#[derive(Serialize, ToSchema)]
pub struct ValidationErrors {
    detail: Vec<ValidationError>,
}

/// One problem with one input.
#[derive(Serialize, ToSchema)]
pub struct ValidationError {
    /// Machine-readable kind: `missing`, `int_type`, `greater_than_equal`, `json_invalid`, ...
    #[serde(rename = "type")]
    kind: String,
    /// Location: `["body", "product_quantity"]`, `["body", "buys", 3, "user_id"]`, `["query", "timeframe_hours"]`.
    #[schema(schema_with = loc_schema)]
    loc: Vec<serde_json::Value>,
    /// Human-readable message.
    msg: String,
    /// The offending input (any JSON value).
    #[schema(schema_with = any_value)]
    input: serde_json::Value,
    /// Context such as the violated bound.
    #[schema(schema_with = any_object)]
    ctx: Option<serde_json::Value>,
}

/// `loc` items are field names and list indices.
fn loc_schema() -> ArrayBuilder {
    ArrayBuilder::new()
        .items(OneOfBuilder::new().item(Object::with_type(Type::String)).item(Object::with_type(Type::Integer)))
}

fn any_value() -> Object {
    Object::with_type(SchemaType::AnyValue)
}

fn any_object() -> Object {
    Object::with_type(Type::Object)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented 422 item is the real one: built from a [`FieldError`] (this fails to compile
    /// if the fields drift), it serialises to the same JSON.
    #[test]
    fn the_documented_shape_is_the_real_one() {
        let errors = [
            FieldError::missing(&[json!("body"), json!("user_id")], &json!({})),
            FieldError::too_large(&[json!("query"), json!("limit")], &json!("1001"), 1000),
        ];
        for e in errors {
            let real = serde_json::to_value(&e).unwrap();
            let documented =
                ValidationError { kind: e.kind.into(), loc: e.loc, msg: e.msg, input: e.input, ctx: e.ctx.map(|c| *c) };
            let mut documented = serde_json::to_value(documented).unwrap();
            if documented["ctx"].is_null() {
                documented.as_object_mut().unwrap().remove("ctx");
            }
            assert_eq!(documented, real);
        }
    }
}
