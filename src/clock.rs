//! Time as an input: handlers and the writer read the time from a [`Clock`] kept in the app
//! state, so tests can pin it; plus the one format every time is written in (`docs/reference.md` §2).

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// Now, in UTC.
    fn now(&self) -> DateTime<Utc>;

    /// Now, in microseconds since the Unix epoch (the store's unit).
    fn now_us(&self) -> i64 {
        self.now().timestamp_micros()
    }
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock stopped at one instant, for tests.
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(pub DateTime<Utc>);

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        self.0
    }
}

/// RFC 3339 in UTC with microseconds and `Z`: `2025-06-27T20:14:12.123456Z`.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// [`format_time`] for microseconds since the epoch (as stored).
pub fn format_micros(us: i64) -> String {
    match Utc.timestamp_micros(us).single() {
        Some(t) => format_time(t),
        None => us.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_micros_and_z() {
        assert_eq!(format_micros(1_751_055_252_123_456), "2025-06-27T20:14:12.123456Z");
        assert_eq!(format_micros(0), "1970-01-01T00:00:00.000000Z");
    }
}
