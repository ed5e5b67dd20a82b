//! Optional per-client rate limiting: a token bucket per client IP (SPEC §4's client IP, so
//! clients behind a trusted proxy are told apart and an untrusted peer cannot dodge its bucket by
//! forging headers). Off by default; over the limit a request gets 429 with `Retry-After`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Json;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::client_ip::{TrustedProxies, client_ip};
use crate::lock::lock;

/// Buckets kept before idle ones are swept, bounding memory under many distinct clients.
const SWEEP_ABOVE: usize = 100_000;

/// Requests per second allowed per client, with a burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests allowed at once (bucket size).
    pub burst: f64,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The limiter shared by all requests.
#[derive(Clone)]
pub struct RateLimiter {
    rate: Rate,
    trusted: Arc<TrustedProxies>,
    buckets: Arc<Mutex<HashMap<IpAddr, Bucket>>>,
}

impl RateLimiter {
    /// A limiter at `rate`, keyed by client IP as seen through `trusted` proxies.
    pub fn new(rate: Rate, trusted: Arc<TrustedProxies>) -> Self {
        RateLimiter { rate, trusted, buckets: Default::default() }
    }

    /// Take one token for `client` at `now`; `Err(seconds)` until the next token when empty.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), f64> {
        let mut buckets = lock(&self.buckets);
        if buckets.len() > SWEEP_ABOVE {
            // A bucket that would be full again carries no state worth keeping.
            let refill = self.rate.burst / self.rate.per_second;
            buckets.retain(|_, b| now.duration_since(b.at).as_secs_f64() < refill);
        }
        let bucket = buckets.entry(client).or_insert(Bucket { tokens: self.rate.burst, at: now });
        let elapsed = now.duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate.per_second).min(self.rate.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err((1.0 - bucket.tokens) / self.rate.per_second)
        }
    }
}

/// Middleware: 429 with `Retry-After` (whole seconds, at least 1) when the client's bucket is empty.
pub async fn limit(State(limiter): State<RateLimiter>, request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let Some(peer) = peer else { return next.run(request).await };
    let client = client_ip(peer, request.headers(), &limiter.trusted);
    match limiter.check(client, Instant::now()) {
        Ok(()) => next.run(request).await,
        Err(wait) => {
            let retry_after = wait.ceil().max(1.0) as u64;
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
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_burst_then_refills() {
        let limiter = RateLimiter::new(Rate { per_second: 2.0, burst: 3.0 }, Arc::new(TrustedProxies::default()));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check(ip, t0).is_ok());
        }
        let wait = limiter.check(ip, t0).unwrap_err();
        assert!((wait - 0.5).abs() < 1e-9, "{wait}");
        assert!(limiter.check(other, t0).is_ok(), "buckets are per client");
        assert!(limiter.check(ip, t0 + Duration::from_millis(500)).is_ok());
        assert!(limiter.check(ip, t0 + Duration::from_millis(500)).is_err());
        // Long idle refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(limiter.check(ip, later).is_ok());
        }
        assert!(limiter.check(ip, later).is_err());
    }
}
