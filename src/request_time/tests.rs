//! Tests of the request-time rules: every header, format, unit threshold, bound and precedence.

use super::*;
use axum::http::{HeaderName, HeaderValue};

/// Build a UTC time from its parts plus microseconds.
fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32, micro: u32) -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(y, mo, d).unwrap().and_hms_micro_opt(h, mi, s, micro).unwrap().and_utc()
}

fn micros(n: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(n).unwrap()
}

/// A fixed server clock so every bound is exact.
fn now() -> DateTime<Utc> {
    utc(2025, 6, 27, 20, 14, 12, 0)
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
    }
    map
}

fn from_header(name: &'static str, at: DateTime<Utc>) -> RequestTime {
    RequestTime { at, source: TimestampSource::Header(name) }
}

fn server(at: DateTime<Utc>) -> RequestTime {
    RequestTime { at, source: TimestampSource::Server }
}

const VALID: &str = "2025-06-27T20:00:00Z";

fn valid() -> DateTime<Utc> {
    utc(2025, 6, 27, 20, 0, 0, 0)
}

// ---- TIME_HEADERS and TimestampSource ----

#[test]
fn header_list_is_in_spec_order() {
    assert_eq!(
        TIME_HEADERS,
        [
            "x-timestamp",
            "x-client-time",
            "x-request-time",
            "timestamp",
            "x-request-start",
            "x-queue-start",
            "x-request-received",
            "x-forwarded-start",
        ]
    );
}

#[test]
fn header_names_are_lowercase_and_valid() {
    for name in TIME_HEADERS {
        assert_eq!(name, name.to_ascii_lowercase());
        assert!(HeaderName::from_bytes(name.as_bytes()).is_ok());
    }
}

#[test]
fn source_as_str_server() {
    assert_eq!(TimestampSource::Server.as_str(), "server");
}

#[test]
fn source_as_str_header() {
    assert_eq!(TimestampSource::Header("x-queue-start").as_str(), "x-queue-start");
}

#[test]
fn source_round_trips_through_storage() {
    let all = TIME_HEADERS.iter().map(|&n| TimestampSource::Header(n)).chain([TimestampSource::Server]);
    for source in all {
        assert_eq!(TimestampSource::from_stored(source.as_str()), Some(source));
    }
}

#[test]
fn source_from_stored_rejects_unknown() {
    for s in ["", "Server", "X-Timestamp", "x-timestamp ", "date", "header"] {
        assert_eq!(TimestampSource::from_stored(s), None, "{s:?}");
    }
}

#[test]
fn source_from_stored_returns_static_name() {
    let owned = String::from("timestamp");
    let source = TimestampSource::from_stored(&owned).unwrap();
    drop(owned);
    assert_eq!(source, TimestampSource::Header("timestamp"));
}

// ---- resolve: headers and priority ----

#[test]
fn no_headers_uses_server_time() {
    assert_eq!(resolve(&HeaderMap::new(), now()), server(now()));
}

#[test]
fn server_time_is_returned_unchanged() {
    // Sub-microsecond precision of the server clock is the caller's call.
    let now = now() + TimeDelta::nanoseconds(789);
    assert_eq!(resolve(&HeaderMap::new(), now), server(now));
}

#[test]
fn unrelated_headers_are_ignored() {
    let h = headers(&[("date", VALID), ("x-time", VALID), ("last-modified", VALID)]);
    assert_eq!(resolve(&h, now()), server(now()));
}

#[test]
fn every_header_is_consulted_alone() {
    for name in TIME_HEADERS {
        let h = headers(&[(name, VALID)]);
        assert_eq!(resolve(&h, now()), from_header(name, valid()), "{name}");
    }
}

#[test]
fn header_names_match_case_insensitively() {
    let h = headers(&[("X-Request-Start", VALID)]);
    assert_eq!(resolve(&h, now()), from_header("x-request-start", valid()));
}

#[test]
fn higher_priority_header_wins() {
    // Give every header a distinct valid time; each must beat all below it.
    for (i, &winner) in TIME_HEADERS.iter().enumerate() {
        let mut h = HeaderMap::new();
        for (j, &name) in TIME_HEADERS.iter().enumerate().skip(i) {
            let t = valid() + TimeDelta::seconds(j as i64);
            h.insert(name, HeaderValue::from_str(&t.to_rfc3339()).unwrap());
        }
        let expected = valid() + TimeDelta::seconds(i as i64);
        assert_eq!(resolve(&h, now()), from_header(winner, expected));
    }
}

