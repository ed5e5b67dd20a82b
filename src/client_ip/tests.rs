//! Tests of the client-IP rules: trusted ranges, every forwarding header, precedence and odd input.

use super::*;
use axum::http::{HeaderName, HeaderValue};
use std::net::Ipv6Addr;

const TRUSTED_PEER: &str = "10.0.0.2";
const UNTRUSTED_PEER: &str = "203.0.113.9";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Builds a header map, appending so repeated names become several lines.
fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
    }
    map
}

fn resolve(peer: &str, pairs: &[(&str, &str)]) -> IpAddr {
    client_ip(ip(peer), &headers(pairs), &TrustedProxies::default())
}

fn every_header() -> Vec<(&'static str, &'static str)> {
    vec![
        ("forwarded", "for=198.51.100.1"),
        ("x-forwarded-for", "198.51.100.2"),
        ("x-real-ip", "198.51.100.3"),
        ("cf-connecting-ip", "198.51.100.4"),
        ("true-client-ip", "198.51.100.5"),
        ("x-client-ip", "198.51.100.6"),
    ]
}

// --- --client-ip-header ---

fn resolve_only(peer: &str, header: &str, pairs: &[(&str, &str)]) -> IpAddr {
    let trusted = TrustedProxies::default().with_only_header(HeaderName::from_bytes(header.as_bytes()).unwrap());
    client_ip(ip(peer), &headers(pairs), &trusted)
}

#[test]
fn only_header_ignores_every_other_forwarding_header() {
    // A client's own Forwarded (read first by default) is ignored behind a proxy that sets
    // only X-Real-IP.
    assert_eq!(resolve_only(TRUSTED_PEER, "x-real-ip", &every_header()), ip("198.51.100.3"));
    assert_eq!(resolve(TRUSTED_PEER, &every_header()), ip("198.51.100.1"), "the default reads Forwarded first");
    // Without that header, the peer is the client: no other header is believed.
    let without: Vec<_> = every_header().into_iter().filter(|(name, _)| *name != "x-real-ip").collect();
    assert_eq!(resolve_only(TRUSTED_PEER, "x-real-ip", &without), ip(TRUSTED_PEER));
    assert_eq!(resolve_only(UNTRUSTED_PEER, "x-real-ip", &every_header()), ip(UNTRUSTED_PEER));
}

#[test]
fn only_header_lists_yield_the_rightmost_untrusted_address() {
    let pairs = [("x-forwarded-for", "192.0.2.66, 198.51.100.2, 10.0.0.7"), ("forwarded", "for=192.0.2.1")];
    assert_eq!(resolve_only(TRUSTED_PEER, "x-forwarded-for", &pairs), ip("198.51.100.2"));
    let pairs = [("forwarded", "for=192.0.2.66, for=\"[2001:db8::1]:4711\""), ("x-forwarded-for", "192.0.2.1")];
    assert_eq!(resolve_only(TRUSTED_PEER, "forwarded", &pairs), ip("2001:db8::1"));
    assert_eq!(resolve_only(TRUSTED_PEER, "x-client", &[("x-client", "garbage")]), ip(TRUSTED_PEER));
}

// --- TrustedProxies ---

#[test]
fn default_ranges_are_the_documented_ones() {
    let expected: Vec<IpNet> = DEFAULT_RANGES.iter().map(|s| s.parse().unwrap()).collect();
    assert_eq!(TrustedProxies::default_ranges(), expected);
    assert_eq!(expected.len(), 8);
}

#[test]
fn default_trusts_loopback_private_and_link_local() {
    let t = TrustedProxies::default();
    for s in [
        "127.0.0.1",
        "127.255.0.1",
        "::1",
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "fd00::1",
        "fc00::1",
        "169.254.1.1",
        "fe80::1",
    ] {
        assert!(t.contains(ip(s)), "{s} should be trusted");
    }
}

#[test]
fn default_does_not_trust_public_addresses() {
    let t = TrustedProxies::default();
    for s in ["8.8.8.8", "172.32.0.1", "172.15.255.255", "192.169.0.1", "11.0.0.1", "2001:db8::1", "::", "0.0.0.0"] {
        assert!(!t.contains(ip(s)), "{s} should not be trusted");
    }
}

#[test]
fn contains_checks_ipv4_mapped_as_ipv4() {
    let t = TrustedProxies::default();
    assert!(t.contains(ip("::ffff:127.0.0.1")));
    assert!(t.contains(ip("::ffff:10.0.0.1")));
    assert!(!t.contains(ip("::ffff:8.8.8.8")));
}

