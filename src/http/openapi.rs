//! The OpenAPI document, generated from the handlers' annotations (served at `/openapi.json`).

use utoipa::OpenApi;

use crate::http::error::{ValidationError, ValidationErrors};
use crate::http::{buy, events, export, health, metrics, promotions, refund, root, stats, timing, view};

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
not before 2000 and at most 5 minutes ahead; else the server time. The client IP is read from forwarding headers only when the peer is a trusted proxy (and from the one header `--client-ip-header` names, when set).\n\n\
Writes take JSON only (`application/json` or `…+json`; no `Content-Type` is read as JSON): another declared type gets 415. `/view` and `/views` also take `text/plain` (what `navigator.sendBeacon` sends). A write carrying an `Origin` that `--cors-origin` does not allow gets 403. \
503 bodies say what happened in a fixed sentence; causes are only logged. The full rules: `docs/reference.md` in the repository.",
    ),
    paths(root::index, buy::record_buy, buy::record_batch, view::record_view, view::record_views, refund::record_refund, stats::stats, stats::timeseries, timing::timing, promotions::list, promotions::stats, promotions::customers, export::export, events::events, health::health, health::live, metrics::metrics),
    components(schemas(ValidationErrors, ValidationError)),
    tags(
        (name = "buys", description = "Recording purchases"),
        (name = "views", description = "Recording page views (for conversion)"),
        (name = "refunds", description = "Recording refunds of buys (for net revenue)"),
        (name = "analytics", description = "Counts over the recorded purchases"),
        (name = "health", description = "Service status"),
    )
)]
pub struct ApiDoc;
