//! `GET /events` (`docs/reference.md` §5): Server-Sent Events, a stats snapshot every second.
//!
//! A stream's first event is computed for it, so it includes every buy acknowledged before the
//! request. After that, all streams of the process share one snapshot a second
//! ([`LiveStats`](crate::http::live::LiveStats)). When a client disconnects axum drops its
//! stream; streams end when the service shuts down, so they never hold a graceful shutdown open.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::time::Instant;

use super::live::Payload;
use super::query::Timeframe;
use super::state::AppState;
use super::stats::StatsResponse;
use crate::http::error::ApiError;

/// What each `stats` event carries.
#[derive(Serialize, utoipa::ToSchema)]
pub struct StatsEvent {
    /// `GET /stats` for the last hour.
    #[serde(flatten)]
    stats: StatsResponse,
    /// Buys with timestamp in the last 60 seconds.
    buys_last_minute: i64,
    /// Page views with timestamp in the last 60 seconds.
    views_last_minute: i64,
    /// Units over all buys.
    total_units: i64,
}

async fn snapshot(state: &AppState) -> Result<StatsEvent, ApiError> {
    let now = state.clock.now();
    let now_us = now.timestamp_micros();
    let hour = Timeframe::ONE_HOUR;
    let minute_ago = now_us - 60_000_000;
    let (counts, minute, views) = state
        .read_store(move |store| {
            Ok((
                store.counts(now_us - hour.micros(), None)?,
                store.counts(minute_ago, None)?,
                store.recent_views(minute_ago, None)?,
            ))
        })
        .await?;
    Ok(StatsEvent {
        stats: StatsResponse::from_counts(state, now, hour, &counts),
        buys_last_minute: minute.recent_buys,
        views_last_minute: views,
        total_units: counts.total_units,
    })
}

async fn payload(state: &AppState) -> Payload {
    match snapshot(state).await {
        Ok(data) => serde_json::to_string(&data).map_err(|e| format!("unserialisable snapshot: {e}")),
        // The fixed sentence a 503 would say; the cause is logged, never sent.
        Err(e) => {
            tracing::warn!(cause = %crate::telemetry::error_chain(&e), "event stream snapshot failed");
            Err(e.unavailable_sentence().to_string())
        }
    }
}

fn event(payload: &Payload) -> Event {
    match payload {
        Ok(json) => Event::default().event("stats").data(json),
        Err(detail) => Event::default().event("error").data(serde_json::json!({ "detail": detail }).to_string()),
    }
}

/// A live stream of stats.
#[utoipa::path(get, path = "/events", tag = "analytics", responses(
    (status = 200, description = "text/event-stream: every second an `event: stats` whose data is GET /stats for the last hour plus `buys_last_minute`, `views_last_minute` and `total_units`; `event: error` with a `detail` when the store does not answer; comment lines keep idle proxies open. The first event is taken for this request; the following ones are shared by every open stream of the replica (taken once a second for all)", body = StatsEvent, content_type = "text/event-stream"),
    (status = 401, description = "Read keys are set and none was sent"),
))]
pub async fn events(State(state): State<AppState>) -> impl IntoResponse {
    let mut shutdown = state.shutdown.clone();
    // Subscribed before the first snapshot is taken, so no shared one is missed after it.
    let take = {
        let state = state.clone();
        move || {
            let state = state.clone();
            async move { payload(&state).await }
        }
    };
    let shared = state.live.subscribe(take, state.shutdown.clone());
    // A shared snapshot whose reads began before this stream's own is older than the first
    // event, and might lack a buy acknowledged before the request: skipped.
    let first_taken = Instant::now();
    let first = futures_util::stream::once(async move { event(&payload(&state).await) });
    let following = futures_util::stream::unfold(shared, move |mut shared| async move {
        loop {
            shared.changed().await.ok()?;
            let snapshot = shared.borrow_and_update().clone();
            if snapshot.taken >= first_taken {
                return Some((event(&snapshot.payload), shared));
            }
        }
    });
    let stream = first.chain(following).map(Ok::<_, Infallible>).take_until(async move {
        let _ = shutdown.wait_for(|stopping| *stopping).await;
    });
    let sse = Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)).text("keep-alive"));
    // Tell buffering proxies (nginx) to pass events through as they come.
    ([("x-accel-buffering", "no"), (header::CACHE_CONTROL.as_str(), "no-cache")], sse)
}