#[test]
fn contains_matches_configured_mapped_ipv6_range() {
    let t = TrustedProxies::new(vec![parse_cidr("::ffff:0:0/96").unwrap()]);
    assert!(t.contains(ip("::ffff:1.2.3.4")));
}

#[test]
fn empty_trusted_set_trusts_nobody() {
    let t = TrustedProxies::new(vec![]);
    assert!(!t.contains(ip("127.0.0.1")));
    let map = headers(&every_header());
    assert_eq!(client_ip(ip("127.0.0.1"), &map, &t), ip("127.0.0.1"));
}

#[test]
fn custom_trusted_set_replaces_defaults() {
    let t = TrustedProxies::new(vec![parse_cidr("203.0.113.0/24").unwrap()]);
    assert!(t.contains(ip("203.0.113.9")));
    assert!(!t.contains(ip("10.0.0.1")));
    let map = headers(&[("x-forwarded-for", "198.51.100.7")]);
    assert_eq!(client_ip(ip("203.0.113.9"), &map, &t), ip("198.51.100.7"));
    assert_eq!(client_ip(ip("10.0.0.1"), &map, &t), ip("10.0.0.1"));
}

// --- parse_cidr ---

#[test]
fn parse_cidr_ipv4_network() {
    assert_eq!(parse_cidr("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
}

#[test]
fn parse_cidr_ipv6_network() {
    assert_eq!(parse_cidr("2001:db8::/32").unwrap().to_string(), "2001:db8::/32");
}

#[test]
fn parse_cidr_bare_ipv4_is_host_route() {
    assert_eq!(parse_cidr("1.2.3.4").unwrap().to_string(), "1.2.3.4/32");
}

#[test]
fn parse_cidr_bare_ipv6_is_host_route() {
    assert_eq!(parse_cidr("::1").unwrap().to_string(), "::1/128");
}

#[test]
fn parse_cidr_trims_whitespace_and_host_bits() {
    assert_eq!(parse_cidr(" 10.1.2.3/8 ").unwrap().to_string(), "10.0.0.0/8");
}

#[test]
fn parse_cidr_rejects_prefix_too_long() {
    let err = parse_cidr("10.0.0.0/33").unwrap_err();
    assert!(err.contains("10.0.0.0/33"), "{err}");
}

#[test]
fn parse_cidr_rejects_garbage() {
    let err = parse_cidr("abc").unwrap_err();
    assert!(err.contains("abc"), "{err}");
}

#[test]
fn parse_cidr_rejects_empty() {
    let err = parse_cidr("").unwrap_err();
    assert!(err.contains("empty"), "{err}");
    assert!(parse_cidr("   ").is_err());
}

#[test]
fn parse_cidr_rejects_other_malformed_values() {
    for s in ["10.0.0.0/", "/8", "10.0.0.0/8/8", "::1/129", "1.2.3.4:80"] {
        assert!(parse_cidr(s).is_err(), "{s} should be rejected");
    }
}

// --- parse_ip_token ---

#[test]
fn token_bare_ipv4() {
    assert_eq!(parse_ip_token("192.0.2.1"), Some(ip("192.0.2.1")));
}

#[test]
fn token_ipv4_with_port() {
    assert_eq!(parse_ip_token("192.0.2.1:8080"), Some(ip("192.0.2.1")));
}

#[test]
fn token_bare_ipv6() {
    assert_eq!(parse_ip_token("2001:db8::1"), Some(ip("2001:db8::1")));
}

#[test]
fn token_bracketed_ipv6() {
    assert_eq!(parse_ip_token("[2001:db8::1]"), Some(ip("2001:db8::1")));
}

#[test]
fn token_bracketed_ipv6_with_port() {
    assert_eq!(parse_ip_token("[2001:db8::1]:4711"), Some(ip("2001:db8::1")));
}

#[test]
fn token_obfuscated_port_is_stripped() {
    assert_eq!(parse_ip_token("192.0.2.1:_p1"), Some(ip("192.0.2.1")));
    assert_eq!(parse_ip_token("[::1]:_x"), Some(ip("::1")));
}

#[test]
fn token_strips_whitespace_and_quotes() {
    assert_eq!(parse_ip_token("  192.0.2.1 "), Some(ip("192.0.2.1")));
    assert_eq!(parse_ip_token(" \"[2001:db8::1]:4711\" "), Some(ip("2001:db8::1")));
}

#[test]
fn token_ipv4_mapped_is_canonicalised() {
    assert_eq!(parse_ip_token("::ffff:192.0.2.1"), Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))));
    assert_eq!(parse_ip_token("[::ffff:192.0.2.1]:80"), Some(ip("192.0.2.1")));
}