#[test]
fn priority_does_not_depend_on_insertion_order() {
    let h = headers(&[("x-forwarded-start", "2025-06-27T19:00:00Z"), ("x-timestamp", VALID)]);
    assert_eq!(resolve(&h, now()), from_header("x-timestamp", valid()));
}

#[test]
fn invalid_higher_priority_header_falls_through() {
    let h = headers(&[("x-timestamp", "garbage"), ("x-client-time", VALID)]);
    assert_eq!(resolve(&h, now()), from_header("x-client-time", valid()));
}

#[test]
fn out_of_range_higher_priority_header_falls_through() {
    let h = headers(&[
        ("x-timestamp", "1999-12-31T23:59:59Z"),
        ("x-client-time", "2030-01-01T00:00:00Z"),
        ("timestamp", VALID),
    ]);
    assert_eq!(resolve(&h, now()), from_header("timestamp", valid()));
}

#[test]
fn fall_through_reaches_last_header() {
    let mut h = HeaderMap::new();
    for name in &TIME_HEADERS[..7] {
        h.insert(*name, HeaderValue::from_static("nope"));
    }
    h.insert("x-forwarded-start", HeaderValue::from_static(VALID));
    assert_eq!(resolve(&h, now()), from_header("x-forwarded-start", valid()));
}

#[test]
fn all_headers_invalid_uses_server_time() {
    let mut h = HeaderMap::new();
    for name in TIME_HEADERS {
        h.insert(name, HeaderValue::from_static("12345"));
    }
    assert_eq!(resolve(&h, now()), server(now()));
}

#[test]
fn repeated_header_uses_first_valid_value() {
    let h = headers(&[
        ("x-timestamp", "bad"),
        ("x-timestamp", VALID),
        ("x-timestamp", "2025-06-27T19:00:00Z"),
        ("x-client-time", "2025-06-27T18:00:00Z"),
    ]);
    assert_eq!(resolve(&h, now()), from_header("x-timestamp", valid()));
}

#[test]
fn non_utf8_header_value_is_skipped() {
    let mut h = HeaderMap::new();
    h.insert("x-timestamp", HeaderValue::from_bytes(b"2025-06-27T20:00:00Z\xff").unwrap());
    h.insert("x-client-time", HeaderValue::from_static(VALID));
    assert_eq!(resolve(&h, now()), from_header("x-client-time", valid()));
}

#[test]
fn non_utf8_only_header_uses_server_time() {
    let mut h = HeaderMap::new();
    h.insert("x-timestamp", HeaderValue::from_bytes(b"\xc3\x28").unwrap());
    assert_eq!(resolve(&h, now()), server(now()));
}

#[test]
fn header_value_with_surrounding_whitespace() {
    // HeaderValue::from_str keeps inner tabs/spaces; build it from bytes.
    let mut h = HeaderMap::new();
    h.insert("x-timestamp", HeaderValue::from_bytes(b" \t1750000000 \t").unwrap());
    assert_eq!(resolve(&h, now()), from_header("x-timestamp", micros(1_750_000_000_000_000)));
}

#[test]
fn empty_header_value_falls_through() {
    let h = headers(&[("x-timestamp", ""), ("x-client-time", VALID)]);
    assert_eq!(resolve(&h, now()), from_header("x-client-time", valid()));
}

#[test]
fn resolved_header_time_is_truncated_to_micros() {
    let h = headers(&[("x-timestamp", "2025-06-27T20:00:00.123456789Z")]);
    assert_eq!(resolve(&h, now()), from_header("x-timestamp", utc(2025, 6, 27, 20, 0, 0, 123_456)));
}

// ---- resolve: bounds ----

#[test]
fn exactly_2000_is_accepted() {
    let h = headers(&[("x-timestamp", "2000-01-01T00:00:00Z")]);
    assert_eq!(resolve(&h, now()), from_header("x-timestamp", utc(2000, 1, 1, 0, 0, 0, 0)));
}

