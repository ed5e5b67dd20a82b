//! Optional per-client rate limiting, off by default: over the limit a request gets 429 with
//! `Retry-After`.
//!
//! The buckets are `governor`'s (GCRA over a sharded map: no lock shared by every request),
//! keyed by client: the client IP as the forwarding rules tell it (`client_ip`), so clients
//! behind a trusted proxy are told apart and an untrusted peer cannot dodge its bucket by forging
//! headers. Two things bound what a hostile client can make it hold:
//!
//! - **IPv6 clients are keyed by their /64.** A single host is usually given a whole /64 and can
//!   rotate through it for free; keyed by address, each request could get a fresh bucket.
//! - **At most [`MAX_CLIENTS`] buckets.** Idle buckets (full again) are swept at most once per
//!   [`SWEEP_EVERY`], not on every request. When the map is still full after a sweep, clients
//!   without a bucket share one overflow bucket: under a flood from that many sources the newest
//!   clients are limited together rather than memory growing without bound.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter as Gcra};
use serde_json::json;

use crate::client_ip::{TrustedProxies, client_ip};

/// Buckets kept at most (a few MB).
pub const MAX_CLIENTS: usize = 100_000;
/// The shortest time between two sweeps of idle buckets.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Requests per second allowed per client, with a burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests allowed at once (bucket size; rounded up to a whole request).
    pub burst: f64,
}

impl Rate {
    fn quota(self) -> Quota {
        let burst =
            NonZeroU32::new(self.burst.ceil().clamp(1.0, f64::from(u32::MAX)) as u32).unwrap_or(NonZeroU32::MIN);
        // At least a nanosecond between requests: governor refuses a zero period.
        let period = Duration::from_secs_f64(1.0 / self.per_second).max(Duration::from_nanos(1));
        Quota::with_period(period).unwrap_or(Quota::per_second(NonZeroU32::MAX)).allow_burst(burst)
    }
}

/// Whose bucket a request takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// An IPv4 client.
    V4(u32),
    /// An IPv6 client, by its /64 prefix.
    V6(u64),
    /// Every client without a bucket while the map is full.
    Overflow,
}