#[test]
fn token_obfuscated_identifiers_are_none() {
    assert_eq!(parse_ip_token("unknown"), None);
    assert_eq!(parse_ip_token("_hidden"), None);
    assert_eq!(parse_ip_token("\"_hidden\""), None);
}

#[test]
fn token_garbage_is_none() {
    for s in [
        "",
        " ",
        "\"\"",
        "abc",
        "1.2.3",
        "1.2.3.4.5",
        "256.1.1.1",
        "1.2.3.4:",
        "1.2.3.4:99999",
        "1.2.3.4:abc",
        "1.2.3.4:_",
        "[::1",
        "[::1]x",
        "[::1]:",
        "[::1]:port",
        "[]",
        "::1]",
        "\"1.2.3.4",
        "1.2.3.4 5.6.7.8",
        "fe80::1%eth0",
    ] {
        assert_eq!(parse_ip_token(s), None, "{s:?} should not parse");
    }
}

// --- client_ip: trust boundary ---

#[test]
fn untrusted_peer_ignores_every_header() {
    assert_eq!(resolve(UNTRUSTED_PEER, &every_header()), ip(UNTRUSTED_PEER));
}

#[test]
fn untrusted_ipv6_peer_ignores_every_header() {
    assert_eq!(resolve("2001:db8::9", &every_header()), ip("2001:db8::9"));
}

#[test]
fn trusted_peer_without_headers_is_the_client() {
    assert_eq!(resolve(TRUSTED_PEER, &[]), ip(TRUSTED_PEER));
}

#[test]
fn trusted_ipv6_peer_believes_headers() {
    let pairs = [("x-forwarded-for", "198.51.100.2")];
    assert_eq!(resolve("::1", &pairs), ip("198.51.100.2"));
    assert_eq!(resolve("fd12::3", &pairs), ip("198.51.100.2"));
}

#[test]
fn ipv4_mapped_loopback_peer_is_trusted() {
    let pairs = [("x-forwarded-for", "198.51.100.2")];
    assert_eq!(resolve("::ffff:127.0.0.1", &pairs), ip("198.51.100.2"));
}

#[test]
fn ipv4_mapped_untrusted_peer_is_returned_as_ipv4() {
    assert_eq!(resolve("::ffff:203.0.113.9", &every_header()), ip("203.0.113.9"));
}

// --- client_ip: Forwarded ---

#[test]
fn forwarded_takes_precedence_over_everything() {
    assert_eq!(resolve(TRUSTED_PEER, &every_header()), ip("198.51.100.1"));
}

#[test]
fn forwarded_rightmost_untrusted_across_elements() {
    let pairs = [("forwarded", "for=198.51.100.1, for=198.51.100.2, for=10.0.0.5")];
    assert_eq!(resolve(TRUSTED_PEER, &pairs), ip("198.51.100.2"));
}

#[test]
fn forwarded_several_lines_are_hops_in_order() {
    let pairs =
        [("forwarded", "for=198.51.100.1"), ("forwarded", "for=198.51.100.2"), ("forwarded", "for=192.168.1.1")];
    assert_eq!(resolve(TRUSTED_PEER, &pairs), ip("198.51.100.2"));
}

#[test]
fn forwarded_all_trusted_takes_leftmost() {
    let pairs = [("forwarded", "for=unknown, for=10.0.0.7, for=127.0.0.1")];
    assert_eq!(resolve(TRUSTED_PEER, &pairs), ip("10.0.0.7"));
}

#[test]
fn forwarded_parameters_separated_by_semicolon() {
    let pairs = [("forwarded", "by=10.0.0.1;for=198.51.100.1;proto=https;host=example.com")];
    assert_eq!(resolve(TRUSTED_PEER, &pairs), ip("198.51.100.1"));
}

#[test]
fn forwarded_by_is_not_a_hop() {
    let pairs = [("forwarded", "for=198.51.100.1;by=198.51.100.99")];
    assert_eq!(resolve(TRUSTED_PEER, &pairs), ip("198.51.100.1"));
}

