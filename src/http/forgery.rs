//! Writes that a browser page on another site cannot forge (see `docs/reference.md`, "Writes that
//! cannot be forged").
//!
//! A page on any site can make its visitor's browser POST to this service. Two checks stop that:
//!
//! - **Content type.** A cross-site `fetch` or form may send `text/plain`, form or multipart
//!   bodies without a CORS preflight; only `application/json` (or a `…+json` type) needs one. So
//!   writes take JSON only: a body declared as anything else is refused with 415 before it is
//!   read. A request without `Content-Type` is read as JSON (servers and curl often omit it, and
//!   browsers always send one). View writes also take `text/plain`, which is what
//!   `navigator.sendBeacon` sends; a forged view is a view, and views carry no money.
//! - **Origin.** Browsers send `Origin` on every cross-site POST; servers, curl and the
//!   original's clients send none. A write whose `Origin` is not allowed by `--cors-origin` is
//!   refused with 403, whatever its content type.
//!
//! Both are checked by the write handlers before the body is read: a middleware layer would cost
//! every write a boxed service and a boxed future. Where write keys are set, the key check (a
//! layer) runs first, so a forged request without a key gets 401 instead.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, header};

use crate::http::error::ApiError;

/// The origins `--cors-origin` allows, shared by every write.
#[derive(Debug, Clone, Default)]
pub struct AllowedOrigins(Arc<Origins>);

#[derive(Debug, Default)]
struct Origins {
    any: bool,
    listed: Vec<String>,
}

impl AllowedOrigins {
    /// The origins configured with `--cors-origin` (`*` allows any).
    pub fn new(configured: &[String]) -> Self {
        let any = configured.iter().any(|o| o.trim() == "*");
        let listed = configured.iter().map(|o| normalise(o)).filter(|o| !o.is_empty() && o != "*").collect();
        AllowedOrigins(Arc::new(Origins { any, listed }))
    }

    /// Whether none is configured (the API is then same-origin only).
    pub fn is_empty(&self) -> bool {
        !self.0.any && self.0.listed.is_empty()
    }

    /// Whether a request carrying `origin` may proceed (and be answered with CORS headers).
    pub fn allows(&self, origin: &HeaderValue) -> bool {
        self.0.any || origin.to_str().is_ok_and(|o| self.0.listed.contains(&normalise(o)))
    }
}

/// Origins compare without case and without a trailing slash (`https://Shop.example/` is
/// `https://shop.example`); a browser sends neither, but a configured value may carry them.
fn normalise(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// Which bodies a write route takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bodies {
    /// `application/json` or `…+json` only.
    Json,
    /// JSON, or `text/plain` holding JSON (what `navigator.sendBeacon` sends).
    JsonOrText,
}

impl Bodies {
    /// Whether a body declared as `content_type` is taken; absent means JSON.
    fn accepts(self, content_type: Option<&HeaderValue>) -> bool {
        let Some(value) = content_type else { return true };
        let Ok(value) = value.to_str() else { return false };
        let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        let json = essence == "application/json"
            || essence.split_once('/').is_some_and(|(kind, sub)| !kind.is_empty() && sub.ends_with("+json"));
        json || (self == Bodies::JsonOrText && essence == "text/plain")
    }

    fn refusal(self) -> ApiError {
        ApiError::UnsupportedMediaType(match self {
            Bodies::Json => "This endpoint takes JSON only: send Content-Type: application/json",
            Bodies::JsonOrText => "This endpoint takes JSON, sent as application/json or text/plain",
        })
    }
}

/// Refuse a write with a disallowed `Origin` (403) or a body that is not one of `bodies` (415).
/// Write handlers call this first, before the body is read.
pub fn check(origins: &AllowedOrigins, bodies: Bodies, headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(origin) = headers.get(header::ORIGIN)
        && !origins.allows(origin)
    {
        return Err(ApiError::ForbiddenOrigin);
    }
    if !bodies.accepts(headers.get(header::CONTENT_TYPE)) {
        return Err(bodies.refusal());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (k.clone(), HeaderValue::from_str(v).unwrap())).collect()
    }

    fn guard(origins: &[&str], bodies: Bodies) -> (AllowedOrigins, Bodies) {
        let origins: Vec<String> = origins.iter().map(|o| o.to_string()).collect();
        (AllowedOrigins::new(&origins), bodies)
    }

    fn status(guard: &(AllowedOrigins, Bodies), pairs: &[(header::HeaderName, &str)]) -> u16 {
        use axum::response::IntoResponse;
        match check(&guard.0, guard.1, &headers(pairs)) {
            Ok(()) => 200,
            Err(e) => e.into_response().status().as_u16(),
        }
    }

    #[test]
    fn json_writes_take_json_only() {
        let g = guard(&[], Bodies::Json);
        for ok in ["application/json", "Application/JSON; charset=utf-8", "application/vnd.shop+json"] {
            assert_eq!(status(&g, &[(header::CONTENT_TYPE, ok)]), 200, "{ok}");
        }
        assert_eq!(status(&g, &[]), 200, "no Content-Type is read as JSON");
        for refused in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "json"] {
            assert_eq!(status(&g, &[(header::CONTENT_TYPE, refused)]), 415, "{refused}");
        }
    }

    #[test]
    fn view_writes_also_take_text_plain() {
        let g = guard(&[], Bodies::JsonOrText);
        assert_eq!(status(&g, &[(header::CONTENT_TYPE, "text/plain;charset=UTF-8")]), 200);
        assert_eq!(status(&g, &[(header::CONTENT_TYPE, "application/json")]), 200);
        assert_eq!(status(&g, &[(header::CONTENT_TYPE, "text/html")]), 415);
    }

    #[test]
    fn origins_must_be_allowed() {
        let none = guard(&[], Bodies::Json);
        assert_eq!(status(&none, &[(header::ORIGIN, "https://evil.example")]), 403);
        assert_eq!(status(&none, &[(header::ORIGIN, "null")]), 403);
        let shop = guard(&["https://Shop.example/"], Bodies::Json);
        assert_eq!(status(&shop, &[(header::ORIGIN, "https://shop.example")]), 200);
        assert_eq!(status(&shop, &[(header::ORIGIN, "https://shop.example.evil")]), 403);
        let any = guard(&["*"], Bodies::Json);
        assert_eq!(status(&any, &[(header::ORIGIN, "https://anywhere.example")]), 200);
        // The origin is checked first: a forged text/plain POST from a page is 403, not 415.
        assert_eq!(
            status(&none, &[(header::ORIGIN, "https://evil.example"), (header::CONTENT_TYPE, "text/plain")]),
            403
        );
    }
}
