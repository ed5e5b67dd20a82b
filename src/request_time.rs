//! Request generation time (`docs/reference.md` §3).
//!
//! A buy is stamped with the time the client (or the first proxy in front of
//! us) says the request was generated, not merely when we received it, because
//! queueing and retries can delay delivery. Clients and proxies disagree on
//! both the header name and the format, so this module accepts a fixed list of
//! headers and several formats, and falls back to the server receive time when
//! nothing trustworthy is present.
//!
//! Everything here is pure: the server clock is passed in, never read, so the
//! rules can be tested to the microsecond.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeDelta, Utc};

/// The headers consulted, in priority order.
///
/// Client-set headers come first because they are closest to the moment the
/// buy happened; proxy-set headers (`x-request-start`, `x-queue-start`, ...)
/// follow as the next best approximation.
pub const TIME_HEADERS: [&str; 8] = [
    "x-timestamp",
    "x-client-time",
    "x-request-time",
    "timestamp",
    "x-request-start",
    "x-queue-start",
    "x-request-received",
    "x-forwarded-start",
];

/// Where a buy's timestamp came from: a header name (lowercase, one of
/// [`TIME_HEADERS`]) or the server clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampSource {
    /// The time was taken from this request header (lowercase name).
    Header(&'static str),
    /// No usable header: the server receive time was used.
    Server,
}

/// Stored/exported spelling of [`TimestampSource::Server`].
const SERVER_STR: &str = "server";

impl TimestampSource {
    /// `"x-timestamp"`, ... or `"server"` (this string is stored and exported).
    pub fn as_str(&self) -> &'static str {
        match self {
            TimestampSource::Header(name) => name,
            TimestampSource::Server => SERVER_STR,
        }
    }

    /// Inverse of [`as_str`](Self::as_str) (for reading stored rows back);
    /// `None` for unknown strings.
    ///
    /// Matching is exact: `as_str` only ever writes lowercase names, so any
    /// other spelling in storage means the row was not written by us.
    pub fn from_stored(s: &str) -> Option<Self> {
        if s == SERVER_STR {
            return Some(TimestampSource::Server);
        }
        // Return the `'static` entry from the table rather than borrowing `s`,
        // so the result outlives the row it was read from.
        TIME_HEADERS.iter().find(|&&name| name == s).map(|&name| TimestampSource::Header(name))
    }
}

/// The resolved request generation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestTime {
    /// The instant the request was generated (or received, for `Server`).
    pub at: DateTime<Utc>,
    /// Which header (or the server clock) `at` came from.
    pub source: TimestampSource,
}

/// How far ahead of the server clock a header time may lie. Client clocks
/// drift, so a small lead is tolerated; anything beyond is treated as bogus.
const MAX_FUTURE_SKEW: TimeDelta = TimeDelta::minutes(5);

/// The earliest accepted time. Nothing this service records can predate it,
/// and it also rejects small epoch numbers that are clearly not timestamps.
fn earliest_accepted() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(2000, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|naive| naive.and_utc())
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Parse one header value in any accepted format (no bounds check). Result
/// truncated to whole microseconds.
///
/// Accepted, after trimming surrounding whitespace:
/// * epoch numbers, optionally prefixed `t=`, unit chosen by magnitude
///   (below 1e11 seconds, below 1e14 milliseconds, below 1e17 microseconds,
///   else nanoseconds); a fractional part is allowed and truncated;
/// * RFC 3339 / ISO 8601 date-times with seconds; without an offset they are
///   taken as UTC; a space may replace the `T`;
/// * HTTP-date (IMF-fixdate, RFC 850, asctime).
pub fn parse_time_value(value: &str) -> Option<DateTime<Utc>> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    // Numbers are recognised by shape first: none of the textual formats can
    // consist only of digits and a dot, so there is no ambiguity.
    let number = value.strip_prefix("t=").unwrap_or(value);
    if is_epoch_shape(number) {
        return parse_epoch(number);
    }
    let parsed = parse_iso(value).or_else(|| parse_http_date(value))?;
    truncate_to_micros(parsed)
}

/// Apply `docs/reference.md` §3: first header (in [`TIME_HEADERS`] order) whose value parses
/// and lies within `[2000-01-01T00:00:00Z, now + 5 minutes]`; otherwise `now`
/// with source [`TimestampSource::Server`]. `now` is the server receive time
/// (passed in: time is an input, so tests are exact).
///
/// If a header occurs several times its values are tried in order, so a
/// later valid copy still beats a lower-priority header.
pub fn resolve(headers: &HeaderMap, now: DateTime<Utc>) -> RequestTime {
    let earliest = earliest_accepted();
    // `now` near the end of chrono's range must not overflow; with no room
    // left, the upper bound is simply the largest representable time.
    let latest = now.checked_add_signed(MAX_FUTURE_SKEW).unwrap_or(DateTime::<Utc>::MAX_UTC);

    for &name in TIME_HEADERS.iter() {
        for raw in headers.get_all(name) {
            // Header values are bytes; anything that is not UTF-8 cannot be
            // one of our formats, so it is skipped rather than guessed at.
            let Ok(text) = std::str::from_utf8(raw.as_bytes()) else {
                continue;
            };
            if let Some(at) = parse_time_value(text)
                && at >= earliest
                && at <= latest
            {
                return RequestTime { at, source: TimestampSource::Header(name) };
            }
        }
    }
    RequestTime { at: now, source: TimestampSource::Server }
}