#[test]
fn forwarded_parameter_name_is_case_insensitive() {
    let pairs = [("forwarded", "For=198.51.100.1")];
    assert_eq!(resolve(TRUSTED_PEER, &pairs), ip("198.51.100.1"));
    let pairs = [("forwarded", "FOR = 198.51.100.2")];
    assert_eq!(resolve(TRUSTED_PEER, &pairs), ip("198.51.100.2"));
}

#[test]
fn forwarded_quoted_ipv6_with_port() {
    let pairs = [("forwarded", "for=\"[2001:db8::1]:4711\"")];
    assert_eq!(resolve(TRUSTED_PEER, &pairs), ip("2001:db8::1"));
}

#[test]
fn forwarded_quoted_value_may_contain_separators() {
    // The `;` and `,` inside quotes belong to other parameters' values.
    let pairs = [("forwarded", "host=\"a;b,for=1.1.1.1\";for=\"198.51.100.1:80\"")];
    assert_eq!(resolve(TRUSTED_PEER, &pairs), ip("198.51.100.1"));
}

#[test]
fn forwarded_quoted_value_with_escapes() {
    let pairs = [("forwarded", "for=\"198.51.100\\.1\"")];
    assert_eq!(resolve(TRUSTED_PEER, &pairs), ip("198.51.100.1"));
}

#[test]
fn forwarded_obfuscated_identifiers_are_skipped() {
    let pairs = [("forwarded", "for=198.51.100.1, for=_hidden, for=unknown, for=\"_secret\"")];
    assert_eq!(resolve(TRUSTED_PEER, &pairs), ip("198.51.100.1"));
}

#[test]
fn forwarded_without_valid_address_falls_through_to_xff() {
    let pairs = [("forwarded", "for=unknown;proto=https, by=10.0.0.1"), ("x-forwarded-for", "198.51.100.2")];
    assert_eq!(resolve(TRUSTED_PEER, &pairs), ip("198.51.100.2"));
}

#[test]
fn forwarded_malformed_quoting_is_ignored() {
    let pairs = [("forwarded", "for=\"198.51.100.1"), ("x-forwarded-for", "198.51.100.2")];
    assert_eq!(resolve(TRUSTED_PEER, &pairs), ip("198.51.100.2"));
    let pairs = [("forwarded", "for=\"198.51.100.1\"junk"), ("x-forwarded-for", "198.51.100.3")];
    assert_eq!(resolve(TRUSTED_PEER, &pairs), ip("198.51.100.3"));
}

#[test]
fn forwarded_ipv4_mapped_value_is_canonicalised() {
    let pairs = [("forwarded", "for=\"[::ffff:198.51.100.1]\"")];
    assert_eq!(resolve(TRUSTED_PEER, &pairs), ip("198.51.100.1"));
}

#[test]
fn forwarded_parses_for_pairs_in_order() {
    assert_eq!(forwarded_for_values("for=a;by=b, FOR=\"c,d\" ;x=y,for=e"), vec!["a", "c,d", "e"]);
}

// --- client_ip: X-Forwarded-For ---

#[test]
fn xff_single_address() {
    let pairs = [("x-forwarded-for", "198.51.100.2")];
    assert_eq!(resolve(TRUSTED_PEER, &pairs), ip("198.51.100.2"));
}

#[test]
fn xff_rightmost_untrusted_wins() {
    // The leftmost entry is whatever the client claimed; it is not believed.
    let pairs = [("x-forwarded-for", "1.1.1.1, 198.51.100.2, 10.0.0.3, 192.168.0.4")];
    assert_eq!(resolve(TRUSTED_PEER, &pairs), ip("198.51.100.2"));
}

#[test]
fn xff_all_trusted_takes_leftmost_valid() {
    let pairs = [("x-forwarded-for", "garbage, 10.0.0.3, 127.0.0.1")];
    assert_eq!(resolve(TRUSTED_PEER, &pairs), ip("10.0.0.3"));
}

#[test]
fn xff_several_lines_are_concatenated() {
    let pairs = [
        ("x-forwarded-for", "198.51.100.1, 198.51.100.2"),
        ("x-forwarded-for", "198.51.100.3"),
        ("x-forwarded-for", "10.0.0.9"),
    ];
    assert_eq!(resolve(TRUSTED_PEER, &pairs), ip("198.51.100.3"));
}

#[test]
fn xff_garbage_entries_are_skipped() {
    let pairs = [("x-forwarded-for", "198.51.100.2, unknown, , _x, 10.0.0.1")];
    assert_eq!(resolve(TRUSTED_PEER, &pairs), ip("198.51.100.2"));
}

