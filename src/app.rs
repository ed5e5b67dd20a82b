//! Building the service: open the store, start the writer, wire the routes, bind, and serve
//! until a shutdown signal, then make every accepted write durable before returning.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::cli::Config;
use crate::clock::{Clock, SystemClock};
use crate::http::access::{self, Access};
use crate::http::buy::{BATCH_BODY_LIMIT, BUY_BODY_LIMIT};
use crate::http::forgery::AllowedOrigins;
use crate::http::rate_limit::{self, RateLimiter};
use crate::http::reads::ReadSlots;
use crate::http::refund::{self, REFUND_BODY_LIMIT};
use crate::http::state::{AppState, Shared};
use crate::http::view::{VIEW_BODY_LIMIT, VIEWS_BODY_LIMIT};
use crate::http::{buy, events, export, health, metrics, middleware, pages, promotions, root, stats, timing, view};
use crate::server::Timeouts;
use crate::writer::{Limits, Writer};

/// A bound, ready-to-run service.
pub struct Application {
    listener: TcpListener,
    router: Router,
    writer: Writer,
    addr: SocketAddr,
    shutdown: tokio::sync::watch::Sender<bool>,
    timeouts: Timeouts,
    /// Writes are open to anyone who can reach the address (no write key, not loopback).
    open_to_anyone: bool,
}

impl Application {
    /// Open the store, start the writer and bind the listener, with the system clock.
    pub async fn build(config: &Config) -> Result<Application, StartError> {
        Self::build_with_clock(config, Arc::new(SystemClock)).await
    }

    /// As [`Application::build`], with the given clock (tests pin time with it).
    pub async fn build_with_clock(config: &Config, clock: Arc<dyn Clock>) -> Result<Application, StartError> {
        crate::metrics::handle();
        let store = crate::store::open(&config.database_url, config.views_path.as_deref())?;
        let writer = Writer::start(store.clone(), clock.clone(), Limits::default()).map_err(StartError::Writer)?;
        let (shutdown, stopping) = tokio::sync::watch::channel(false);
        let state = AppState::new(Shared {
            reads: ReadSlots::new(store.read_connections()),
            store,
            writer: writer.handle(),
            clock,
            started: Instant::now(),
            trusted_proxies: Arc::new(config.trusted_proxies.clone()),
            in_flight: Default::default(),
            shutdown: stopping,
            live: Default::default(),
            body_timeout: config.body_timeout,
            origins: AllowedOrigins::new(&config.cors_origins),
            exports: Arc::new(tokio::sync::Semaphore::new(crate::http::export::MAX_EXPORTS)),
        });
        let access = Access::new(&config.write_keys, &config.read_keys);
        let limiter = config.rate_limit.map(|rate| RateLimiter::new(rate, state.trusted_proxies.clone()));
        let cors = cors(&state.origins);
        let router = router(state, access, limiter, cors);
        let listener = TcpListener::bind((config.host.as_str(), config.port))
            .await
            .and_then(|listener| Ok((listener.local_addr()?, listener)));
        let (addr, listener) =
            listener.map_err(|source| StartError::Listen { host: config.host.clone(), port: config.port, source })?;
        let open_to_anyone = config.write_keys.is_empty() && !addr.ip().is_loopback();
        Ok(Application {
            listener,
            router,
            writer,
            addr,
            shutdown,
            timeouts: Timeouts {
                header: config.header_timeout,
                idle: config.idle_timeout,
                drain: config.shutdown_timeout,
            },
            open_to_anyone,
        })
    }

    /// The address actually bound (the port is the real one when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serve until `shutdown` completes; then stop accepting, answer the requests already
    /// received, commit every queued write, and return.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        tracing::info!("listening on http://{}", self.addr);
        if self.open_to_anyone {
            tracing::warn!(
                "no --write-key is set and {} is not a loopback address: anyone who can reach it can record buys; \
                 set --write-key (or bind --host 127.0.0.1 behind a proxy that checks keys)",
                self.addr.ip()
            );
        }
        let streams = self.shutdown;
        let signal = async move {
            shutdown.await;
            // End event streams, or graceful shutdown would wait for them forever.
            let _ = streams.send(true);
        };
        let served = crate::server::serve(self.listener, self.router, self.timeouts, signal).await;
        self.writer.shutdown().await;
        tracing::info!("stopped; every acknowledged buy is committed");
        served
    }
}

