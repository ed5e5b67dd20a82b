//! `docs/reference.md` §3 on arbitrary header values: never panics; the result is the server time or lies in
//! [2000-01-01, now + 5 min].
#![no_main]

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use buy_tracker::request_time::{TIME_HEADERS, TimestampSource, parse_time_value, resolve};
use chrono::{TimeDelta, TimeZone, Utc};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_time_value(text);
    }
    let now = Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap();
    let mut headers = HeaderMap::new();
    for (i, part) in data.split(|b| *b == b'\n').enumerate() {
        if let Ok(value) = HeaderValue::from_bytes(part) {
            headers.append(HeaderName::from_static(TIME_HEADERS[i % TIME_HEADERS.len()]), value);
        }
    }
    let time = resolve(&headers, now);
    if time.source != TimestampSource::Server {
        assert!(time.at >= Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap());
        assert!(time.at <= now + TimeDelta::minutes(5));
    }
});
