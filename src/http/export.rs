//! `GET /export?format=csv|ndjson` (`docs/reference.md` §5): the selected buys in sequence order, streamed.
//!
//! A blocking task pages through the store by sequence number and hands formatted chunks to the
//! response through a small bounded channel, so memory stays flat however many rows there are.
//! A client that goes away stops the task at once; one that stops reading, after
//! [`STALL_TIMEOUT`]; a shutdown, at the next chunk (the export is then cut off, so that it does
//! not hold the drain open).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::query::Params;
use super::state::AppState;
use crate::clock::format_micros;
use crate::http::error::ApiError;
use crate::store::{ExportFilter, ExportKind, ExportRow};

/// Exports streamed at once. Each keeps a thread formatting rows, a reader connection in turns
/// and a few hundred KiB of chunks; more at once only slow each other and starve the rest of the
/// analytics. Measured without a limit on SQLite (140,000 buys, 2 cores): 100 exports at once cut
/// `GET /stats` from 29,000 to 91 req/s and left the process at 750 MB resident afterwards.
pub const MAX_EXPORTS: usize = 4;
/// How long an export waits for a slot before it is answered 503 with `Retry-After`. Short, so
/// that with the store's own 4 s timeout the answer still comes within 5 seconds (`docs/reference.md` §6).
const SLOT_WAIT: Duration = Duration::from_millis(500);
/// How long a chunk may wait for the client to take it. A client that stops reading is cut off
/// after this, so it cannot hold a slot for ever (four such clients would block every export).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Sequence numbers per store call: each call reads the buys numbered `after + 1 ..= after +
/// PAGE` that match the filter. Sequence numbers have no gaps, so an unfiltered page is PAGE buys,
/// and a call never scans more than PAGE rows whatever plan the database picks. (Pages of "the
/// next PAGE after `after`" let PostgreSQL, with statistics older than the table's growth, sort
/// the whole remaining range for every page: 5 s for 140,000 buys.) 500 rather than 2,000: the
/// allocator keeps chunks of about 180 KiB after exports mix with other reads (RSS 300–460 MB
/// after 4 exports at a time beside `/stats` with 2,000; about 150 MB with 500).
const PAGE: i64 = 500;
/// Bytes gathered before a chunk is handed to the response.
const CHUNK_BYTES: usize = 32 * 1024;
/// Chunks buffered between the reader and the socket.
const CHUNKS_IN_FLIGHT: usize = 4;