/// All routes with their limits, access rules and middleware.
pub fn router(state: AppState, access: Access, limiter: Option<RateLimiter>, cors: Option<CorsLayer>) -> Router {
    let mut writes = Router::new()
        .route("/buy", post(buy::record_buy).layer(DefaultBodyLimit::max(BUY_BODY_LIMIT)))
        .route("/buys", post(buy::record_batch).layer(DefaultBodyLimit::max(BATCH_BODY_LIMIT)))
        .route("/view", post(view::record_view).layer(DefaultBodyLimit::max(VIEW_BODY_LIMIT)))
        .route("/views", post(view::record_views).layer(DefaultBodyLimit::max(VIEWS_BODY_LIMIT)))
        .route("/refunds", post(refund::record_refund).layer(DefaultBodyLimit::max(REFUND_BODY_LIMIT)));
    let mut reads = Router::new()
        .route("/stats", get(stats::stats))
        .route("/stats/timeseries", get(stats::timeseries))
        .route("/stats/timing", get(timing::timing))
        .route("/promotions", get(promotions::list))
        .route("/promotions/{promotion_id}/stats", get(promotions::stats))
        .route("/promotions/{promotion_id}/customers", get(promotions::customers))
        .route("/export", get(export::export))
        .route("/events", get(events::events));
    // Key checks only where keys are configured: an open check would still cost every request a
    // middleware layer (boxed services cloned, a boxed future).
    if access.guards_writes() {
        writes = writes.route_layer(from_fn_with_state(access.clone(), access::require_write));
    }
    if access.guards_reads() {
        reads = reads.route_layer(from_fn_with_state(access, access::require_read));
    }
    // Outermost on the API routes, so floods are refused before any other work (keys included);
    // health, metrics and pages stay reachable.
    if let Some(limiter) = limiter {
        writes = writes.route_layer(from_fn_with_state(limiter.clone(), rate_limit::limit));
        reads = reads.route_layer(from_fn_with_state(limiter, rate_limit::limit));
    }
    let open = Router::new()
        .route("/", get(root::index))
        .route("/health", get(health::health))
        .route("/health/live", get(health::live))
        .route("/metrics", get(metrics::metrics))
        .route("/redoc", get(pages::reference_page))
        .route("/dashboard", get(pages::dashboard_page))
        .route("/docs", get(pages::swagger_page))
        .route("/docs/", get(pages::swagger_page))
        .route("/docs/{*file}", get(pages::swagger_asset))
        .route("/openapi.json", get(pages::openapi_document));
    let app = Router::new()
        .merge(writes)
        .merge(reads)
        .merge(open)
        .fallback(root::not_found)
        .method_not_allowed_fallback(root::method_not_allowed)
        .with_state(state);
    // One `layer` call, so every route is wrapped (and its service boxed, and cloned per request)
    // once rather than once per layer. Outermost first: request id, CORS.
    app.layer(ServiceBuilder::new().layer(from_fn(middleware::request_id)).option_layer(cors))
}

/// CORS for the configured origins; `None` leaves the API same-origin only. Origins match as
/// the write check matches them ([`AllowedOrigins`]), so a page allowed to write also gets the
/// CORS headers that let it read the answer.
fn cors(origins: &AllowedOrigins) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let origins = origins.clone();
    let allow = AllowOrigin::predicate(move |origin: &HeaderValue, _| origins.allows(origin));
    let mut headers: Vec<HeaderName> =
        ["content-type", "authorization", "x-api-key", "idempotency-key", "x-request-id"]
            .into_iter()
            .map(HeaderName::from_static)
            .collect();
    headers.extend(crate::request_time::TIME_HEADERS.iter().map(|h| HeaderName::from_static(h)));
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers(headers)
            .expose_headers([
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static(crate::idempotency::REPLAYED_HEADER),
            ]),
    )
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::OpenError),
    /// The writer's thread could not be started.
    #[error("cannot start the writer thread")]
    Writer(#[source] std::io::Error),
    /// The address could not be bound.
    #[error("cannot listen on --host {host} --port {port}")]
    Listen {
        /// `--host`.
        host: String,
        /// `--port`.
        port: u16,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}