#[test]
fn xff_ports_and_brackets_are_stripped() {
    let pairs = [("x-forwarded-for", "198.51.100.2:5555")];
    assert_eq!(resolve(TRUSTED_PEER, &pairs), ip("198.51.100.2"));
    let pairs = [("x-forwarded-for", "[2001:db8::7]:443, 10.0.0.1")];
    assert_eq!(resolve(TRUSTED_PEER, &pairs), ip("2001:db8::7"));
}

#[test]
fn xff_beats_single_address_headers() {
    let pairs = [("x-real-ip", "198.51.100.3"), ("x-forwarded-for", "198.51.100.2")];
    assert_eq!(resolve(TRUSTED_PEER, &pairs), ip("198.51.100.2"));
}

#[test]
fn xff_without_valid_address_falls_through() {
    let pairs = [("x-forwarded-for", "unknown, nonsense"), ("x-real-ip", "198.51.100.3")];
    assert_eq!(resolve(TRUSTED_PEER, &pairs), ip("198.51.100.3"));
}

// --- client_ip: single-address headers ---

#[test]
fn single_headers_priority_order() {
    let all = [
        ("x-client-ip", "198.51.100.6"),
        ("true-client-ip", "198.51.100.5"),
        ("cf-connecting-ip", "198.51.100.4"),
        ("x-real-ip", "198.51.100.3"),
    ];
    // Dropping the winner each time must reveal the next header in order.
    for skip in 0..all.len() {
        let pairs = &all[..all.len() - skip];
        let expected = pairs.last().unwrap().1;
        assert_eq!(resolve(TRUSTED_PEER, pairs), ip(expected));
    }
}

#[test]
fn x_real_ip_used() {
    let pairs = [("x-real-ip", "198.51.100.3")];
    assert_eq!(resolve(TRUSTED_PEER, &pairs), ip("198.51.100.3"));
}

#[test]
fn cf_connecting_ip_used() {
    let pairs = [("cf-connecting-ip", "2001:db8::4")];
    assert_eq!(resolve(TRUSTED_PEER, &pairs), ip("2001:db8::4"));
}

#[test]
fn true_client_ip_used() {
    let pairs = [("true-client-ip", "198.51.100.5")];
    assert_eq!(resolve(TRUSTED_PEER, &pairs), ip("198.51.100.5"));
}

#[test]
fn x_client_ip_used() {
    let pairs = [("x-client-ip", "198.51.100.6")];
    assert_eq!(resolve(TRUSTED_PEER, &pairs), ip("198.51.100.6"));
}

#[test]
fn invalid_single_header_falls_through_to_next() {
    let pairs = [
        ("x-real-ip", "unknown"),
        ("cf-connecting-ip", "1.2.3.4, 5.6.7.8"),
        ("true-client-ip", "198.51.100.5"),
        ("x-client-ip", "198.51.100.6"),
    ];
    assert_eq!(resolve(TRUSTED_PEER, &pairs), ip("198.51.100.5"));
}

#[test]
fn single_header_strips_port() {
    let pairs = [("x-real-ip", "[2001:db8::3]:1234")];
    assert_eq!(resolve(TRUSTED_PEER, &pairs), ip("2001:db8::3"));
}

#[test]
fn single_header_may_name_a_trusted_address() {
    // Only hop lists skip trusted entries; a single address is taken as is.
    let pairs = [("x-real-ip", "192.168.5.5")];
    assert_eq!(resolve(TRUSTED_PEER, &pairs), ip("192.168.5.5"));
}

#[test]
fn single_header_repeated_uses_last_line() {
    let pairs = [("x-real-ip", "1.1.1.1"), ("x-real-ip", "198.51.100.3")];
    assert_eq!(resolve(TRUSTED_PEER, &pairs), ip("198.51.100.3"));
}

#[test]
fn nothing_usable_returns_peer() {
    let pairs = [
        ("forwarded", "for=unknown"),
        ("x-forwarded-for", "garbage"),
        ("x-real-ip", ""),
        ("cf-connecting-ip", "_hidden"),
        ("true-client-ip", "nope"),
        ("x-client-ip", "1.2.3"),
    ];
    assert_eq!(resolve("::1", &pairs), ip("::1"));
}

#[test]
fn ipv4_mapped_trusted_peer_fallback_is_ipv4() {
    assert_eq!(
        client_ip(
            IpAddr::V6(Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped()),
            &HeaderMap::new(),
            &TrustedProxies::default()
        ),
        ip("127.0.0.1")
    );
    assert_eq!(resolve("::1", &[]), IpAddr::V6(Ipv6Addr::LOCALHOST));
}

