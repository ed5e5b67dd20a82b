//! `GET /events` (SPEC §5): Server-Sent Events, a stats snapshot every second.
//!
//! Each connection is a stream driven by its own interval; when the client disconnects axum drops
//! the stream and nothing more is done for it. Streams end when the service shuts down, so they
//! never hold a graceful shutdown open.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::{Stream, StreamExt};
use serde::Serialize;

use super::AppState;
use super::query::Timeframe;
use super::stats::StatsResponse;
use crate::error::ApiError;

/// What each `stats` event carries.
#[derive(Serialize, utoipa::ToSchema)]
pub struct StatsEvent {
    /// `GET /stats` for the last hour.
    #[serde(flatten)]
    stats: StatsResponse,
    /// Buys with timestamp in the last 60 seconds.
    buys_last_minute: i64,
    /// Units over all buys.
    total_units: i64,
}

async fn snapshot(state: &AppState) -> Result<StatsEvent, ApiError> {
    let now = state.clock.now();
    let now_us = now.timestamp_micros();
    let hour = Timeframe::ONE_HOUR;
    let (counts, minute) = state
        .read_store(move |store| {
            Ok((store.counts(now_us - hour.micros(), None)?, store.counts(now_us - 60_000_000, None)?))
        })
        .await?;
    Ok(StatsEvent {
        stats: StatsResponse::from_counts(state, now, hour, &counts),
        buys_last_minute: minute.recent_buys,
        total_units: counts.total_units,
    })
}

/// A live stream of stats.
#[utoipa::path(get, path = "/events", tag = "analytics", responses(
    (status = 200, description = "text/event-stream: every second an `event: stats` whose data is GET /stats for the last hour plus `buys_last_minute` and `total_units`; `event: error` with a `detail` when the store does not answer; comment lines keep idle proxies open", body = StatsEvent, content_type = "text/event-stream"),
    (status = 401, description = "Read keys are set and none was sent"),
))]
pub async fn events(State(state): State<AppState>) -> impl IntoResponse {
    let mut shutdown = state.shutdown.clone();
    let ticks = tokio_stream_interval(Duration::from_secs(1));
    let stream = ticks
        .then(move |()| {
            let state = state.clone();
            async move {
                let event = match snapshot(&state).await {
                    Ok(data) => Event::default().event("stats").json_data(data),
                    Err(e) => Event::default().event("error").json_data(serde_json::json!({"detail": e.to_string()})),
                };
                Ok::<_, Infallible>(event.unwrap_or_else(|_| Event::default().comment("unserialisable event skipped")))
            }
        })
        .take_until(async move {
            let _ = shutdown.wait_for(|stopping| *stopping).await;
        });
    let sse = Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)).text("keep-alive"));
    // Tell buffering proxies (nginx) to pass events through as they come.
    ([("x-accel-buffering", "no"), (header::CACHE_CONTROL.as_str(), "no-cache")], sse)
}

/// A stream yielding now and then every `period`.
fn tokio_stream_interval(period: Duration) -> impl Stream<Item = ()> {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    futures_util::stream::unfold(interval, |mut interval| async move {
        interval.tick().await;
        Some(((), interval))
    })
}
