//! `POST /buy` and `POST /buys`: parse, stamp with time and client IP, hand to the writer, and
//! answer only after the commit (`docs/reference.md` §2, §5).

use std::fmt::Write as _;
use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::body::read_body;
use super::forgery::{self, Bodies};
use super::state::AppState;
use crate::client_ip::client_ip;
use crate::domain::{Buy, BuyRecord, parse_batch_json};
use crate::http::error::ApiError;
use crate::idempotency;
use crate::request_time;
use crate::store::{Facts, Outcome, Submission};

/// Largest `POST /buy` body (`docs/reference.md` §6).
pub const BUY_BODY_LIMIT: usize = 16 * 1024;
/// Largest `POST /buys` body (`docs/reference.md` §6).
pub const BATCH_BODY_LIMIT: usize = 2 * 1024 * 1024;

/// The answer to a recorded buy.
#[derive(Serialize, ToSchema)]
pub struct BuyResponse {
    /// Always true.
    success: bool,
    /// This buy's sequence number: the total number of buys once it was recorded.
    buy_count: i64,
    /// `Buy logged successfully. Total buys: N`.
    #[schema(value_type = String)]
    message: LoggedMessage,
}

/// `Buy logged successfully. Total buys: N`, written straight into the JSON body (no `String`).
struct LoggedMessage(i64);

impl Serialize for LoggedMessage {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("Buy logged successfully. Total buys: {}", self.0))
    }
}

/// The answer to a recorded batch.
#[derive(Serialize, ToSchema)]
pub struct BatchResponse {
    /// Always true.
    success: bool,
    /// How many buys were recorded.
    recorded: usize,
    /// The sequence number of the batch's last buy.
    buy_count: i64,
}