// --- robustness ---

#[test]
fn non_utf8_values_are_ignored() {
    let mut map = HeaderMap::new();
    let bad = HeaderValue::from_bytes(b"198.51.100.1\xff").unwrap();
    for name in ["forwarded", "x-forwarded-for", "x-real-ip", "cf-connecting-ip"] {
        map.append(HeaderName::from_static(name), bad.clone());
    }
    map.append(HeaderName::from_static("true-client-ip"), HeaderValue::from_static("198.51.100.5"));
    let t = TrustedProxies::default();
    assert_eq!(client_ip(ip(TRUSTED_PEER), &map, &t), ip("198.51.100.5"));
}

#[test]
fn non_utf8_xff_line_is_skipped_but_others_used() {
    let mut map = HeaderMap::new();
    map.append("x-forwarded-for", HeaderValue::from_static("198.51.100.1"));
    map.append("x-forwarded-for", HeaderValue::from_bytes(b"\xc3\x28, 198.51.100.9").unwrap());
    let t = TrustedProxies::default();
    assert_eq!(client_ip(ip(TRUSTED_PEER), &map, &t), ip("198.51.100.1"));
}

#[test]
fn odd_inputs_never_panic() {
    let odd = [
        "",
        " ",
        ",",
        ",,,",
        ";",
        "=",
        "==",
        "\"",
        "\"\"",
        "\\",
        "\"\\",
        "\"\\\"",
        "for=",
        "for=\"",
        "for=\"\\",
        "for=\"[",
        "for=[",
        "for=]",
        "for=[]:",
        "for=[::1]:",
        "for=[::1",
        "[",
        "]",
        "[]",
        "[[::1]]",
        ":",
        "::",
        ":::",
        "1.2.3.4:",
        ":80",
        "[::1]:99999999999999999999",
        "1.2.3.4:99999999999999999999",
        "for=é;for=\"ü\"",
        "ünïcödé, 日本, 🙂",
        "for=\"🙂\", for=🙂:🙂",
        "\t1.2.3.4\t",
        "for=1.2.3.4;for=5.6.7.8;for=9.9.9.9",
        "unknown, unknown, unknown",
        "_, _hidden, _:_",
        "%00, %ff",
        "0x7f.1, 0177.0.0.1, 2130706433",
    ];
    let t = TrustedProxies::default();
    let long = "1.2.3.4, ".repeat(2000) + &"\"".repeat(1000);
    let peers = [ip(TRUSTED_PEER), ip(UNTRUSTED_PEER), ip("::1")];
    for s in odd.iter().copied().chain(std::iter::once(long.as_str())) {
        let _ = parse_ip_token(s);
        let _ = parse_cidr(s);
        let _ = forwarded_for_values(s);
        let Ok(value) = HeaderValue::from_str(s) else {
            // Control characters cannot be header values; still fed to the parsers above.
            continue;
        };
        for name in ["forwarded", "x-forwarded-for", "x-real-ip", "x-client-ip"] {
            let mut map = HeaderMap::new();
            map.append(HeaderName::from_static(name), value.clone());
            map.append(HeaderName::from_static(name), value.clone());
            for peer in peers {
                let got = client_ip(peer, &map, &t);
                // Whatever was chosen, it must be canonical.
                assert_eq!(got, got.to_canonical());
            }
        }
    }
}

#[test]
fn arbitrary_bytes_never_panic() {
    let t = TrustedProxies::default();
    // Every byte value in several positions, including invalid UTF-8.
    for b in 0u8..=255 {
        for template in [&b"for=X"[..], b"X", b"1.2.3.X", b"[::X]:1", b"\"X"] {
            let bytes: Vec<u8> = template.iter().map(|&c| if c == b'X' { b } else { c }).collect();
            if let Ok(s) = std::str::from_utf8(&bytes) {
                let _ = parse_ip_token(s);
                let _ = parse_cidr(s);
            }
            let Ok(value) = HeaderValue::from_bytes(&bytes) else {
                continue;
            };
            let mut map = HeaderMap::new();
            for name in ["forwarded", "x-forwarded-for", "cf-connecting-ip"] {
                map.append(HeaderName::from_static(name), value.clone());
            }
            let _ = client_ip(ip(TRUSTED_PEER), &map, &t);
        }
    }
}