#[test]
fn one_micro_before_2000_is_skipped() {
    let h = headers(&[("x-timestamp", "1999-12-31T23:59:59.999999Z")]);
    assert_eq!(resolve(&h, now()), server(now()));
}

#[test]
fn before_2000_via_offset_is_skipped() {
    // 2000-01-01T01:00+02:00 is 1999-12-31T23:00Z.
    let h = headers(&[("x-timestamp", "2000-01-01T01:00:00+02:00")]);
    assert_eq!(resolve(&h, now()), server(now()));
}

#[test]
fn small_epoch_seconds_are_skipped() {
    // Seconds by magnitude, but 1970: not a plausible request time.
    let h = headers(&[("x-timestamp", "12345")]);
    assert_eq!(resolve(&h, now()), server(now()));
}

#[test]
fn epoch_zero_is_skipped() {
    let h = headers(&[("x-timestamp", "0")]);
    assert_eq!(resolve(&h, now()), server(now()));
}

#[test]
fn exactly_now_is_accepted() {
    let h = headers(&[("x-timestamp", "2025-06-27T20:14:12Z")]);
    assert_eq!(resolve(&h, now()), from_header("x-timestamp", now()));
}

#[test]
fn exactly_now_plus_five_minutes_is_accepted() {
    let h = headers(&[("x-timestamp", "2025-06-27T20:19:12Z")]);
    assert_eq!(resolve(&h, now()), from_header("x-timestamp", now() + TimeDelta::minutes(5)));
}

#[test]
fn one_micro_past_now_plus_five_minutes_is_skipped() {
    let h = headers(&[("x-timestamp", "2025-06-27T20:19:12.000001Z")]);
    assert_eq!(resolve(&h, now()), server(now()));
}

#[test]
fn future_beyond_skew_falls_through_to_next_header() {
    let h = headers(&[("x-timestamp", "2025-06-27T20:19:13Z"), ("x-client-time", VALID)]);
    assert_eq!(resolve(&h, now()), from_header("x-client-time", valid()));
}

#[test]
fn upper_bound_follows_the_given_now() {
    let h = headers(&[("x-timestamp", VALID)]);
    let early_now = valid() - TimeDelta::minutes(5) - TimeDelta::microseconds(1);
    assert_eq!(resolve(&h, early_now), server(early_now));
    let edge_now = valid() - TimeDelta::minutes(5);
    assert_eq!(resolve(&h, edge_now), from_header("x-timestamp", valid()));
}

#[test]
fn now_at_max_time_does_not_overflow() {
    let h = headers(&[("x-timestamp", VALID)]);
    let max = DateTime::<Utc>::MAX_UTC;
    assert_eq!(resolve(&h, max), from_header("x-timestamp", valid()));
}

#[test]
fn now_before_2000_rejects_everything() {
    let now = utc(1990, 1, 1, 0, 0, 0, 0);
    let h = headers(&[("x-timestamp", "1990-01-01T00:00:00Z")]);
    assert_eq!(resolve(&h, now), server(now));
}

#[test]
fn epoch_millis_in_header_resolve() {
    // Heroku-style x-request-start in milliseconds.
    let h = headers(&[("x-request-start", "1751055252123")]);
    assert_eq!(resolve(&h, now()), from_header("x-request-start", micros(1_751_055_252_123_000)));
}

#[test]
fn nginx_t_prefix_in_header_resolves() {
    let h = headers(&[("x-request-start", "t=1751055252.123")]);
    assert_eq!(resolve(&h, now()), from_header("x-request-start", micros(1_751_055_252_123_000)));
}

// ---- parse_time_value: RFC 3339 / ISO 8601 ----

#[test]
fn rfc3339_z() {
    assert_eq!(parse_time_value("2025-06-27T20:14:12Z"), Some(utc(2025, 6, 27, 20, 14, 12, 0)));
}

#[test]
fn rfc3339_lowercase_t_and_z() {
    assert_eq!(parse_time_value("2025-06-27t20:14:12z"), Some(utc(2025, 6, 27, 20, 14, 12, 0)));
}

#[test]
fn rfc3339_positive_offset_converts_to_utc() {
    assert_eq!(parse_time_value("2025-06-27T22:14:12+02:00"), Some(utc(2025, 6, 27, 20, 14, 12, 0)));
}