/// `digits` or `digits.digits`. Signs, exponents, `NaN` and `inf` are
/// deliberately excluded: none of them is a plausible timestamp, and rejecting
/// them by shape avoids float parsing entirely.
fn is_epoch_shape(s: &str) -> bool {
    let (int, frac) = match s.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (s, None),
    };
    let all_digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    all_digits(int) && frac.is_none_or(all_digits)
}

/// Parse an epoch number already checked by [`is_epoch_shape`].
///
/// Integer arithmetic (not `f64`) keeps every digit exact: a nanosecond epoch
/// has 19 digits, more than a double can hold, and even `1750000000.123`
/// is not exactly representable in binary.
fn parse_epoch(s: &str) -> Option<DateTime<Utc>> {
    let (int_str, frac_str) = s.split_once('.').unwrap_or((s, ""));

    // u128 holds 38 digits; longer inputs fail here instead of overflowing.
    // Leading zeros are harmless because the magnitude is taken from the value.
    let int: u128 = int_str.parse().ok()?;

    // Nanoseconds per unit. The integer part alone decides the unit: the
    // fraction is below 1, so it can never carry the value across a threshold.
    let ns_per_unit: u128 = if int < 100_000_000_000 {
        1_000_000_000 // seconds
    } else if int < 100_000_000_000_000 {
        1_000_000 // milliseconds
    } else if int < 100_000_000_000_000_000 {
        1_000 // microseconds
    } else {
        1 // nanoseconds
    };

    // The fraction in billionths of a unit; digits beyond the ninth cannot
    // affect a microsecond result for any unit, so they are dropped.
    let mut frac_billionths: u128 = 0;
    for i in 0..9 {
        let digit = frac_str.as_bytes().get(i).map_or(0, |b| b - b'0');
        frac_billionths = frac_billionths * 10 + u128::from(digit);
    }
    // floor(floor(x) / k) == floor(x / k), so truncating step by step gives
    // exactly the truncation of the true value.
    let frac_ns = frac_billionths * ns_per_unit / 1_000_000_000;

    let total_ns = int.checked_mul(ns_per_unit)?.checked_add(frac_ns)?;
    let micros = i64::try_from(total_ns / 1_000).ok()?;
    // Returns None past chrono's representable range instead of panicking.
    DateTime::from_timestamp_micros(micros)
}

/// RFC 3339 and the common ISO 8601 extended forms.
fn parse_iso(s: &str) -> Option<DateTime<Utc>> {
    // Strict RFC 3339 first (also accepts a space or lowercase `t`/`z`).
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(dt.with_timezone(&Utc));
    }
    // ISO 8601 also allows offsets without a colon (`+0200`) or without
    // minutes (`+02`), which RFC 3339 rejects; `%#z` accepts those and `Z`.
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%#z"] {
        if let Ok(dt) = DateTime::parse_from_str(s, fmt) {
            return Some(dt.with_timezone(&Utc));
        }
    }
    // No offset at all: the spec says such a time is UTC (servers and most
    // clients log in UTC; guessing a local zone would be worse).
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(naive.and_utc());
        }
    }
    None
}

/// HTTP-date in any of the three forms RFC 9110 requires recipients to accept.
fn parse_http_date(s: &str) -> Option<DateTime<Utc>> {
    let system: SystemTime = httpdate::parse_http_date(s).ok()?;
    // Converted by hand: chrono's `From<SystemTime>` panics when out of range,
    // and this path must be total. Pre-1970 cannot occur for HTTP-date and
    // would be rejected by the 2000 bound anyway.
    let since_epoch = system.duration_since(UNIX_EPOCH).ok()?;
    let secs = i64::try_from(since_epoch.as_secs()).ok()?;
    DateTime::from_timestamp(secs, since_epoch.subsec_nanos())
}

/// Drop sub-microsecond precision: stored timestamps are microseconds, and
/// truncating here keeps comparisons with stored rows exact.
fn truncate_to_micros(dt: DateTime<Utc>) -> Option<DateTime<Utc>> {
    // Going through the microsecond count also normalises a leap second
    // (`:60`) into the following second instead of keeping chrono's special
    // representation.
    DateTime::from_timestamp_micros(dt.timestamp_micros())
}

#[cfg(test)]
mod tests;
