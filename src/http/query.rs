//! Query parameters, parsed into bounded types with 422 errors in the original's shape.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::field_error::FieldError;
use crate::http::error::ApiError;

/// Smallest and largest `timeframe_hours` (`docs/reference.md` §2).
pub const TIMEFRAME_MIN: f64 = 0.1;
/// See [`TIMEFRAME_MIN`].
pub const TIMEFRAME_MAX: f64 = 168.0;

/// A window length in hours, within [`TIMEFRAME_MIN`]..=[`TIMEFRAME_MAX`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeframe(f64);

impl Timeframe {
    /// One hour (the default window).
    pub const ONE_HOUR: Timeframe = Timeframe(1.0);
    /// A week, the longest window (the default of `/stats/timing`).
    pub const ONE_WEEK: Timeframe = Timeframe(TIMEFRAME_MAX);

    /// The hours.
    pub fn hours(self) -> f64 {
        self.0
    }

    /// The window in microseconds (rounded to the nearest microsecond).
    pub fn micros(self) -> i64 {
        (self.0 * 3_600_000_000.0).round() as i64
    }
}

/// The decoded query string, keyed by parameter name (the last value wins when repeated).
#[derive(Debug, Default)]
pub struct Params(HashMap<String, String>);

impl Params {
    /// Decode a raw query string; a malformed one is a 422.
    pub fn parse(raw: Option<&str>) -> Result<Params, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
            .map_err(|e| ApiError::Validation(vec![FieldError::query_invalid(&e.to_string(), raw.unwrap_or(""))]))?;
        Ok(Params(pairs.into_iter().collect()))
    }

    /// `timeframe_hours`, default 1.0.
    pub fn timeframe(&self) -> Result<Timeframe, ApiError> {
        self.timeframe_or(Timeframe::ONE_HOUR)
    }

    /// `timeframe_hours`, default `default`.
    pub fn timeframe_or(&self, default: Timeframe) -> Result<Timeframe, ApiError> {
        let name = "timeframe_hours";
        let Some(raw) = self.0.get(name) else { return Ok(default) };
        let loc = [json!("query"), json!(name)];
        let input = Value::from(raw.as_str());
        let hours: f64 = raw
            .trim()
            .parse()
            .ok()
            .filter(|h: &f64| !h.is_nan())
            .ok_or_else(|| ApiError::Validation(vec![FieldError::not_a_number(&loc, &input)]))?;
        if hours < TIMEFRAME_MIN {
            return Err(ApiError::Validation(vec![FieldError::too_small(&loc, &input, TIMEFRAME_MIN)]));
        }
        if hours > TIMEFRAME_MAX {
            return Err(ApiError::Validation(vec![FieldError::too_large(&loc, &input, TIMEFRAME_MAX)]));
        }
        Ok(Timeframe(hours))
    }

    /// An optional integer parameter within `min..=max`.
    pub fn int(&self, name: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
        let Some(raw) = self.0.get(name) else { return Ok(None) };
        let loc = [json!("query"), json!(name)];
        let input = Value::from(raw.as_str());
        let n: i64 =
            raw.trim().parse().map_err(|_| ApiError::Validation(vec![FieldError::not_an_int_string(&loc, &input)]))?;
        if n < min {
            return Err(ApiError::Validation(vec![FieldError::too_small(&loc, &input, min)]));
        }
        if n > max {
            return Err(ApiError::Validation(vec![FieldError::too_large(&loc, &input, max)]));
        }
        Ok(Some(n))
    }

    /// `promotion_id`, if given.
    pub fn promotion_id(&self) -> Result<Option<i64>, ApiError> {
        self.int("promotion_id", i64::MIN, i64::MAX)
    }

    /// An optional parameter as it was given.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// An optional parameter that must be one of `choices`.
    pub fn choice(&self, name: &str, choices: &[&'static str]) -> Result<Option<&'static str>, ApiError> {
        let Some(raw) = self.0.get(name) else { return Ok(None) };
        choices.iter().find(|c| **c == raw.as_str()).map(|c| Some(*c)).ok_or_else(|| {
            let loc = [json!("query"), json!(name)];
            ApiError::Validation(vec![FieldError::not_a_choice(&loc, &Value::from(raw.as_str()), choices)])
        })
    }

    /// An optional RFC 3339 time, in microseconds since the epoch.
    pub fn time(&self, name: &str) -> Result<Option<i64>, ApiError> {
        let Some(raw) = self.0.get(name) else { return Ok(None) };
        chrono::DateTime::parse_from_rfc3339(raw.trim()).map(|t| Some(t.timestamp_micros())).map_err(|_| {
            let loc = [json!("query"), json!(name)];
            ApiError::Validation(vec![FieldError::not_a_time(&loc, &Value::from(raw.as_str()))])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeframe(q: &str) -> Result<f64, ApiError> {
        Params::parse(Some(q))?.timeframe().map(Timeframe::hours)
    }

    #[test]
    fn timeframe_default_bounds_and_errors() {
        assert_eq!(Params::parse(None).unwrap().timeframe().unwrap().hours(), 1.0);
        assert_eq!(timeframe("timeframe_hours=0.1").unwrap(), 0.1);
        assert_eq!(timeframe("timeframe_hours=168").unwrap(), 168.0);
        assert_eq!(timeframe("timeframe_hours=2.5&x=1").unwrap(), 2.5);
        for bad in ["0.09", "168.01", "-1", "abc", "", "nan", "inf", "1e9"] {
            assert!(timeframe(&format!("timeframe_hours={bad}")).is_err(), "{bad}");
        }
    }

    #[test]
    fn integers_choices_and_times() {
        let p = Params::parse(Some("limit=5&offset=x&bucket=hour&since=2025-06-27T20:14:12Z&until=yesterday")).unwrap();
        assert_eq!(p.int("limit", 1, 1000).unwrap(), Some(5));
        assert!(p.int("offset", 0, i64::MAX).is_err());
        assert_eq!(p.int("missing", 0, 1).unwrap(), None);
        assert!(Params::parse(Some("limit=0")).unwrap().int("limit", 1, 1000).is_err());
        assert!(Params::parse(Some("limit=1001")).unwrap().int("limit", 1, 1000).is_err());
        assert_eq!(p.choice("bucket", &["minute", "hour"]).unwrap(), Some("hour"));
        assert!(Params::parse(Some("bucket=day")).unwrap().choice("bucket", &["minute", "hour"]).is_err());
        assert_eq!(p.time("since").unwrap(), Some(1_751_055_252_000_000));
        assert!(p.time("until").is_err());
    }

    #[test]
    fn micros() {
        assert_eq!(timeframe("timeframe_hours=0.1").map(|h| (h * 3.6e9).round() as i64).unwrap(), 360_000_000);
        assert_eq!(Params::parse(None).unwrap().timeframe().unwrap().micros(), 3_600_000_000);
    }
}
