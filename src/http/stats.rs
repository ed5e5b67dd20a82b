//! `GET /stats` (SPEC §2): totals and recent buys, read from counters maintained with the inserts.

use axum::Json;
use axum::extract::{RawQuery, State};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::query::Params;
use crate::clock::format_time;
use crate::error::ApiError;

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
    params(("timeframe_hours" = Option<f64>, Query, minimum = 0.1, maximum = 168.0,
        description = "Window for n_recent_buys, in hours (default 1.0)")),
    responses(
        (status = 200, description = "Counts include every buy acknowledged before this request", body = StatsResponse),
        (status = 401, description = "Read keys are set and none was sent"),
        (status = 422, description = "timeframe_hours missing its bounds or not a number", body = crate::http::docs::ValidationErrors),
        (status = 503, description = "The store is unavailable"),
    )
)]
pub async fn stats(State(state): State<AppState>, RawQuery(query): RawQuery) -> Result<Json<StatsResponse>, ApiError> {
    let timeframe = Params::parse(query.as_deref())?.timeframe()?;
    let now = state.clock.now();
    let since = now.timestamp_micros() - timeframe.micros();
    let counts = state.read_store(move |store| store.counts(since)).await?;
    let uptime = state.uptime_seconds();
    Ok(Json(StatsResponse {
        uptime_seconds: uptime,
        uptime_formatted: format_uptime(uptime),
        total_buys: counts.total_buys,
        current_time: format_time(now),
        server_status: "healthy",
        n_recent_buys: counts.recent_buys,
        timeframe_hours: timeframe.hours(),
    }))
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
