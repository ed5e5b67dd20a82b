//! `POST /view` and `POST /views` (`docs/reference.md` §9): page views, recorded as buys are
//! (request time, client IP, Idempotency-Key, durability), numbered among views. Besides JSON
//! they take `text/plain`, which is what `navigator.sendBeacon` sends from a shop's page.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::body::read_body;
use super::buy::{Stamp, record_stamped, with_replay_header};
use super::forgery::{self, Bodies};
use super::state::AppState;
use crate::http::error::ApiError;
use crate::idempotency;
use crate::page_view::{PageView, PageViewRecord, parse_batch_json};
use crate::store::Facts;

/// Largest `POST /view` body, as for `POST /buy`.
pub const VIEW_BODY_LIMIT: usize = 16 * 1024;
/// Largest `POST /views` body, as for `POST /buys`.
pub const VIEWS_BODY_LIMIT: usize = 2 * 1024 * 1024;

/// The answer to recorded views.
#[derive(Serialize, ToSchema)]
pub struct ViewsResponse {
    /// Always true.
    success: bool,
    /// How many views were recorded.
    recorded: usize,
    /// The sequence number (among views) of the last one.
    view_count: i64,
}

/// Record one view.
#[utoipa::path(
    post, path = "/view", tag = "views",
    request_body(content = crate::page_view::ViewRequest, description = "The view, as JSON or as `text/plain` holding JSON (navigator.sendBeacon). Body limit 16 KiB."),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "As for POST /buy.")),
    responses(
        (status = 200, description = "Committed durably before this answer; view_count is its number among views (unique, increasing, gap-free across replicas)", body = ViewsResponse),
        (status = 401, description = "Write keys are set and none was sent"),
        (status = 403, description = "The request carries an Origin header that --cors-origin does not allow"),
        (status = 409, description = "The same Idempotency-Key is in flight"),
        (status = 413, description = "Body over 16 KiB"),
        (status = 415, description = "Content-Type is present and is neither JSON nor text/plain"),
        (status = 422, description = "Invalid body or header", body = crate::http::error::ValidationErrors),
        (status = 503, description = "The store is unavailable: not acknowledged (as for POST /buy)"),
    )
)]
pub async fn record_view(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Result<Response, ApiError> {
    forgery::check(&state.origins, Bodies::JsonOrText, request.headers())?;
    let (headers, body) = read_body(request, VIEW_BODY_LIMIT, state.body_timeout).await?;
    let view = PageView::from_json(&body).map_err(ApiError::Validation)?;
    drop(body);
    record(&state, peer, headers, "/view", vec![view]).await
}

/// Record 1 to 1000 views atomically.
#[utoipa::path(
    post, path = "/views", tag = "views",
    request_body(content = crate::page_view::ViewBatchRequest, description = "The views, as JSON or `text/plain` holding JSON. Body limit 2 MiB."),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "As for POST /buy.")),
    responses(
        (status = 200, description = "All views committed durably, with consecutive numbers; view_count is the last", body = ViewsResponse),
        (status = 401, description = "Write keys are set and none was sent"),
        (status = 403, description = "The request carries an Origin header that --cors-origin does not allow"),
        (status = 409, description = "The same Idempotency-Key is in flight"),
        (status = 413, description = "Body over 2 MiB"),
        (status = 415, description = "Content-Type is present and is neither JSON nor text/plain"),
        (status = 422, description = "Some items invalid (each named by index); nothing recorded", body = crate::http::error::ValidationErrors),
        (status = 503, description = "The store is unavailable: not acknowledged (as for POST /buy)"),
    )
)]
pub async fn record_views(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Result<Response, ApiError> {
    forgery::check(&state.origins, Bodies::JsonOrText, request.headers())?;
    let (headers, body) = read_body(request, VIEWS_BODY_LIMIT, state.body_timeout).await?;
    let views = parse_batch_json(&body).map_err(ApiError::Validation)?;
    drop(body);
    record(&state, peer, headers, "/views", views).await
}

/// Stamp and commit `views` as one write, and answer with their last number.
async fn record(
    state: &AppState,
    peer: SocketAddr,
    headers: axum::http::HeaderMap,
    endpoint: &str,
    views: Vec<PageView>,
) -> Result<Response, ApiError> {
    let claim = |key: String, views: &Vec<PageView>| idempotency::claim_views(key, endpoint, views);
    let facts = |views: Vec<PageView>, stamp: Stamp| {
        let records = views
            .into_iter()
            .map(|view| PageViewRecord {
                view,
                ip_address: stamp.ip_address.clone(),
                timestamp_us: stamp.timestamp_us,
                received_at_us: stamp.received_at_us,
                timestamp_source: stamp.timestamp_source,
                idempotency_key: stamp.key.clone(),
            })
            .collect();
        Facts::Views(records)
    };
    let answer = record_stamped(state, peer, headers, views, claim, facts).await?;
    let response = ViewsResponse { success: true, recorded: answer.recorded, view_count: answer.last_seq };
    Ok(with_replay_header(Json(response).into_response(), answer.replayed))
}