#[test]
fn rfc3339_negative_offset_converts_to_utc() {
    assert_eq!(parse_time_value("2025-06-27T15:44:12-04:30"), Some(utc(2025, 6, 27, 20, 14, 12, 0)));
}

#[test]
fn rfc3339_offset_crosses_midnight() {
    assert_eq!(parse_time_value("2025-06-28T01:00:00+05:00"), Some(utc(2025, 6, 27, 20, 0, 0, 0)));
}

#[test]
fn rfc3339_zero_offset() {
    assert_eq!(parse_time_value("2025-06-27T20:14:12+00:00"), Some(utc(2025, 6, 27, 20, 14, 12, 0)));
}

#[test]
fn rfc3339_millis_fraction() {
    assert_eq!(parse_time_value("2025-06-27T20:14:12.5Z"), Some(utc(2025, 6, 27, 20, 14, 12, 500_000)));
}

#[test]
fn rfc3339_micros_fraction() {
    assert_eq!(parse_time_value("2025-06-27T20:14:12.123456Z"), Some(utc(2025, 6, 27, 20, 14, 12, 123_456)));
}

#[test]
fn rfc3339_nanos_truncated_to_micros() {
    assert_eq!(parse_time_value("2025-06-27T20:14:12.123456999Z"), Some(utc(2025, 6, 27, 20, 14, 12, 123_456)));
}

#[test]
fn rfc3339_nanos_with_offset_truncated() {
    assert_eq!(parse_time_value("2025-06-27T22:14:12.000000999+02:00"), Some(utc(2025, 6, 27, 20, 14, 12, 0)));
}

#[test]
fn rfc3339_space_separator() {
    assert_eq!(parse_time_value("2025-06-27 20:14:12Z"), Some(utc(2025, 6, 27, 20, 14, 12, 0)));
}

#[test]
fn iso_offset_without_colon() {
    assert_eq!(parse_time_value("2025-06-27T22:14:12+0200"), Some(utc(2025, 6, 27, 20, 14, 12, 0)));
}

#[test]
fn iso_offset_hours_only() {
    assert_eq!(parse_time_value("2025-06-27T22:14:12.25+02"), Some(utc(2025, 6, 27, 20, 14, 12, 250_000)));
}

#[test]
fn iso_without_offset_is_utc() {
    assert_eq!(parse_time_value("2025-06-27T20:14:12"), Some(utc(2025, 6, 27, 20, 14, 12, 0)));
}

#[test]
fn iso_without_offset_with_fraction_is_utc() {
    assert_eq!(parse_time_value("2025-06-27T20:14:12.123456"), Some(utc(2025, 6, 27, 20, 14, 12, 123_456)));
}

#[test]
fn iso_without_offset_space_separator_is_utc() {
    assert_eq!(parse_time_value("2025-06-27 20:14:12.123456"), Some(utc(2025, 6, 27, 20, 14, 12, 123_456)));
}

#[test]
fn iso_without_offset_nanos_truncated() {
    assert_eq!(parse_time_value("2025-06-27T20:14:12.123456789"), Some(utc(2025, 6, 27, 20, 14, 12, 123_456)));
}

#[test]
fn iso_leap_second_does_not_panic() {
    // chrono accepts :60; it is folded into the next second.
    assert_eq!(parse_time_value("2016-12-31T23:59:60.5Z"), Some(utc(2017, 1, 1, 0, 0, 0, 500_000)));
}

#[test]
fn iso_invalid_calendar_date_rejected() {
    assert_eq!(parse_time_value("2025-02-30T00:00:00Z"), None);
    assert_eq!(parse_time_value("2025-06-27T24:00:01Z"), None);
    assert_eq!(parse_time_value("2025-13-01T00:00:00"), None);
}

#[test]
fn iso_incomplete_forms_rejected() {
    assert_eq!(parse_time_value("2025-06-27"), None);
    assert_eq!(parse_time_value("2025-06-27T20:14"), None);
    assert_eq!(parse_time_value("2025-06-27T20:14:12."), None);
    assert_eq!(parse_time_value("2025-06-27T20:14:12+"), None);
}

#[test]
fn iso_trailing_garbage_rejected() {
    assert_eq!(parse_time_value("2025-06-27T20:14:12Z junk"), None);
}

