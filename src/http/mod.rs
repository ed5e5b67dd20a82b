//! The HTTP layer: one module per resource, plus the state and helpers they share.
//! Handlers parse requests into domain types, call the writer or the store, and shape responses;
//! every failure goes through [`error::ApiError`].

pub mod access;
pub mod buy;
pub mod error;
pub mod events;
pub mod export;
pub mod forgery;
pub mod health;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod pages;
pub mod promotions;
pub mod query;
pub mod rate_limit;
pub mod reads;
pub mod root;
pub mod stats;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;

use crate::clock::Clock;
use crate::field_error::FieldError;
use crate::http::error::ApiError;
use crate::idempotency::InFlight;
use crate::store::{Store, StoreError};
use crate::writer::WriterHandle;
use reads::ReadError;

/// What every handler can reach: one `Arc` around [`Shared`], so the clone axum makes for every
/// request is a single reference-count increment (it used to clone seven `Arc`s and handles, and
/// drop them again, per request). Fields are read through `Deref` (`state.store`, `state.clock`).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// The parts of [`AppState`], shared by every request.
pub struct Shared {
    /// The store, for reads (writes go through `writer`).
    pub store: Arc<dyn Store>,
    /// The group-commit writer.
    pub writer: WriterHandle,
    /// The time source.
    pub clock: Arc<dyn Clock>,
    /// When the service started (for uptime).
    pub started: Instant,
    /// Peers whose forwarding headers are believed.
    pub trusted_proxies: Arc<crate::client_ip::TrustedProxies>,
    /// Idempotency-Keys being processed.
    pub in_flight: InFlight,
    /// Turns true when the service starts shutting down (ends long-lived streams).
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// The stats snapshot shared by `/events` streams.
    pub live: events::LiveStats,
    /// Origins whose browser pages may write.
    pub origins: forgery::AllowedOrigins,
    /// Slots for store reads ([`reads::ReadSlots`]).
    pub reads: reads::ReadSlots,
    /// Slots for exports streaming at once ([`export::MAX_EXPORTS`]).
    pub exports: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    /// The state of one service.
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl Shared {
    /// Seconds since start.
    pub fn uptime_seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Run a blocking store read (see [`reads`]), answering 503 if the store fails or takes
    /// longer than [`READ_TIMEOUT`]: never a hang.
    pub async fn read_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let store = self.store.clone();
        match self.reads.run(READ_TIMEOUT, move || f(store.as_ref())).await {
            Ok(result) => Ok(result?),
            Err(ReadError::Panicked(why)) => Err(ApiError::Internal(format!("store read panicked: {why}"))),
            Err(timed_out) => Err(timed_out.into()),
        }
    }
}

/// How long a read may wait for the store before answering 503.
pub const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(4);

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
