//! `GET /stats` (`docs/reference.md` §2): totals and recent buys, read from counters maintained with the inserts.

use axum::Json;
use axum::extract::{RawQuery, State};
use serde::Serialize;
use utoipa::ToSchema;

use chrono::{DateTime, Utc};

use super::query::{Params, Timeframe};
use super::state::AppState;
use crate::clock::{format_micros, format_time};
use crate::http::error::ApiError;
use crate::store::Counts;

/// Service statistics.
#[derive(Serialize, ToSchema)]
pub struct StatsResponse {
    /// Seconds since the service started.
    uptime_seconds: f64,
    /// Uptime as the original wrote it, leading zero units dropped: `42s`, `3m 5s`, `1h 0m 0s`.
    uptime_formatted: String,
    /// Every buy in the store.
    total_buys: i64,
    /// Server time, RFC 3339 UTC with microseconds.
    current_time: String,
    /// Always `healthy`.
    server_status: &'static str,
    /// Buys whose timestamp is at or after now − timeframe_hours (future timestamps count).
    n_recent_buys: i64,
    /// The window asked for.
    timeframe_hours: f64,
}

/// Uptime in the original's words: `42s`, `3m 5s`, `1h 0m 0s`, `2d 3h 4m 5s`.
pub fn format_uptime(seconds: f64) -> String {
    let total = seconds.max(0.0) as u64;
    let (days, hours, minutes, secs) = (total / 86_400, total % 86_400 / 3_600, total % 3_600 / 60, total % 60);
    if days > 0 {
        format!("{days}d {hours}h {minutes}m {secs}s")
    } else if hours > 0 {
        format!("{hours}h {minutes}m {secs}s")
    } else if minutes > 0 {
        format!("{minutes}m {secs}s")
    } else {
        format!("{secs}s")
    }
}

/// Totals and recent buys.
#[utoipa::path(
    get, path = "/stats", tag = "analytics",
    params(
        ("timeframe_hours" = Option<f64>, Query, minimum = 0.1, maximum = 168.0,
            description = "Window for n_recent_buys, in hours (default 1.0)"),
        ("promotion_id" = Option<i64>, Query, description = "Restrict every count to this promotion"),
    ),
    responses(
        (status = 200, description = "Counts include every buy acknowledged before this request", body = StatsResponse),
        (status = 401, description = "Read keys are set and none was sent"),
        (status = 422, description = "timeframe_hours missing its bounds or not a number", body = crate::http::error::ValidationErrors),
        (status = 503, description = "The store is unavailable or did not answer within 4 s; `detail` is a fixed sentence such as `the store is unavailable; retry`"),
    )
)]
pub async fn stats(State(state): State<AppState>, RawQuery(query): RawQuery) -> Result<Json<StatsResponse>, ApiError> {
    let params = Params::parse(query.as_deref())?;
    let timeframe = params.timeframe()?;
    let promotion_id = params.promotion_id()?;
    Ok(Json(StatsResponse::now(&state, timeframe, promotion_id).await?))
}

impl StatsResponse {
    /// The stats at this instant (also sent by `GET /events`).
    pub async fn now(state: &AppState, timeframe: Timeframe, promotion_id: Option<i64>) -> Result<Self, ApiError> {
        let now = state.clock.now();
        let since = now.timestamp_micros() - timeframe.micros();
        let counts = state.read_store(move |store| store.counts(since, promotion_id)).await?;
        Ok(Self::from_counts(state, now, timeframe, &counts))
    }

    /// Shape `counts` taken at `now`.
    pub fn from_counts(state: &AppState, now: DateTime<Utc>, timeframe: Timeframe, counts: &Counts) -> Self {
        let uptime = state.uptime_seconds();
        StatsResponse {
            uptime_seconds: uptime,
            uptime_formatted: format_uptime(uptime),
            total_buys: counts.total_buys,
            current_time: format_time(now),
            server_status: "healthy",
            n_recent_buys: counts.recent_buys,
            timeframe_hours: timeframe.hours(),
        }
    }
}

/// One bucket of a timeseries.
#[derive(Serialize, ToSchema)]
pub struct Point {
    /// Bucket start, RFC 3339 UTC.
    start: String,
    /// Buys whose timestamp falls in the bucket.
    buys: i64,
    /// Their units.
    units: i64,
    /// Page views whose timestamp falls in the bucket.
    views: i64,
    /// Quantity × unit_price_cents over its buys that carry a price.
    revenue_cents: i64,
}

/// Buys, units, views and revenue per bucket.
#[derive(Serialize, ToSchema)]
pub struct Timeseries {
    /// `minute` or `hour`.
    bucket: &'static str,
    /// The window asked for.
    timeframe_hours: f64,
    /// Every bucket from the one holding now − timeframe to the one holding now, oldest first;
    /// empty buckets as zeros.
    points: Vec<Point>,
}

/// Buys per minute or hour.
#[utoipa::path(
    get, path = "/stats/timeseries", tag = "analytics",
    params(
        ("timeframe_hours" = Option<f64>, Query, minimum = 0.1, maximum = 168.0, description = "Window, in hours (default 1.0)"),
        ("bucket" = Option<String>, Query, description = "`minute` (default) or `hour`"),
        ("promotion_id" = Option<i64>, Query, description = "Only this promotion"),
    ),
    responses(
        (status = 200, description = "Every bucket of the window, oldest first, zeros included", body = Timeseries),
        (status = 401, description = "Read keys are set and none was sent"),
        (status = 422, description = "A parameter is invalid", body = crate::http::error::ValidationErrors),
        (status = 503, description = "The store is unavailable or did not answer within 4 s; `detail` is a fixed sentence such as `the store is unavailable; retry`"),
    )
)]
pub async fn timeseries(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Timeseries>, ApiError> {
    let params = Params::parse(query.as_deref())?;
    let timeframe = params.timeframe()?;
    let bucket = params.choice("bucket", &["minute", "hour"])?.unwrap_or("minute");
    let promotion_id = params.promotion_id()?;
    let g = if bucket == "hour" { 3600 } else { 60 };
    let now_s = state.clock.now_us().div_euclid(1_000_000);
    let from_s = (now_s - timeframe.micros() / 1_000_000).div_euclid(g) * g;
    let to_s = now_s.div_euclid(g) * g;
    let buckets = state.read_store(move |store| store.timeseries(g, from_s, to_s, promotion_id)).await?;
    let mut stored = buckets.into_iter().peekable();
    let points = (from_s..=to_s)
        .step_by(g as usize)
        .map(|start_s| {
            let (buys, units, views, revenue_cents) = match stored.next_if(|b| b.start_s == start_s) {
                Some(b) => (b.buys, b.units, b.views, b.revenue_cents),
                None => (0, 0, 0, 0),
            };
            Point { start: format_micros(start_s * 1_000_000), buys, units, views, revenue_cents }
        })
        .collect();
    Ok(Json(Timeseries { bucket, timeframe_hours: timeframe.hours(), points }))
}

#[cfg(test)]
mod tests {
    use super::format_uptime;

    #[test]
    fn uptime_drops_leading_zero_units() {
        assert_eq!(format_uptime(0.4), "0s");
        assert_eq!(format_uptime(42.9), "42s");
        assert_eq!(format_uptime(185.0), "3m 5s");
        assert_eq!(format_uptime(3600.0), "1h 0m 0s");
        assert_eq!(format_uptime(2.0 * 86_400.0 + 3.0 * 3600.0 + 4.0 * 60.0 + 5.0), "2d 3h 4m 5s");
        assert_eq!(format_uptime(86_400.0), "1d 0h 0m 0s");
    }
}