/// The header row of each kind's CSV.
fn columns(kind: ExportKind) -> &'static str {
    match kind {
        ExportKind::Buys => {
            "buy_count,user_id,promotion_id,product_id,product_quantity,unit_price_cents,ip_address,timestamp,received_at,timestamp_source"
        }
        ExportKind::Views => {
            "view_count,user_id,promotion_id,product_id,ip_address,timestamp,received_at,timestamp_source"
        }
        ExportKind::Refunds => {
            "refund_count,buy_count,user_id,promotion_id,product_id,refunded_units,refunded_cents,ip_address,timestamp,received_at,timestamp_source"
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Ndjson,
}

/// An optional integer as a CSV field: empty when absent.
fn optional(value: Option<i64>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

impl Format {
    /// Append one row. No CSV field can hold a comma, quote or newline (integers, IP addresses,
    /// RFC 3339 times, header names), so none needs quoting.
    fn write(self, out: &mut String, row: &ExportRow) {
        let _ = match (self, row) {
            (Format::Csv, ExportRow::Buy(r)) => writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{}",
                r.buy_count,
                r.user_id,
                r.promotion_id,
                r.product_id,
                r.product_quantity,
                optional(r.unit_price_cents),
                r.ip_address,
                format_micros(r.timestamp_us),
                format_micros(r.received_at_us),
                r.timestamp_source
            ),
            (Format::Csv, ExportRow::View(r)) => writeln!(
                out,
                "{},{},{},{},{},{},{},{}",
                r.view_count,
                r.user_id,
                r.promotion_id,
                optional(r.product_id),
                r.ip_address,
                format_micros(r.timestamp_us),
                format_micros(r.received_at_us),
                r.timestamp_source
            ),
            (Format::Csv, ExportRow::Refund(r)) => writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{},{}",
                r.refund_count,
                r.buy_count,
                r.user_id,
                r.promotion_id,
                r.product_id,
                r.refunded_units,
                r.refunded_cents,
                r.ip_address,
                format_micros(r.timestamp_us),
                format_micros(r.received_at_us),
                r.timestamp_source
            ),
            (Format::Ndjson, ExportRow::Buy(r)) => writeln!(
                out,
                "{}",
                serde_json::json!({
                    "buy_count": r.buy_count, "user_id": r.user_id, "promotion_id": r.promotion_id,
                    "product_id": r.product_id, "product_quantity": r.product_quantity,
                    "unit_price_cents": r.unit_price_cents, "ip_address": r.ip_address,
                    "timestamp": format_micros(r.timestamp_us), "received_at": format_micros(r.received_at_us),
                    "timestamp_source": r.timestamp_source,
                })
            ),
            (Format::Ndjson, ExportRow::View(r)) => writeln!(
                out,
                "{}",
                serde_json::json!({
                    "view_count": r.view_count, "user_id": r.user_id, "promotion_id": r.promotion_id,
                    "product_id": r.product_id, "ip_address": r.ip_address,
                    "timestamp": format_micros(r.timestamp_us), "received_at": format_micros(r.received_at_us),
                    "timestamp_source": r.timestamp_source,
                })
            ),
            (Format::Ndjson, ExportRow::Refund(r)) => writeln!(
                out,
                "{}",
                serde_json::json!({
                    "refund_count": r.refund_count, "buy_count": r.buy_count, "user_id": r.user_id,
                    "promotion_id": r.promotion_id, "product_id": r.product_id,
                    "refunded_units": r.refunded_units, "refunded_cents": r.refunded_cents,
                    "ip_address": r.ip_address, "timestamp": format_micros(r.timestamp_us),
                    "received_at": format_micros(r.received_at_us), "timestamp_source": r.timestamp_source,
                })
            ),
        };
    }
}

