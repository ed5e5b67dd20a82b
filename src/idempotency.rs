//! `Idempotency-Key` (`docs/reference.md` §2): the key's rules, the fingerprint that tells "same request" from
//! "different body", and the registry of keys in flight in this process (answered 409).
//!
//! Whether a key was used before is decided by the store inside the writer's transaction, so the
//! check and the claim are atomic; the in-flight registry only covers the window before that.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::domain::Buy;
use crate::field_error::FieldError;
use crate::http::error::ApiError;
use crate::lock::lock;
use crate::page_view::PageView;
use crate::refund::Refund;
use crate::store::IdempotencyClaim;

/// The header's name.
pub const HEADER: &str = "idempotency-key";
/// The header answering a replay.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
const MAX_LEN: usize = 255;

/// Read the key from the headers: `None` when absent, 422 when it breaks the rules
/// (1–255 visible ASCII characters).
pub fn key_from(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(HEADER) else { return Ok(None) };
    let bytes = value.as_bytes();
    let visible = bytes.iter().all(|b| (0x21..=0x7e).contains(b));
    if bytes.is_empty() || bytes.len() > MAX_LEN || !visible {
        let shown = json!(String::from_utf8_lossy(bytes));
        return Err(ApiError::Validation(vec![FieldError::bad_header(
            HEADER,
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
            &shown,
        )]));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// The claim for `key` on a request to `endpoint` carrying `buys`. The fingerprint covers the
/// parsed buys, not the raw bytes, so a retry that re-serialises the same body (other spacing,
/// other field order) is still "the same body".
pub fn claim(key: String, endpoint: &str, buys: &[Buy]) -> IdempotencyClaim {
    let mut hasher = Sha256::new();
    hasher.update(endpoint.as_bytes());
    for buy in buys {
        for n in [buy.user_id, buy.promotion_id, buy.product_id, buy.quantity.get()] {
            hasher.update(n.to_le_bytes());
        }
        hash_optional(&mut hasher, buy.unit_price_cents);
    }
    IdempotencyClaim { key, fingerprint: hasher.finalize().into() }
}

/// The claim for `key` on a request to `endpoint` carrying `views` (as [`claim`] for buys).
pub fn claim_views(key: String, endpoint: &str, views: &[PageView]) -> IdempotencyClaim {
    let mut hasher = Sha256::new();
    hasher.update(endpoint.as_bytes());
    for view in views {
        for n in [view.user_id, view.promotion_id] {
            hasher.update(n.to_le_bytes());
        }
        hash_optional(&mut hasher, view.product_id);
    }
    IdempotencyClaim { key, fingerprint: hasher.finalize().into() }
}

/// The claim for `key` on a refund request to `endpoint` (as [`claim`] for buys).
pub fn claim_refund(key: String, endpoint: &str, refund: &Refund) -> IdempotencyClaim {
    let mut hasher = Sha256::new();
    hasher.update(endpoint.as_bytes());
    hasher.update(refund.buy_count.to_le_bytes());
    hash_optional(&mut hasher, refund.units);
    IdempotencyClaim { key, fingerprint: hasher.finalize().into() }
}

/// An optional number in a fingerprint: a marker byte, then the number when present, so that
/// "absent" never hashes like any value.
fn hash_optional(hasher: &mut Sha256, value: Option<i64>) {
    match value {
        Some(v) => hasher.update([&[1u8][..], &v.to_le_bytes()].concat()),
        None => hasher.update([0u8]),
    }
}

/// Keys whose first request is being processed in this process.
#[derive(Debug, Default, Clone)]
pub struct InFlight(Arc<Mutex<HashSet<String>>>);

/// Holds a key in flight; dropping it (answered, failed or cancelled) releases the key.
#[derive(Debug)]
pub struct InFlightGuard {
    set: InFlight,
    key: String,
}

impl InFlight {
    /// Mark `key` in flight, or 409 if it already is.
    pub fn enter(&self, key: &str) -> Result<InFlightGuard, ApiError> {
        let mut set = lock(&self.0);
        if !set.insert(key.to_string()) {
            return Err(ApiError::IdempotencyInFlight);
        }
        Ok(InFlightGuard { set: self.clone(), key: key.to_string() })
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        lock(&self.set.0).remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(value: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_bytes(value).unwrap());
        h
    }

    #[test]
    fn key_rules() {
        assert_eq!(key_from(&HeaderMap::new()).unwrap(), None);
        assert_eq!(key_from(&headers(b"abc-123")).unwrap(), Some("abc-123".into()));
        assert!(key_from(&headers(&[b'k'; 255])).unwrap().is_some());
        assert!(key_from(&headers(&[b'k'; 256])).is_err());
        assert!(key_from(&headers(b"")).is_err());
        assert!(key_from(&headers(b"has space")).is_err());
        assert!(key_from(&headers(b"caf\xc3\xa9")).is_err());
    }

    #[test]
    fn fingerprint_depends_on_endpoint_and_buys() {
        let buy = |q: i64| crate::domain::BuyRecord::test(1, 2, 3, q, None, 0).buy;
        let a = claim("k".into(), "/buy", &[buy(1)]);
        assert_eq!(a, claim("k".into(), "/buy", &[buy(1)]));
        assert_ne!(a.fingerprint, claim("k".into(), "/buy", &[buy(2)]).fingerprint);
        assert_ne!(a.fingerprint, claim("k".into(), "/buys", &[buy(1)]).fingerprint);
    }

    #[test]
    fn in_flight_is_exclusive_until_dropped() {
        let set = InFlight::default();
        let guard = set.enter("k").unwrap();
        assert!(matches!(set.enter("k"), Err(ApiError::IdempotencyInFlight)));
        drop(guard);
        assert!(set.enter("k").is_ok());
    }
}
