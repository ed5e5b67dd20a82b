//! `docs/reference.md` §4 on arbitrary forwarding headers: never panics; an untrusted peer is always the client.
#![no_main]

use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use buy_tracker::client_ip::{TrustedProxies, client_ip, parse_ip_token};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 6] = ["forwarded", "x-forwarded-for", "x-real-ip", "cf-connecting-ip", "true-client-ip", "x-client-ip"];

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_ip_token(text);
    }
    let mut headers = HeaderMap::new();
    for (i, part) in data.split(|b| *b == b'\n').enumerate() {
        if let Ok(value) = HeaderValue::from_bytes(part) {
            headers.append(HeaderName::from_static(NAMES[i % NAMES.len()]), value);
        }
    }
    let trusted = TrustedProxies::default();
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    let _ = client_ip(loopback, &headers, &trusted);
    let outsider: IpAddr = "203.0.113.5".parse().unwrap();
    assert_eq!(client_ip(outsider, &headers, &trusted), outsider);
});