/// Every stored field of the selected buys, views or refunds.
#[utoipa::path(
    get, path = "/export", tag = "analytics",
    params(
        ("kind" = Option<String>, Query, description = "`buys` (default), `views` or `refunds`"),
        ("format" = Option<String>, Query, description = "`csv` (default, with a header row) or `ndjson`"),
        ("promotion_id" = Option<i64>, Query, description = "Only this promotion"),
        ("since" = Option<String>, Query, format = DateTime, description = "RFC 3339: buys with timestamp at or after this time"),
        ("until" = Option<String>, Query, format = DateTime, description = "RFC 3339: buys with timestamp before this time"),
    ),
    responses(
        (status = 200, description = "Streamed in sequence order (of the kind). Buys: buy_count, user_id, promotion_id, product_id, product_quantity, unit_price_cents, ip_address, timestamp, received_at, timestamp_source. Views: view_count, user_id, promotion_id, product_id (empty / null when absent), ip_address, timestamp, received_at, timestamp_source. Refunds: refund_count, buy_count, user_id, promotion_id, product_id, refunded_units, refunded_cents, ip_address, timestamp, received_at, timestamp_source. Facts recorded after the request started are not included. If the store fails mid-stream, or the client stops reading for 30 s, the transfer is cut off (never silently truncated).", content(
            (String = "text/csv"),
            (String = "application/x-ndjson"),
        )),
        (status = 401, description = "Read keys are set and none was sent"),
        (status = 422, description = "A parameter is invalid", body = crate::http::error::ValidationErrors),
        (status = 503, description = "The store is unavailable, or 4 exports are already streaming (the most at once; the request waits up to 0.5 s for one to finish, then gets `Retry-After: 1`)"),
    )
)]
pub async fn export(State(state): State<AppState>, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let params = Params::parse(query.as_deref())?;
    let format = match params.choice("format", &["csv", "ndjson"])? {
        Some("ndjson") => Format::Ndjson,
        _ => Format::Csv,
    };
    let kind = match params.choice("kind", &["buys", "views", "refunds"])? {
        Some("views") => ExportKind::Views,
        Some("refunds") => ExportKind::Refunds,
        _ => ExportKind::Buys,
    };
    let filter = ExportFilter {
        kind,
        promotion_id: params.promotion_id()?,
        since_us: params.time("since")?,
        until_us: params.time("until")?,
    };
    let Ok(slot) = tokio::time::timeout(SLOT_WAIT, state.exports.clone().acquire_owned()).await else {
        return Err(ApiError::Busy(format!(
            "{MAX_EXPORTS} exports are already streaming, the most at once; retry when one has finished"
        )));
    };
    let slot = slot.expect("the export semaphore is never closed");
    // Fix the end now, so an export under constant writes still ends.
    let position = state.read_store(|store| store.position()).await?;
    let up_to = match kind {
        ExportKind::Buys => position.buys,
        ExportKind::Views => position.views,
        ExportKind::Refunds => position.refunds,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(CHUNKS_IN_FLIGHT);
    // Set once the last chunk is handed over. A stream that ends without it was cut off (the
    // store failed, or the client stopped reading) and must end in an error, which aborts the
    // connection: ending it normally would send a well-formed, silently truncated response.
    let complete = Arc::new(AtomicBool::new(false));
    let store = state.store.clone();
    let runtime = tokio::runtime::Handle::current();
    let mut shutdown = state.shutdown.clone();
    let stopping = state.shutdown.clone();
    // A chunk handed to the response, or false when the client went away or stopped reading, or
    // the service is shutting down (an export would otherwise hold the drain open to its end).
    let mut send = move |chunk| {
        runtime.block_on(async {
            tokio::select! {
                sent = tokio::time::timeout(STALL_TIMEOUT, tx.send(chunk)) => sent.is_ok_and(|sent| sent.is_ok()),
                _ = shutdown.wait_for(|stopping| *stopping) => false,
            }
        })
    };
    let completed = complete.clone();
    tokio::task::spawn_blocking(move || {
        // Held until the last chunk is handed over, or the export is cut off.
        let _slot = slot;
        let mut after = 0;
        let mut out = String::new();
        if format == Format::Csv {
            out.push_str(columns(kind));
            out.push('\n');
        }
        loop {
            if *stopping.borrow() {
                tracing::info!("shutting down; cutting the export off");
                return;
            }
            let to = (after + PAGE).min(up_to);
            if to > after {
                match store.export_page(&filter, after, to, PAGE as usize) {
                    Ok(rows) => rows.iter().for_each(|row| format.write(&mut out, row)),
                    Err(e) => {
                        tracing::error!(error = %e, "export failed mid-stream; cutting the response off");
                        return;
                    }
                }
            }
            after = to;
            let done = after >= up_to;
            // Filtered pages can be small or empty: send when there is a chunk's worth, or at the end.
            if (out.len() >= CHUNK_BYTES || done) && !out.is_empty() && !send(Bytes::from(std::mem::take(&mut out))) {
                tracing::info!("export client gone, not reading, or shutting down; cutting the response off");
                return;
            }
            if done {
                completed.store(true, Ordering::Release);
                return;
            }
        }
    });
    let chunks = futures_util::stream::unfold(Some(rx), move |rx| {
        let complete = complete.clone();
        async move {
            let mut rx = rx?;
            match rx.recv().await {
                Some(chunk) => Some((Ok(chunk), Some(rx))),
                None if complete.load(Ordering::Acquire) => None,
                None => Some((Err(std::io::Error::other("the export was cut off")), None)),
            }
        }
    });
    let body = Body::from_stream(chunks);
    let name = match kind {
        ExportKind::Buys => "buys",
        ExportKind::Views => "views",
        ExportKind::Refunds => "refunds",
    };
    let (content_type, extension) = match format {
        Format::Csv => ("text/csv; charset=utf-8", "csv"),
        Format::Ndjson => ("application/x-ndjson", "ndjson"),
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}.{extension}\"")),
        ],
        body,
    )
        .into_response())
}