impl ClientKey {
    /// The key of `ip` (an IPv4-mapped IPv6 address is its IPv4 address).
    pub fn of(ip: IpAddr) -> ClientKey {
        match ip {
            IpAddr::V4(v4) => ClientKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey::V4(u32::from(v4)),
                None => ClientKey::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

type Buckets<C> = Gcra<ClientKey, DefaultKeyedStateStore<ClientKey>, C, NoOpMiddleware<<C as Clock>::Instant>>;

struct Shared<C: Clock> {
    buckets: Buckets<C>,
    clock: C,
    trusted: Arc<TrustedProxies>,
    max_clients: usize,
    /// When the last sweep ran, in nanoseconds of `clock` since `started`, plus one (0: never).
    last_sweep: AtomicU64,
    started: C::Instant,
    /// Sweeps run so far (tests).
    sweeps: AtomicU64,
}

/// The limiter shared by all requests. One `Arc`: the middleware clones its state per request.
pub struct RateLimiter<C: Clock = DefaultClock>(Arc<Shared<C>>);

impl<C: Clock> Clone for RateLimiter<C> {
    fn clone(&self) -> Self {
        RateLimiter(self.0.clone())
    }
}

impl RateLimiter {
    /// A limiter at `rate`, keyed by client IP as seen through `trusted` proxies.
    pub fn new(rate: Rate, trusted: Arc<TrustedProxies>) -> Self {
        Self::with_clock(rate, trusted, MAX_CLIENTS, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimiter<C> {
    /// A limiter over `clock` holding at most `max_clients` buckets.
    pub fn with_clock(rate: Rate, trusted: Arc<TrustedProxies>, max_clients: usize, clock: C) -> Self {
        let buckets = Gcra::dashmap_with_clock(rate.quota(), clock.clone());
        let started = clock.now();
        RateLimiter(Arc::new(Shared {
            buckets,
            clock,
            trusted,
            max_clients,
            last_sweep: AtomicU64::new(0),
            started,
            sweeps: AtomicU64::new(0),
        }))
    }

    /// Take one request's token for `client`; `Err(wait)` until the next token when empty.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let shared = &self.0;
        let mut key = ClientKey::of(client);
        if shared.buckets.len() >= shared.max_clients {
            self.sweep();
            if shared.buckets.len() >= shared.max_clients {
                key = ClientKey::Overflow;
            }
        }
        shared.buckets.check_key(&key).map_err(|not_until| not_until.wait_time_from(shared.clock.now()))
    }

    /// Drop the buckets that are full again (they hold nothing a new one would not), at most
    /// once per [`SWEEP_EVERY`] whatever the traffic.
    fn sweep(&self) {
        let shared = &self.0;
        let now = u64::from(shared.clock.now().duration_since(shared.started)) + 1;
        let last = shared.last_sweep.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= SWEEP_EVERY.as_nanos() as u64;
        // One request sweeps; the others go on.
        if due && shared.last_sweep.compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            shared.buckets.retain_recent();
            shared.buckets.shrink_to_fit();
            shared.sweeps.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Buckets held now.
    pub fn clients(&self) -> usize {
        self.0.buckets.len()
    }

    /// Sweeps run so far.
    pub fn sweeps(&self) -> u64 {
        self.0.sweeps.load(Ordering::Relaxed)
    }
}

/// Middleware: 429 with `Retry-After` (whole seconds, at least 1) when the client's bucket is empty.
pub async fn limit(State(limiter): State<RateLimiter>, request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let Some(peer) = peer else { return next.run(request).await };
    let client = client_ip(peer, request.headers(), &limiter.0.trusted);
    match limiter.check(client) {
        Ok(()) => next.run(request).await,
        Err(wait) => {
            let retry_after = wait.as_secs_f64().ceil().max(1.0) as u64;
            let body = json!({"detail": format!("Too many requests from {client}; retry after {retry_after} s")});
            let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
            if let Ok(value) = HeaderValue::from_str(&retry_after.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limiter(per_second: f64, burst: f64, max_clients: usize) -> (RateLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let rate = Rate { per_second, burst };
        (RateLimiter::with_clock(rate, Arc::new(TrustedProxies::default()), max_clients, clock.clone()), clock)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn bucket_allows_burst_then_refills() {
        let (limiter, clock) = limiter(2.0, 3.0, 100);
        for _ in 0..3 {
            assert!(limiter.check(ip("10.0.0.1")).is_ok());
        }
        let wait = limiter.check(ip("10.0.0.1")).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(limiter.check(ip("10.0.0.2")).is_ok(), "buckets are per client");
        clock.advance(Duration::from_millis(500));
        assert!(limiter.check(ip("10.0.0.1")).is_ok());
        assert!(limiter.check(ip("10.0.0.1")).is_err());
        // Long idle refills only up to the burst.
        clock.advance(Duration::from_secs(60));
        for _ in 0..3 {
            assert!(limiter.check(ip("10.0.0.1")).is_ok());
        }
        assert!(limiter.check(ip("10.0.0.1")).is_err());
    }

    /// An IPv6 client rotating through its /64 keeps one bucket; another /64 has its own.
    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let (limiter, _) = limiter(1.0, 2.0, 100);
        assert!(limiter.check(ip("2001:db8:0:1::1")).is_ok());
        assert!(limiter.check(ip("2001:db8:0:1:ffff:1234:5678:9abc")).is_ok());
        assert!(limiter.check(ip("2001:db8:0:1::2")).is_err(), "the same /64 shares the bucket");
        assert!(limiter.check(ip("2001:db8:0:2::1")).is_ok(), "another /64");
        assert!(limiter.check(ip("::ffff:10.0.0.9")).is_ok());
        assert!(limiter.check(ip("10.0.0.9")).is_ok());
        assert!(limiter.check(ip("::ffff:10.0.0.9")).is_err(), "a mapped IPv4 address is that address");
        assert_eq!(limiter.clients(), 3);
    }

    /// However many sources send, the buckets stay bounded; full ones are swept at most once
    /// a second, and while every bucket is busy newcomers share the overflow bucket. (The
    /// hand-written limiter before held a bucket per source and swept all of them under one
    /// lock on every request past 100,000.)
    #[test]
    fn buckets_are_bounded_and_swept_at_most_once_per_interval() {
        let (limiter, clock) = limiter(1.0, 1.0, 50);
        for i in 0..5_000u32 {
            let _ = limiter.check(IpAddr::from(i.to_be_bytes()));
        }
        assert!(limiter.clients() <= 51, "{} buckets", limiter.clients());
        assert_eq!(limiter.sweeps(), 1, "one sweep in the same instant, not one per request");
        // The overflow bucket is shared: one newcomer took its token.
        assert!(limiter.check(ip("192.0.2.1")).is_err());
        // Once the buckets are full again they are swept away: newcomers get their own.
        clock.advance(Duration::from_secs(2));
        assert!(limiter.check(ip("192.0.2.1")).is_ok());
        assert_eq!(limiter.sweeps(), 2);
        assert!(limiter.clients() <= 2, "{} buckets", limiter.clients());
    }
}
