//! Property tests for the parsers at the edge: for any input, no panic and the documented result.

use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use buy_tracker::client_ip::{TrustedProxies, client_ip, parse_ip_token};
use buy_tracker::domain::{Buy, MAX_QUANTITY};
use buy_tracker::request_time::{TIME_HEADERS, TimestampSource, parse_time_value, resolve};
use chrono::{TimeDelta, TimeZone, Utc};
use proptest::prelude::*;

fn header_map(pairs: &[(usize, Vec<u8>)], names: &[&'static str]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (i, value) in pairs {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(HeaderName::from_static(names[i % names.len()]), value);
        }
    }
    headers
}

/// Header-ish values: printable text with digits, separators and time-like fragments.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40),
        "[0-9tT:=.,;+\\-Z \\[\\]a-f]{0,40}".prop_map(String::into_bytes),
        (0i64..4_000_000_000_000_000_000).prop_map(|n| n.to_string().into_bytes()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever the headers, the time is the server's or lies in [2000-01-01, now + 5 min], and
    /// its source names the header it came from.
    #[test]
    fn request_time_is_bounded(pairs in proptest::collection::vec((0usize..8, value()), 0..6)) {
        let now = Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap();
        let headers = header_map(&pairs, &TIME_HEADERS);
        let time = resolve(&headers, now);
        match time.source {
            TimestampSource::Server => prop_assert_eq!(time.at, now),
            TimestampSource::Header(name) => {
                prop_assert!(TIME_HEADERS.contains(&name));
                prop_assert!(time.at >= Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap());
                prop_assert!(time.at <= now + TimeDelta::minutes(5));
            }
        }
    }

    /// Any string: parsing never panics, and a parsed time has whole microseconds.
    #[test]
    fn time_values_never_panic(s in "\\PC{0,60}") {
        if let Some(t) = parse_time_value(&s) {
            prop_assert_eq!(t.timestamp_subsec_nanos() % 1000, 0);
        }
    }

    /// An untrusted peer is always its own client; a trusted one yields the peer or an address
    /// that appears in the headers.
    #[test]
    fn client_ip_comes_from_peer_or_headers(
        peer in prop_oneof![Just("203.0.113.9"), Just("127.0.0.1"), Just("10.1.2.3"), Just("::1")],
        pairs in proptest::collection::vec((0usize..6, value()), 0..6),
    ) {
        let names = ["forwarded", "x-forwarded-for", "x-real-ip", "cf-connecting-ip", "true-client-ip", "x-client-ip"];
        let peer: IpAddr = peer.parse().unwrap();
        let headers = header_map(&pairs, &names);
        let trusted = TrustedProxies::default();
        let client = client_ip(peer, &headers, &trusted);
        if !trusted.contains(peer) {
            prop_assert_eq!(client, peer);
        } else if client != peer {
            let text: String = headers.values().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect::<Vec<_>>().join(" ");
            let appears = text
                .split([',', ';', ' ', '='])
                .any(|token| parse_ip_token(token) == Some(client));
            prop_assert!(appears, "{client} not in {text}");
        }
    }

    /// Any bytes as a POST /buy body: no panic; accepted exactly when it is a valid buy.
    #[test]
    fn buy_bodies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Buy::from_json(&bytes);
    }

    /// Well-formed objects: accepted exactly when every field is in range.
    #[test]
    fn buy_bounds_are_exact(
        user in any::<i64>(), promotion in any::<i64>(), product in any::<i64>(),
        quantity in -5i64..2_000_000, price in proptest::option::of(-5i64..i64::MAX),
    ) {
        let body = serde_json::json!({"user_id": user, "promotion_id": promotion, "product_id": product,
            "product_quantity": quantity, "unit_price_cents": price});
        let valid = (1..=MAX_QUANTITY).contains(&quantity) && price.is_none_or(|p| p >= 0);
        let parsed = Buy::from_json(body.to_string().as_bytes());
        prop_assert_eq!(parsed.is_ok(), valid);
        if let Ok(buy) = parsed {
            prop_assert_eq!((buy.user_id, buy.promotion_id, buy.product_id, buy.quantity.get()), (user, promotion, product, quantity));
        }
    }
}