#[test]
fn iso_surrounding_whitespace_trimmed() {
    assert_eq!(parse_time_value("  2025-06-27T20:14:12Z\t"), Some(utc(2025, 6, 27, 20, 14, 12, 0)));
}

// ---- parse_time_value: HTTP-date ----

#[test]
fn http_date_imf_fixdate() {
    assert_eq!(parse_time_value("Fri, 27 Jun 2025 20:14:12 GMT"), Some(utc(2025, 6, 27, 20, 14, 12, 0)));
}

#[test]
fn http_date_rfc850() {
    assert_eq!(parse_time_value("Friday, 27-Jun-25 20:14:12 GMT"), Some(utc(2025, 6, 27, 20, 14, 12, 0)));
}

#[test]
fn http_date_asctime() {
    assert_eq!(parse_time_value("Fri Jun 27 20:14:12 2025"), Some(utc(2025, 6, 27, 20, 14, 12, 0)));
}

#[test]
fn http_date_with_whitespace() {
    assert_eq!(parse_time_value(" Fri, 27 Jun 2025 20:14:12 GMT "), Some(utc(2025, 6, 27, 20, 14, 12, 0)));
}

#[test]
fn http_date_malformed_rejected() {
    assert_eq!(parse_time_value("Fri, 32 Jun 2025 20:14:12 GMT"), None);
    assert_eq!(parse_time_value("Fri, 27 Jun 2025 20:14:12 UTC"), None);
    assert_eq!(parse_time_value("Fri, 27 Jun 2025"), None);
}

#[test]
fn http_date_in_header_resolves() {
    let h = headers(&[("timestamp", "Fri, 27 Jun 2025 20:00:00 GMT")]);
    assert_eq!(resolve(&h, now()), from_header("timestamp", valid()));
}

// ---- parse_time_value: epoch numbers ----

#[test]
fn epoch_seconds_integer() {
    assert_eq!(parse_time_value("1750000000"), Some(micros(1_750_000_000_000_000)));
}

#[test]
fn epoch_seconds_fraction() {
    assert_eq!(parse_time_value("1750000000.5"), Some(micros(1_750_000_000_500_000)));
}

#[test]
fn epoch_seconds_fraction_exact_digits() {
    // 0.123 is not exact in binary; integer parsing must not give .122999.
    assert_eq!(parse_time_value("1750000000.123"), Some(micros(1_750_000_000_123_000)));
}

#[test]
fn epoch_seconds_fraction_truncated_to_micros() {
    assert_eq!(parse_time_value("1750000000.1234569999999999"), Some(micros(1_750_000_000_123_456)));
}

#[test]
fn epoch_milliseconds() {
    assert_eq!(parse_time_value("1750000000123"), Some(micros(1_750_000_000_123_000)));
}

#[test]
fn epoch_milliseconds_fraction() {
    assert_eq!(parse_time_value("1750000000123.4567"), Some(micros(1_750_000_000_123_456)));
}

#[test]
fn epoch_microseconds() {
    assert_eq!(parse_time_value("1750000000123456"), Some(micros(1_750_000_000_123_456)));
}

#[test]
fn epoch_nanoseconds_truncated() {
    assert_eq!(parse_time_value("1750000000123456789"), Some(micros(1_750_000_000_123_456)));
}

#[test]
fn epoch_just_below_1e11_is_seconds() {
    assert_eq!(parse_time_value("99999999999"), Some(micros(99_999_999_999_000_000)));
}

#[test]
fn epoch_just_below_1e11_with_fraction_is_seconds() {
    assert_eq!(parse_time_value("99999999999.999999"), Some(micros(99_999_999_999_999_999)));
}

#[test]
fn epoch_at_1e11_is_milliseconds() {
    assert_eq!(parse_time_value("100000000000"), Some(micros(100_000_000_000_000)));
}

#[test]
fn epoch_just_below_1e14_is_milliseconds() {
    assert_eq!(parse_time_value("99999999999999"), Some(micros(99_999_999_999_999_000)));
}

#[test]
fn epoch_at_1e14_is_microseconds() {
    assert_eq!(parse_time_value("100000000000000"), Some(micros(100_000_000_000_000)));
}

#[test]
fn epoch_just_below_1e17_is_microseconds() {
    assert_eq!(parse_time_value("99999999999999999"), Some(micros(99_999_999_999_999_999)));
}

