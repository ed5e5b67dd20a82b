//! `GET /stats/timing` (`docs/reference.md` §9): buys in the window by local weekday and hour in
//! any IANA time zone, from the minute rollups (every zone's offset is a whole number of minutes,
//! so a UTC minute lies in one local hour).

use axum::Json;
use axum::extract::{RawQuery, State};
use chrono::{Datelike, Offset, TimeZone, Timelike};
use chrono_tz::Tz;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::query::{Params, Timeframe};
use super::state::AppState;
use crate::field_error::FieldError;
use crate::http::error::ApiError;
use crate::store::TimingGrid;

/// Days × hours.
const CELLS: usize = 7 * 24;

/// One weekday and hour.
#[derive(Serialize, ToSchema)]
pub struct TimingCell {
    /// Monday 0 to Sunday 6.
    weekday: u32,
    /// 0 to 23, local.
    hour: u32,
    /// Buys whose local timestamp falls in this weekday and hour.
    buys: i64,
    /// Their units.
    units: i64,
}

/// Buys by local weekday and hour.
#[derive(Serialize, ToSchema)]
pub struct TimingResponse {
    /// The zone used.
    tz: String,
    /// The window.
    timeframe_hours: f64,
    /// The promotion, or null for every buy.
    promotion_id: Option<i64>,
    /// 168 cells: Monday hour 0 first, Sunday hour 23 last; they add up to n_recent_buys.
    cells: Vec<TimingCell>,
}

/// The week's hours in one time zone.
struct ZoneGrid(Tz);

impl TimingGrid for ZoneGrid {
    fn cells(&self) -> usize {
        CELLS
    }

    /// Weekday × 24 + hour of `timestamp_us` in the zone.
    fn cell_of(&self, timestamp_us: i64) -> usize {
        let local =
            self.0.timestamp_micros(timestamp_us).single().map(|t| (t.weekday().num_days_from_monday(), t.hour()));
        // Every instant has one local time (only local times can be ambiguous); out of chrono's
        // range counts in no cell.
        local.map_or(CELLS, |(day, hour)| (day * 24 + hour) as usize)
    }

    /// The offset at the hour's first and last second, when they agree (no zone changes its
    /// offset twice within an hour).
    fn offset_over_hour(&self, hour_s: i64) -> Option<i64> {
        let offset = |s: i64| {
            chrono::DateTime::from_timestamp(s, 0)
                .map(|t| i64::from(self.0.offset_from_utc_datetime(&t.naive_utc()).fix().local_minus_utc()))
        };
        let first = offset(hour_s)?;
        (offset(hour_s.saturating_add(3599))? == first).then_some(first)
    }
}

/// Buys in the window by weekday and hour, in a time zone.
#[utoipa::path(
    get, path = "/stats/timing", tag = "analytics",
    params(
        ("timeframe_hours" = Option<f64>, Query, minimum = 0.1, maximum = 168.0, description = "Window, in hours (default 168)"),
        ("tz" = Option<String>, Query, description = "IANA time zone name (default UTC), such as Europe/Paris or Asia/Kathmandu"),
        ("promotion_id" = Option<i64>, Query, description = "Only this promotion's buys"),
    ),
    responses(
        (status = 200, description = "168 cells, Monday 0 to Sunday 6 and hour 0 to 23; they add up to n_recent_buys of the window", body = TimingResponse),
        (status = 401, description = "Read keys are set and none was sent"),
        (status = 422, description = "A parameter is invalid (an unknown zone at [\"query\", \"tz\"])", body = crate::http::error::ValidationErrors),
        (status = 503, description = "The store is unavailable; `detail` is a fixed sentence"),
    )
)]
pub async fn timing(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<TimingResponse>, ApiError> {
    let params = Params::parse(query.as_deref())?;
    let timeframe = params.timeframe_or(Timeframe::ONE_WEEK)?;
    let promotion_id = params.promotion_id()?;
    let name = params.text("tz").unwrap_or("UTC").to_string();
    let tz: Tz = name.parse().map_err(|_| {
        let loc: [Value; 2] = [json!("query"), json!("tz")];
        ApiError::Validation(vec![FieldError::not_a_time_zone(&loc, &json!(name))])
    })?;
    let since = state.clock.now_us() - timeframe.micros();
    let counts = state.read_store(move |store| store.timing(since, promotion_id, &ZoneGrid(tz))).await?;
    let cells = counts
        .into_iter()
        .enumerate()
        .map(|(i, (buys, units))| TimingCell { weekday: (i / 24) as u32, hour: (i % 24) as u32, buys, units })
        .collect();
    Ok(Json(TimingResponse { tz: name, timeframe_hours: timeframe.hours(), promotion_id, cells }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Half- and quarter-hour zones move a UTC time into the right local hour.
    #[test]
    fn cells_follow_the_zone() {
        // 2026-12-07 is a Monday; 00:10 UTC.
        let at = chrono::Utc.with_ymd_and_hms(2026, 12, 7, 0, 10, 0).unwrap().timestamp_micros();
        assert_eq!(ZoneGrid(Tz::UTC).cell_of(at), 0);
        // Kathmandu is UTC+5:45: 05:55 Monday.
        assert_eq!(ZoneGrid("Asia/Kathmandu".parse().unwrap()).cell_of(at), 5);
        // St John's is UTC−3:30 in December: 20:40 Sunday.
        assert_eq!(ZoneGrid("America/St_Johns".parse().unwrap()).cell_of(at), 6 * 24 + 20);
    }

    /// An hour is one cell where the zone's offset is whole hours all through it, and exactly
    /// there: checked against the cells of every minute of the hours around two transitions.
    #[test]
    fn whole_hours_are_those_whose_minutes_share_a_cell() {
        let hour = |y, m, d, h| chrono::Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap().timestamp();
        let cases = [
            // Paris leaves summer time at 01:00 UTC on 2026-10-25: whole hours on both sides.
            ("Europe/Paris", hour(2026, 10, 24, 22), 6),
            // Lord Howe goes from +11 to +10:30 at 15:00 UTC on 2026-04-04.
            ("Australia/Lord_Howe", hour(2026, 4, 4, 12), 3),
            ("Asia/Kathmandu", hour(2026, 12, 7, 0), 0),
            ("UTC", hour(2026, 12, 7, 0), 6),
        ];
        for (zone, start, whole) in cases {
            let grid = ZoneGrid(zone.parse().unwrap());
            let mut found = 0;
            for h in 0..6 {
                let hour_s = start + h * 3600;
                let minutes: std::collections::BTreeSet<usize> =
                    (0..60).map(|m| grid.cell_of((hour_s + m * 60) * 1_000_000)).collect();
                let whole_hours = grid.offset_over_hour(hour_s).is_some_and(|o| o % 3600 == 0);
                assert_eq!(whole_hours, minutes.len() == 1, "{zone} at {hour_s}");
                // A split hour's minutes lie in the two local hours of its first and last minute.
                let ends = [grid.cell_of(hour_s * 1_000_000), grid.cell_of((hour_s + 3599) * 1_000_000)];
                assert!(minutes.iter().all(|c| ends.contains(c)), "{zone} at {hour_s}");
                found += usize::from(minutes.len() == 1);
            }
            assert_eq!(found, whole, "{zone}");
        }
    }
}
