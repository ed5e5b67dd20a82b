//! Write and read keys (`docs/reference.md` §1): when keys are configured, writes need a write key and analytics
//! reads a read or write key, sent as `Authorization: Bearer KEY` or `X-API-Key: KEY`.
//!
//! Keys are kept only as SHA-256 digests and compared in constant time, so neither the timing of
//! an answer nor a memory dump of the comparison reveals a key; keys are never logged.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::http::error::ApiError;

type Digest32 = [u8; 32];

fn digest(key: &str) -> Digest32 {
    Sha256::digest(key.as_bytes()).into()
}

/// The configured keys. One `Arc`: the middleware clones its state on every request.
#[derive(Debug, Clone, Default)]
pub struct Access(Arc<Keys>);

#[derive(Debug, Default)]
struct Keys {
    write: Vec<Digest32>,
    read: Vec<Digest32>,
}

impl Access {
    /// Keys as configured (empty lists leave that kind of access open).
    pub fn new(write_keys: &[String], read_keys: &[String]) -> Self {
        Access(Arc::new(Keys {
            write: write_keys.iter().map(|k| digest(k)).collect(),
            read: read_keys.iter().map(|k| digest(k)).collect(),
        }))
    }

    /// Whether writes need a key (without write keys, [`require_write`] lets everything through).
    pub fn guards_writes(&self) -> bool {
        !self.0.write.is_empty()
    }

    /// Whether analytics reads need a key (see [`Access::guards_writes`]).
    pub fn guards_reads(&self) -> bool {
        !self.0.read.is_empty()
    }

    /// May this request write?
    pub fn allows_write(&self, headers: &HeaderMap) -> bool {
        let keys = &self.0;
        keys.write.is_empty() || presented(headers).is_some_and(|k| matches_any(&k, &keys.write))
    }

    /// May this request read analytics? A write key also reads.
    pub fn allows_read(&self, headers: &HeaderMap) -> bool {
        let keys = &self.0;
        keys.read.is_empty()
            || presented(headers).is_some_and(|k| matches_any(&k, &keys.read) | matches_any(&k, &keys.write))
    }
}

/// The key the request presents, digested.
fn presented(headers: &HeaderMap) -> Option<Digest32> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("Bearer ").or_else(|| v.trim().strip_prefix("bearer ")))
        .map(str::trim);
    let api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim);
    bearer.or(api_key).filter(|k| !k.is_empty()).map(digest)
}

/// Compare against every key without stopping early.
fn matches_any(key: &Digest32, keys: &[Digest32]) -> bool {
    keys.iter().fold(subtle::Choice::from(0), |found, k| found | k.ct_eq(key)).into()
}

/// Middleware for write routes.
pub async fn require_write(State(access): State<Access>, request: Request, next: Next) -> Response {
    if access.allows_write(request.headers()) {
        next.run(request).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

/// Middleware for analytics read routes.
pub async fn require_read(State(access): State<Access>, request: Request, next: Next) -> Response {
    if access.allows_read(request.headers()) { next.run(request).await } else { ApiError::Unauthorized.into_response() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn open_without_keys() {
        let a = Access::new(&[], &[]);
        assert!(a.allows_write(&HeaderMap::new()) && a.allows_read(&HeaderMap::new()));
    }

    #[test]
    fn write_keys_guard_writes_only() {
        let a = Access::new(&["w".into()], &[]);
        assert!(!a.allows_write(&HeaderMap::new()));
        assert!(!a.allows_write(&with("authorization", "Bearer x")));
        assert!(a.allows_write(&with("authorization", "Bearer w")));
        assert!(a.allows_write(&with("x-api-key", "w")));
        assert!(a.allows_read(&HeaderMap::new()));
    }

    #[test]
    fn read_keys_accept_write_keys_too() {
        let a = Access::new(&["w".into()], &["r".into(), "r2".into()]);
        assert!(!a.allows_read(&HeaderMap::new()));
        assert!(a.allows_read(&with("x-api-key", "r2")));
        assert!(a.allows_read(&with("authorization", "Bearer w")));
        assert!(!a.allows_write(&with("authorization", "Bearer r")));
        assert!(!a.allows_read(&with("authorization", "Basic r")));
    }
}
