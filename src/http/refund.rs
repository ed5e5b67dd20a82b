//! `POST /refunds` (`docs/reference.md` §9): units of a recorded buy given back, recorded as a
//! fact of its own (numbered among refunds) with a buy's request time, client IP, Idempotency-Key
//! and durability. Whether the buy exists and still holds the units is decided inside the write
//! transaction, against every refund committed before, so concurrent refunds of one buy (on any
//! replica) never give back more than it holds.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::body::read_body;
use super::buy::{Stamp, submit_stamped, with_replay_header};
use super::forgery::{self, Bodies};
use super::state::AppState;
use crate::http::error::ApiError;
use crate::idempotency;
use crate::refund::{Refund, RefundRecord, RefundRefusal};
use crate::store::{Facts, Outcome};

/// Largest `POST /refunds` body, as for `POST /buy`.
pub const REFUND_BODY_LIMIT: usize = 16 * 1024;

/// The answer to a recorded refund.
#[derive(Serialize, ToSchema)]
pub struct RefundResponse {
    /// Always true.
    success: bool,
    /// The refund's sequence number among refunds (unique, increasing, gap-free across replicas).
    refund_count: i64,
    /// The buy refunded.
    buy_count: i64,
    /// Units refunded by this request.
    refunded_units: i64,
    /// The buy's units still not refunded after it.
    remaining_units: i64,
    /// refunded_units × the buy's unit_price_cents (0 when it has none).
    refunded_cents: i64,
}

/// Refund units of one buy.
#[utoipa::path(
    post, path = "/refunds", tag = "refunds",
    request_body(content = crate::refund::RefundRequest, description = "The buy and the units to refund (all that are left when product_quantity is absent). Body limit 16 KiB."),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "As for POST /buy: a retry is replayed, never applied twice. A refused refund (404, 422) does not use the key.")),
    responses(
        (status = 200, description = "Committed durably before this answer", body = RefundResponse),
        (status = 401, description = "Write keys are set and none was sent"),
        (status = 403, description = "The request carries an Origin header that --cors-origin does not allow"),
        (status = 404, description = "No buy has this buy_count; nothing recorded"),
        (status = 409, description = "The same Idempotency-Key is in flight"),
        (status = 413, description = "Body over 16 KiB"),
        (status = 415, description = "Content-Type is present and is neither application/json nor …+json"),
        (status = 422, description = "Invalid body or header, or product_quantity above the units left to refund (loc [\"body\", \"product_quantity\"]); nothing recorded", body = crate::http::error::ValidationErrors),
        (status = 503, description = "The store is unavailable: not acknowledged (as for POST /buy)"),
    )
)]
pub async fn record_refund(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Result<Response, ApiError> {
    forgery::check(&state.origins, Bodies::Json, request.headers())?;
    let (headers, body) = read_body(request, REFUND_BODY_LIMIT, state.body_timeout).await?;
    let refund = Refund::from_json(&body).map_err(ApiError::Validation)?;
    drop(body);
    let claim = |key: String, refund: &Refund| idempotency::claim_refund(key, "/refunds", refund);
    let facts = |refund: Refund, stamp: Stamp| {
        Facts::Refund(RefundRecord {
            refund,
            ip_address: stamp.ip_address,
            timestamp_us: stamp.timestamp_us,
            received_at_us: stamp.received_at_us,
            timestamp_source: stamp.timestamp_source,
            idempotency_key: stamp.key,
        })
    };
    match submit_stamped(&state, peer, headers, refund, claim, facts).await? {
        Outcome::Refunded { receipt, replayed } => {
            if !replayed {
                crate::metrics::refund_recorded();
            }
            let response = RefundResponse {
                success: true,
                refund_count: receipt.refund_count,
                buy_count: receipt.buy_count,
                refunded_units: receipt.refunded_units,
                remaining_units: receipt.remaining_units,
                refunded_cents: receipt.refunded_cents,
            };
            Ok(with_replay_header(Json(response).into_response(), replayed))
        }
        Outcome::RefundRefused(RefundRefusal::UnknownBuy) => Err(ApiError::NotFound("No buy has this buy_count")),
        Outcome::RefundRefused(refusal) => Err(ApiError::Validation(refusal.field_error().into_iter().collect())),
        Outcome::KeyMismatch => Err(ApiError::IdempotencyMismatch),
        Outcome::Recorded { .. } | Outcome::Replayed { .. } => {
            Err(ApiError::Internal("a refund was answered as a write of buys or views".into()))
        }
    }
}
