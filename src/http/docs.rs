//! The OpenAPI document, generated from the handlers' annotations (served by [`super::pages`]).

use serde::Serialize;
use utoipa::openapi::schema::{ArrayBuilder, Object, OneOfBuilder, SchemaType, Type};
use utoipa::{OpenApi, ToSchema};

use crate::error::FieldError;
use crate::http::{buy, events, export, health, metrics, promotions, root, stats};

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

// Keeps the documented shape tied to the real one: this fails to compile if fields drift.
#[allow(dead_code)]
fn _same_shape(e: FieldError) -> ValidationError {
    ValidationError { kind: e.kind.into(), loc: e.loc, msg: e.msg, input: e.input, ctx: e.ctx.map(|c| *c) }
}

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Buy Tracker API",
        description = "Records the purchases customers make on e-commerce promotion pages and serves live analytics on them.\n\n\
A 200 on a write means the buy is committed durably (fsynced) before the answer. Times are RFC 3339 UTC with microseconds and `Z`. \
When write or read keys are configured, send one as `Authorization: Bearer KEY` or `X-API-Key: KEY`; a missing or wrong key gets 401. \
Every response carries `x-request-id` (the client's, if sent). Unknown paths answer 404 with the list of endpoints; wrong methods 405; \
bodies over the limit 413; an unavailable store 503 within 5 seconds; unexpected failures 500 with a `request_id`.\n\n\
The buy's `timestamp` is the request generation time from the first valid header among x-timestamp, x-client-time, x-request-time, timestamp, \
x-request-start, x-queue-start, x-request-received, x-forwarded-start (RFC 3339, HTTP-date or epoch numbers, optionally `t=`-prefixed), \
not before 2000 and at most 5 minutes ahead; else the server time. The client IP is read from forwarding headers only when the peer is a trusted proxy.",
    ),
    paths(root::index, buy::record_buy, buy::record_batch, stats::stats, stats::timeseries, promotions::list, promotions::stats, export::export, events::events, health::health, health::live, metrics::metrics),
    components(schemas(ValidationErrors, ValidationError)),
    tags(
        (name = "buys", description = "Recording purchases"),
        (name = "analytics", description = "Counts over the recorded purchases"),
        (name = "health", description = "Service status"),
    )
)]
pub struct ApiDoc;