#[test]
fn epoch_at_1e17_is_nanoseconds() {
    assert_eq!(parse_time_value("100000000000000000"), Some(micros(100_000_000_000_000)));
}

#[test]
fn epoch_leading_zeros_do_not_change_unit() {
    assert_eq!(parse_time_value("0001750000000"), Some(micros(1_750_000_000_000_000)));
}

#[test]
fn epoch_t_prefix_seconds() {
    assert_eq!(parse_time_value("t=1750000000.123"), Some(micros(1_750_000_000_123_000)));
}

#[test]
fn epoch_t_prefix_microseconds() {
    // Apache mod_headers `%t` writes microseconds.
    assert_eq!(parse_time_value("t=1750000000123456"), Some(micros(1_750_000_000_123_456)));
}

#[test]
fn epoch_t_prefix_with_outer_whitespace() {
    assert_eq!(parse_time_value("  t=1750000000 "), Some(micros(1_750_000_000_000_000)));
}

#[test]
fn epoch_t_prefix_malformed_rejected() {
    for s in ["t=", "t= 1750000000", "T=1750000000", "t=t=1750000000", "t=abc", "x=1750000000"] {
        assert_eq!(parse_time_value(s), None, "{s:?}");
    }
}

#[test]
fn epoch_t_prefix_only_for_numbers() {
    assert_eq!(parse_time_value("t=2025-06-27T20:14:12Z"), None);
}

#[test]
fn epoch_small_number_parses_before_bounds() {
    // parse_time_value has no bounds; resolve rejects this one.
    assert_eq!(parse_time_value("12345"), Some(micros(12_345_000_000)));
}

#[test]
fn epoch_negative_rejected() {
    for s in ["-1", "-1750000000", "-0", "t=-1750000000", "-1750000000.5"] {
        assert_eq!(parse_time_value(s), None, "{s:?}");
    }
}

#[test]
fn epoch_explicit_plus_sign_rejected() {
    assert_eq!(parse_time_value("+1750000000"), None);
}

#[test]
fn epoch_nan_and_inf_rejected() {
    for s in ["NaN", "nan", "inf", "-inf", "+inf", "infinity", "Infinity"] {
        assert_eq!(parse_time_value(s), None, "{s:?}");
    }
}

#[test]
fn epoch_exponent_rejected() {
    for s in ["1.75e9", "1e10", "1E10", "1e400"] {
        assert_eq!(parse_time_value(s), None, "{s:?}");
    }
}

#[test]
fn epoch_malformed_decimal_rejected() {
    for s in [".", ".5", "1750000000.", "1750000000..5", "1.2.3", "1_750_000_000", "1,5", "0x10"] {
        assert_eq!(parse_time_value(s), None, "{s:?}");
    }
}

#[test]
fn epoch_inner_whitespace_rejected() {
    assert_eq!(parse_time_value("1750 000000"), None);
}

#[test]
fn epoch_huge_u64_overflowing_nanos_still_parse() {
    // 2^64 ns is year 2554: larger than u64 but handled exactly.
    assert_eq!(parse_time_value("18446744073709551616"), Some(micros(18_446_744_073_709_551)));
}

#[test]
fn epoch_beyond_chrono_range_rejected() {
    // 1e25 ns ≈ 317 million years.
    assert_eq!(parse_time_value("10000000000000000000000000"), None);
}

#[test]
fn epoch_beyond_i64_micros_rejected() {
    assert_eq!(parse_time_value("99999999999999999999999999999"), None);
}

#[test]
fn epoch_beyond_u128_rejected() {
    let s = "9".repeat(60);
    assert_eq!(parse_time_value(&s), None);
    assert_eq!(parse_time_value(&format!("{s}.5")), None);
}

#[test]
fn epoch_u128_max_rejected() {
    assert_eq!(parse_time_value(&u128::MAX.to_string()), None);
}

#[test]
fn epoch_very_long_fraction_ok() {
    let s = format!("1750000000.25{}", "9".repeat(500));
    assert_eq!(parse_time_value(&s), Some(micros(1_750_000_000_259_999)));
}

// ---- parse_time_value: rejects ----

#[test]
fn empty_and_blank_rejected() {
    for s in ["", " ", "\t", " \t "] {
        assert_eq!(parse_time_value(s), None, "{s:?}");
    }
}