/// Record one buy.
#[utoipa::path(
    post, path = "/buy", tag = "buys",
    request_body(content = crate::domain::BuyRequest, description = "The buy. Body limit 16 KiB."),
    params(
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "1–255 visible ASCII characters. A repeat with the same body within 24 h is answered with the original response and `Idempotent-Replayed: true`; with another body, 422; while the first is in flight, 409."),
        ("x-timestamp" = Option<String>, Header, description = "Request generation time (also x-client-time, x-request-time, timestamp, x-request-start, x-queue-start, x-request-received, x-forwarded-start): RFC 3339, HTTP-date or epoch seconds/ms/µs/ns."),
    ),
    responses(
        (status = 200, description = "Committed durably before this answer", body = BuyResponse),
        (status = 401, description = "Write keys are set and none was sent"),
        (status = 403, description = "The request carries an Origin header that --cors-origin does not allow (a browser page on another site)"),
        (status = 409, description = "The same Idempotency-Key is in flight"),
        (status = 408, description = "Body not complete within the body timeout (15 s)"),
        (status = 413, description = "Body over 16 KiB"),
        (status = 415, description = "Content-Type is present and is neither application/json nor …+json"),
        (status = 422, description = "Invalid body or header", body = crate::http::error::ValidationErrors),
        (status = 503, description = "The store is unavailable or the write queue is full: not acknowledged. Usually nothing was recorded; when the store did not confirm the commit in time it may have been, so retry with an Idempotency-Key"),
    )
)]
pub async fn record_buy(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Result<Response, ApiError> {
    forgery::check(&state.origins, Bodies::Json, request.headers())?;
    let (headers, body) = read_body(request, BUY_BODY_LIMIT, state.body_timeout).await?;
    let buy = Buy::from_json(&body).map_err(ApiError::Validation)?;
    // Not kept while the write waits for its commit: the queue's memory is its records only.
    drop(body);
    let answer = record(&state, peer, headers, "/buy", vec![buy]).await?;
    let buy_count = answer.last_seq;
    let response = BuyResponse { success: true, buy_count, message: LoggedMessage(buy_count) };
    Ok(with_replay_header(Json(response).into_response(), answer.replayed))
}

/// Record 1 to 1000 buys atomically.
#[utoipa::path(
    post, path = "/buys", tag = "buys",
    request_body(content = crate::domain::BatchRequest, description = "The buys. Body limit 2 MiB."),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "As for POST /buy.")),
    responses(
        (status = 200, description = "All buys committed durably, with consecutive sequence numbers", body = BatchResponse),
        (status = 401, description = "Write keys are set and none was sent"),
        (status = 403, description = "The request carries an Origin header that --cors-origin does not allow (a browser page on another site)"),
        (status = 409, description = "The same Idempotency-Key is in flight"),
        (status = 408, description = "Body not complete within the body timeout (15 s)"),
        (status = 413, description = "Body over 2 MiB"),
        (status = 415, description = "Content-Type is present and is neither application/json nor …+json"),
        (status = 422, description = "Some items invalid (each named by index); nothing recorded", body = crate::http::error::ValidationErrors),
        (status = 503, description = "The store is unavailable: not acknowledged (as for POST /buy)"),
    )
)]
pub async fn record_batch(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Result<Response, ApiError> {
    forgery::check(&state.origins, Bodies::Json, request.headers())?;
    let (headers, body) = read_body(request, BATCH_BODY_LIMIT, state.body_timeout).await?;
    let buys = parse_batch_json(&body).map_err(ApiError::Validation)?;
    drop(body);
    let answer = record(&state, peer, headers, "/buys", buys).await?;
    let response = BatchResponse { success: true, recorded: answer.recorded, buy_count: answer.last_seq };
    Ok(with_replay_header(Json(response).into_response(), answer.replayed))
}

pub(super) fn with_replay_header(mut response: Response, replayed: bool) -> Response {
    if replayed {
        response.headers_mut().insert(idempotency::REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    response
}

/// Room for the longest IP address text (an IPv6 address with an embedded IPv4 one), so writing
/// it never reallocates (`to_string` grew the string twice for an IPv4 address).
const IP_TEXT_CAPACITY: usize = 45;

/// What a recorded (or replayed) write is answered with.
pub(super) struct Recorded {
    /// The sequence number of its last fact.
    pub last_seq: i64,
    /// How many facts it holds.
    pub recorded: usize,
    /// Whether this is the replay of an earlier request with the same Idempotency-Key.
    pub replayed: bool,
}

/// Where and when a write came from: what each of its facts is stamped with.
pub(super) struct Stamp {
    /// Client IP as text.
    pub ip_address: String,
    /// Request generation time, microseconds.
    pub timestamp_us: i64,
    /// Server receive time, microseconds.
    pub received_at_us: i64,
    /// Where the generation time came from.
    pub timestamp_source: crate::request_time::TimestampSource,
    /// The request's Idempotency-Key.
    pub key: Option<String>,
}

/// Stamp `buys` with the request's time, client IP and key, and commit them as one write.
/// Takes the headers and buys by value, so that nothing but the records is kept while the write
/// waits for its commit.
async fn record(
    state: &AppState,
    peer: SocketAddr,
    headers: HeaderMap,
    endpoint: &str,
    buys: Vec<Buy>,
) -> Result<Recorded, ApiError> {
    let claim = |key: String, buys: &Vec<Buy>| idempotency::claim(key, endpoint, buys);
    let facts = |buys: Vec<Buy>, stamp: Stamp| {
        // `repeat_n` moves the IP into the last record instead of cloning it (one buy: no copy).
        let records = std::iter::repeat_n(stamp.ip_address, buys.len())
            .zip(buys)
            .map(|(ip_address, buy)| BuyRecord {
                buy,
                ip_address,
                timestamp_us: stamp.timestamp_us,
                received_at_us: stamp.received_at_us,
                timestamp_source: stamp.timestamp_source,
                idempotency_key: stamp.key.clone(),
            })
            .collect();
        Facts::Buys(records)
    };
    record_stamped(state, peer, headers, buys, claim, facts).await
}

/// Commit one write of `parsed` (see [`submit_stamped`]) and answer what it recorded.
pub(super) async fn record_stamped<T>(
    state: &AppState,
    peer: SocketAddr,
    headers: HeaderMap,
    parsed: T,
    claim: impl FnOnce(String, &T) -> crate::store::IdempotencyClaim,
    facts: impl FnOnce(T, Stamp) -> Facts,
) -> Result<Recorded, ApiError> {
    match submit_stamped(state, peer, headers, parsed, claim, facts).await? {
        Outcome::Recorded { last_seq, recorded } => Ok(Recorded { last_seq, recorded, replayed: false }),
        Outcome::Replayed { last_seq, recorded } => Ok(Recorded { last_seq, recorded, replayed: true }),
        Outcome::KeyMismatch => Err(ApiError::IdempotencyMismatch),
        // Only a write of a refund is answered so.
        Outcome::Refunded { .. } | Outcome::RefundRefused(_) => {
            Err(ApiError::Internal("a write of buys or views was answered as a refund".into()))
        }
    }
}

/// Commit one write of `parsed`: read its key (`claim` fingerprints the request), stamp it with
/// the request's time and client IP, make its facts with `facts`, and wait for the commit.
pub(super) async fn submit_stamped<T>(
    state: &AppState,
    peer: SocketAddr,
    headers: HeaderMap,
    parsed: T,
    claim: impl FnOnce(String, &T) -> crate::store::IdempotencyClaim,
    facts: impl FnOnce(T, Stamp) -> Facts,
) -> Result<Outcome, ApiError> {
    let key = idempotency::key_from(&headers)?;
    // Held until the answer is sent, so a concurrent retry with the same key gets 409.
    let _in_flight = key.as_deref().map(|k| state.in_flight.enter(k)).transpose()?;
    let now = state.clock.now();
    let time = request_time::resolve(&headers, now);
    let mut ip = String::with_capacity(IP_TEXT_CAPACITY);
    let _ = write!(ip, "{}", client_ip(peer.ip(), &headers, &state.trusted_proxies));
    drop(headers);
    let claim = key.clone().map(|key| claim(key, &parsed));
    let stamp = Stamp {
        ip_address: ip,
        timestamp_us: time.at.timestamp_micros(),
        received_at_us: now.timestamp_micros(),
        timestamp_source: time.source,
        key,
    };
    // Every submit error means "not acknowledged": nothing, or nothing known, was committed.
    Ok(state.writer.submit(Submission { facts: facts(parsed, stamp), idempotency: claim }).await?)
}
