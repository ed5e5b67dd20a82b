//! What every handler can reach: the store, the writer, the clock and the shared limits, behind
//! one `Arc`; and how a handler runs a blocking store read.

use std::sync::Arc;
use std::time::Instant;

use crate::clock::Clock;
use crate::http::error::ApiError;
use crate::http::forgery::AllowedOrigins;
use crate::http::live::LiveStats;
use crate::http::reads::{ReadError, ReadSlots};
use crate::idempotency::InFlight;
use crate::store::{Store, StoreError};
use crate::writer::WriterHandle;

/// What every handler can reach: one `Arc` around [`Shared`], so the clone axum makes for every
/// request is a single reference-count increment rather than one per field. Fields are read
/// through `Deref` (`state.store`, `state.clock`).
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
    pub live: Arc<LiveStats>,
    /// Time allowed for a whole request body.
    pub body_timeout: std::time::Duration,
    /// Origins whose browser pages may write.
    pub origins: AllowedOrigins,
    /// Slots for store reads ([`ReadSlots`]).
    pub reads: ReadSlots,
    /// Slots for exports streaming at once (`http::export::MAX_EXPORTS`).
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

    /// Run a blocking store read (see [`ReadSlots`]), answering 503 if the store fails or takes
    /// longer than [`READ_TIMEOUT`]: never a hang.
    pub async fn read_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let store = self.store.clone();
        match self.reads.run(READ_TIMEOUT, move || f(store.as_ref())).await {
            Ok(result) => Ok(result?),
            Err(panicked @ ReadError::Panicked(_)) => Err(ApiError::Internal(panicked.into())),
            Err(timed_out) => Err(timed_out.into()),
        }
    }
}

/// How long a read may wait for the store before answering 503.
pub const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(4);