#[test]
fn garbage_rejected() {
    for s in ["garbage", "now", "null", "true", "[]", "{}", "🕒", "Z"] {
        assert_eq!(parse_time_value(s), None, "{s:?}");
    }
}

#[test]
fn no_panic_on_odd_inputs() {
    let fixed = [
        "",
        " ",
        "t",
        "t=",
        "=",
        ".",
        "..",
        "-",
        "+",
        "e",
        "-.",
        "0.",
        ".0",
        "00",
        "0",
        "-0.0",
        "NaN",
        "nan",
        "inf",
        "-inf",
        "1e308",
        "1e-308",
        "0x1p3",
        "\u{0}",
        "\u{feff}1750000000",
        "１７５００００００",
        "١٧٥٠٠٠٠٠٠٠",
        "t=\u{0}",
        "9999-12-31T23:59:59Z",
        "+275760-09-13T00:00:00Z",
        "-000001-01-01T00:00:00Z",
        "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:60.999999999+23:59",
        "0001-01-01T00:00:00-23:59",
        "2025-06-27T20:14:12+99:99",
        "2025-06-27T20:14:12.Z",
        "Fri, 31 Dec 9999 23:59:59 GMT",
        "Thu, 01 Jan 1970 00:00:00 GMT",
        "Mon, 01 Jan 0000 00:00:00 GMT",
        "Fri Jun 27 20:14:12 99999",
        "Friday, 27-Jun-99 20:14:12 GMT",
        "𝟙𝟟𝟝𝟘",
        "ÿÿÿÿ",
        "1\u{0}2",
    ];
    let mut inputs: Vec<String> = fixed.iter().map(|s| s.to_string()).collect();
    // Digit strings of every length around the thresholds and past u128.
    for len in 1..=45 {
        inputs.push("9".repeat(len));
        inputs.push(format!("1{}", "0".repeat(len)));
        inputs.push(format!("t={}", "9".repeat(len)));
        inputs.push(format!("{}.{}", "9".repeat(len), "9".repeat(len)));
    }
    // Boundaries of the integer types involved.
    for n in [
        i64::MAX.to_string(),
        i64::MIN.to_string(),
        u64::MAX.to_string(),
        i128::MAX.to_string(),
        u128::MAX.to_string(),
        f64::MAX.to_string(),
        f64::MIN_POSITIVE.to_string(),
    ] {
        inputs.push(format!("t={n}"));
        inputs.push(n);
    }
    // Every prefix of each textual format, to hit truncated input paths.
    for full in [
        "2025-06-27T20:14:12.123456789+02:00",
        "Fri, 27 Jun 2025 20:14:12 GMT",
        "Friday, 27-Jun-25 20:14:12 GMT",
        "Fri Jun 27 20:14:12 2025",
        "t=1750000000.123456",
    ] {
        for end in 0..=full.len() {
            inputs.push(full[..end].to_string());
            inputs.push(format!("{}x", &full[..end]));
        }
    }
    assert!(inputs.len() > 300, "{}", inputs.len());

    let extreme_nows = [now(), DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC];
    for input in &inputs {
        let parsed = parse_time_value(input);
        // Every success is on a whole microsecond.
        if let Some(t) = parsed {
            assert_eq!(t.timestamp_subsec_nanos() % 1_000, 0, "{input:?}");
        }
        if let Ok(value) = HeaderValue::from_str(input) {
            let mut h = HeaderMap::new();
            h.insert("x-timestamp", value);
            for now in extreme_nows {
                let r = resolve(&h, now);
                // resolve must agree with parse + bounds.
                let expected = parsed.filter(|t| {
                    *t >= earliest_accepted() && now.checked_add_signed(MAX_FUTURE_SKEW).is_none_or(|max| *t <= max)
                });
                match expected {
                    Some(t) => assert_eq!(r, from_header("x-timestamp", t), "{input:?}"),
                    None => assert_eq!(r, server(now), "{input:?}"),
                }
            }
        }
    }
}

#[test]
fn earliest_accepted_is_2000() {
    assert_eq!(earliest_accepted(), utc(2000, 1, 1, 0, 0, 0, 0));
    assert_eq!(earliest_accepted().timestamp(), 946_684_800);
}
