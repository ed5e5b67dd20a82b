//! Reads of the views. Each reads aggregates (a bounded number of rows) plus, at most, the facts
//! of the partial second at a window's edge from the log ([`Edge`]), up to the views' last
//! applied fact. A read runs in one read transaction, so it sees one applied prefix of the log.

use std::sync::LazyLock;

use rusqlite::{Connection, OptionalExtension, params};

use crate::store::log::{FactLog, Position, join_halves};
use crate::store::views::deltas::{US, window_edges};
use crate::store::{
    Bucket, Counts, Customer, CustomerOrder, ProductCount, PromotionOrder, PromotionStats, PromotionSummary,
    StoreError, TimingGrid, Window,
};

/// The sums of a window over the rollups of one scope (`{table}` and `{scope}` filled in): the
/// whole seconds before the first minute, the minutes before the first hour, the hours after.
/// Revenue is summed as two 32-bit halves, which cannot overflow (SQLite's sum would fail), and
/// joined and saturated in Rust.
const RECENT: &str = "
    WITH parts (buys, units, high, low) AS (
        SELECT coalesce(sum(buys), 0), coalesce(sum(units), 0), coalesce(sum(revenue_cents >> 32), 0),
               coalesce(sum(revenue_cents & 4294967295), 0)
        FROM {table} WHERE {scope} granularity_s = 1 AND bucket_s >= ?1 AND bucket_s < ?2
        UNION ALL SELECT coalesce(sum(buys), 0), coalesce(sum(units), 0), coalesce(sum(revenue_cents >> 32), 0),
               coalesce(sum(revenue_cents & 4294967295), 0)
        FROM {table} WHERE {scope} granularity_s = 60 AND bucket_s >= ?2 AND bucket_s < ?3
        UNION ALL SELECT coalesce(sum(buys), 0), coalesce(sum(units), 0), coalesce(sum(revenue_cents >> 32), 0),
               coalesce(sum(revenue_cents & 4294967295), 0)
        FROM {table} WHERE {scope} granularity_s = 3600 AND bucket_s >= ?3)
    SELECT sum(buys), sum(units), sum(high), sum(low) FROM parts";

fn recent_sql(table: &str, scope: &str) -> String {
    RECENT.replace("{table}", table).replace("{scope}", scope)
}

/// The window sums over every buy.
static RECENT_ALL: LazyLock<String> = LazyLock::new(|| recent_sql("rollup", ""));
// `INDEXED BY`: the table is keyed by bucket first (so commits touch few pages), and the planner
// would otherwise scan every promotion's buckets in the window (measured 0.33 ms instead of
// 0.02 ms per call on a 10-million-buy store).
/// The window sums over one promotion (?4).
static RECENT_PROMOTION: LazyLock<String> =
    LazyLock::new(|| recent_sql("promotion_rollup INDEXED BY promotion_rollup_by_promotion", "promotion_id = ?4 AND"));
/// The window's views over every promotion.
static RECENT_VIEWS_ALL: LazyLock<String> = LazyLock::new(|| recent_views_sql("view_rollup", ""));
/// The window's views of one promotion (?4).
static RECENT_VIEWS: LazyLock<String> = LazyLock::new(|| {
    recent_views_sql("promotion_view_rollup INDEXED BY promotion_view_rollup_by_promotion", "promotion_id = ?4 AND")
});

/// As [`RECENT`], for views.
fn recent_views_sql(table: &str, scope: &str) -> String {
    "WITH parts (views) AS (
        SELECT coalesce(sum(views), 0) FROM {table} WHERE {scope} granularity_s = 1 AND bucket_s >= ?1 AND bucket_s < ?2
        UNION ALL SELECT coalesce(sum(views), 0) FROM {table} WHERE {scope} granularity_s = 60 AND bucket_s >= ?2 AND bucket_s < ?3
        UNION ALL SELECT coalesce(sum(views), 0) FROM {table} WHERE {scope} granularity_s = 3600 AND bucket_s >= ?3)
     SELECT sum(views) FROM parts"
        .replace("{table}", table)
        .replace("{scope}", scope)
}

/// What a read of the views also needs: the partial second at a window's edge, counted to the
/// microsecond from the log (rollups hold whole seconds), over the facts the views have applied.
pub struct Edge<'a> {
    /// The log.
    pub log: &'a dyn FactLog,
    /// The last buy of the views' snapshot.
    pub applied: i64,
    /// The last view of the views' snapshot.
    pub views_applied: i64,
    /// The last refund of the views' snapshot.
    pub refunds_applied: i64,
}

impl Edge<'_> {
    /// The snapshot's place in the log.
    pub fn position(&self) -> Position {
        Position { buys: self.applied, views: self.views_applied, refunds: self.refunds_applied }
    }
}

/// Buys, units and revenue with `timestamp >= since_us`, over all buys or one promotion: the
/// partial second from the log, whole seconds, minutes and hours from the rollups.
fn recent(conn: &Connection, edge: &Edge, since_us: i64, promotion_id: Option<i64>) -> Result<Window, StoreError> {
    let (second, minute, hour) = window_edges(since_us);
    let read = |r: &rusqlite::Row| {
        Ok(Window { buys: r.get(0)?, units: r.get(1)?, revenue_cents: join_halves(r.get(2)?, r.get(3)?), views: 0 })
    };
    let whole = match promotion_id {
        None => conn.prepare_cached(&RECENT_ALL)?.query_row(params![second, minute, hour], read)?,
        Some(p) => conn.prepare_cached(&RECENT_PROMOTION)?.query_row(params![second, minute, hour, p], read)?,
    };
    let part = edge.log.between(since_us, second * US, promotion_id, edge.applied)?;
    Ok(Window {
        buys: whole.buys + part.buys,
        units: whole.units + part.units,
        revenue_cents: whole.revenue_cents.saturating_add(part.revenue_cents),
        views: 0,
    })
}

/// The last buy and view applied in this snapshot.
pub fn applied(conn: &Connection) -> Result<Position, StoreError> {
    Ok(conn
        .prepare_cached("SELECT seq, views_seq, refunds_seq FROM applied WHERE id = 1")?
        .query_row([], |r| Ok(Position { buys: r.get(0)?, views: r.get(1)?, refunds: r.get(2)? }))?)
}

/// Views with `timestamp >= since_us`, over all or one promotion: the partial second from the
/// log, the rest from the view rollups (as [`recent`] for buys).
pub fn recent_views(
    conn: &Connection,
    edge: &Edge,
    since_us: i64,
    promotion_id: Option<i64>,
) -> Result<i64, StoreError> {
    let (second, minute, hour) = window_edges(since_us);
    let whole: i64 = match promotion_id {
        None => conn.prepare_cached(&RECENT_VIEWS_ALL)?.query_row(params![second, minute, hour], |r| r.get(0))?,
        Some(p) => conn.prepare_cached(&RECENT_VIEWS)?.query_row(params![second, minute, hour, p], |r| r.get(0))?,
    };
    Ok(whole + edge.log.views_between(since_us, second * US, promotion_id, edge.views_applied)?)
}

/// Buys, units, revenue and views with `timestamp >= since_us` in one promotion.
fn window_since(conn: &Connection, edge: &Edge, since_us: i64, promotion_id: i64) -> Result<Window, StoreError> {
    let views = recent_views(conn, edge, since_us, Some(promotion_id))?;
    Ok(Window { views, ..recent(conn, edge, since_us, Some(promotion_id))? })
}

/// See [`crate::store::Store::counts`].
pub fn counts(conn: &Connection, edge: &Edge, since_us: i64, promotion_id: Option<i64>) -> Result<Counts, StoreError> {
    let (total_buys, total_units) = match promotion_id {
        None => conn
            .prepare_cached("SELECT seq, total_units FROM applied WHERE id = 1")?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?,
        Some(p) => conn
            .prepare_cached("SELECT total_buys, total_units FROM promotion_totals WHERE promotion_id = ?1")?
            .query_row([p], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
            .unwrap_or((0, 0)),
    };
    let recent = recent(conn, edge, since_us, promotion_id)?;
    Ok(Counts { total_buys, total_units, recent_buys: recent.buys, recent_units: recent.units })
}

const RANKED_COLUMNS: &str =
    "promotion_id, total_buys, total_units, revenue_cents, views, unique_viewers, converted_viewers, refunded_cents";

/// A `promotion_totals` row selected with [`RANKED_COLUMNS`], without its recent buys.
fn ranked_row(r: &rusqlite::Row) -> rusqlite::Result<PromotionSummary> {
    Ok(PromotionSummary {
        promotion_id: r.get(0)?,
        total_buys: r.get(1)?,
        total_units: r.get(2)?,
        recent_buys: 0,
        revenue_cents: r.get(3)?,
        views: r.get(4)?,
        unique_viewers: r.get(5)?,
        converted_viewers: r.get(6)?,
        refunded_cents: r.get(7)?,
    })
}

/// The first `n` promotions in `order` (every promotion with `None`, in no order), without their
/// recent counts, and the number of promotions.
pub fn ranked(
    conn: &Connection,
    order: PromotionOrder,
    n: Option<i64>,
) -> Result<(Vec<PromotionSummary>, i64), StoreError> {
    let total: i64 = conn.prepare_cached("SELECT count(*) FROM promotion_totals")?.query_row([], |r| r.get(0))?;
    let by = match order {
        PromotionOrder::Buys => "total_buys",
        PromotionOrder::Units => "total_units",
        PromotionOrder::Revenue => "revenue_cents",
        // Refunds lower it: every promotion is a candidate (see `only_grows`).
        PromotionOrder::NetRevenue => "revenue_cents - refunded_cents",
        PromotionOrder::Views => "views",
        // A rate is not a column: every promotion is a candidate, ranked by the caller.
        PromotionOrder::ConversionRate => "promotion_id",
    };
    let sql = format!("SELECT {RANKED_COLUMNS} FROM promotion_totals ORDER BY {by} DESC, promotion_id LIMIT ?1");
    let page =
        conn.prepare_cached(&sql)?.query_map([n.unwrap_or(-1)], ranked_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok((page, total))
}

/// The totals of `promotion_id` in the views, if it has any buys or views there.
pub fn ranked_one(conn: &Connection, promotion_id: i64) -> Result<Option<PromotionSummary>, StoreError> {
    let sql = format!("SELECT {RANKED_COLUMNS} FROM promotion_totals WHERE promotion_id = ?1");
    Ok(conn.prepare_cached(&sql)?.query_row([promotion_id], ranked_row).optional()?)
}

/// `page` with each promotion's buys since `since_us`: the views' plus `tail_recent`'s (buys of
/// the log's tail in the window, by promotion).
pub fn with_recent(
    conn: &Connection,
    edge: &Edge,
    since_us: i64,
    mut page: Vec<PromotionSummary>,
    tail_recent: &std::collections::HashMap<i64, i64>,
) -> Result<Vec<PromotionSummary>, StoreError> {
    // The partial second at the window's edge is the same for every promotion: one log query.
    let (second, minute, hour) = window_edges(since_us);
    let edges: std::collections::HashMap<i64, i64> = edge
        .log
        .between_by_promotion(since_us, second * US, edge.applied)?
        .into_iter()
        .map(|(promotion, buys, _)| (promotion, buys))
        .collect();
    let mut rollups = conn.prepare_cached(&RECENT_PROMOTION)?;
    for promotion in &mut page {
        let id = promotion.promotion_id;
        let whole: i64 = rollups.query_row(params![second, minute, hour, id], |r| r.get(0))?;
        promotion.recent_buys =
            whole + edges.get(&id).copied().unwrap_or(0) + tail_recent.get(&id).copied().unwrap_or(0);
    }
    Ok(page)
}

/// See [`crate::store::Store::promotion_stats`].
pub fn promotion_stats(
    conn: &Connection,
    edge: &Edge,
    promotion_id: i64,
    (since_us, previous_since_us): (i64, i64),
) -> Result<PromotionStats, StoreError> {
    let totals = conn
        .prepare_cached(
            "SELECT revenue_cents, unique_buyers, first_buy_us, last_buy_us, views, unique_viewers,
                    converted_viewers, priced_buys, repeat_buyers, new_customers, total_buys, total_units,
                    refunded_units, refunded_cents
             FROM promotion_totals WHERE promotion_id = ?1",
        )?
        .query_row([promotion_id], |r| {
            Ok(PromotionStats {
                revenue_cents: r.get(0)?,
                unique_buyers: r.get(1)?,
                first_buy_us: r.get(2)?,
                last_buy_us: r.get(3)?,
                views: r.get(4)?,
                unique_viewers: r.get(5)?,
                converted_viewers: r.get(6)?,
                priced_buys: r.get(7)?,
                repeat_buyers: r.get(8)?,
                new_customers: r.get(9)?,
                counts: Counts { total_buys: r.get(10)?, total_units: r.get(11)?, ..Counts::default() },
                refunded_units: r.get(12)?,
                refunded_cents: r.get(13)?,
                ..PromotionStats::default()
            })
        })
        .optional()?;
    let Some(totals) = totals else {
        return Ok(PromotionStats::default());
    };
    let mut stmt = conn.prepare_cached(
        "SELECT product_id, buys, units FROM promotion_products WHERE promotion_id = ?1
         ORDER BY units DESC, product_id LIMIT 10",
    )?;
    let top_products = stmt
        .query_map([promotion_id], |r| Ok(ProductCount { product_id: r.get(0)?, buys: r.get(1)?, units: r.get(2)? }))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let recent = window_since(conn, edge, since_us, promotion_id)?;
    // The previous window is what is in the longer window and not in this one.
    let previous = window_since(conn, edge, previous_since_us, promotion_id)?.minus(recent);
    let counts = Counts { recent_buys: recent.buys, recent_units: recent.units, ..totals.counts };
    Ok(PromotionStats {
        counts,
        top_products,
        recent_views: recent.views,
        recent_revenue_cents: recent.revenue_cents,
        previous,
        ..totals
    })
}

/// See [`crate::store::Store::timeseries`]: the buy rollups and the view rollups, merged by
/// bucket.
pub fn timeseries(
    conn: &Connection,
    granularity_s: i64,
    from_s: i64,
    to_s: i64,
    promotion_id: Option<i64>,
) -> Result<Vec<Bucket>, StoreError> {
    let read = |r: &rusqlite::Row| {
        Ok(Bucket { start_s: r.get(0)?, buys: r.get(1)?, units: r.get(2)?, views: 0, revenue_cents: r.get(3)? })
    };
    let bought = match promotion_id {
        None => conn
            .prepare_cached(
                "SELECT bucket_s, buys, units, revenue_cents FROM rollup
                 WHERE granularity_s = ?1 AND bucket_s >= ?2 AND bucket_s <= ?3 ORDER BY bucket_s",
            )?
            .query_map(params![granularity_s, from_s, to_s], read)?
            .collect::<rusqlite::Result<Vec<_>>>(),
        Some(p) => conn
            .prepare_cached(
                "SELECT bucket_s, buys, units, revenue_cents FROM promotion_rollup INDEXED BY promotion_rollup_by_promotion
                 WHERE promotion_id = ?4 AND granularity_s = ?1 AND bucket_s >= ?2 AND bucket_s <= ?3
                 ORDER BY bucket_s",
            )?
            .query_map(params![granularity_s, from_s, to_s, p], read)?
            .collect::<rusqlite::Result<Vec<_>>>(),
    }?;
    let read_views = |r: &rusqlite::Row| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?));
    let viewed = match promotion_id {
        None => conn
            .prepare_cached(
                "SELECT bucket_s, views FROM view_rollup WHERE granularity_s = ?1 AND bucket_s >= ?2 AND bucket_s <= ?3",
            )?
            .query_map(params![granularity_s, from_s, to_s], read_views)?
            .collect::<rusqlite::Result<Vec<_>>>(),
        Some(p) => conn
            .prepare_cached(
                "SELECT bucket_s, views FROM promotion_view_rollup INDEXED BY promotion_view_rollup_by_promotion
                 WHERE promotion_id = ?4 AND granularity_s = ?1 AND bucket_s >= ?2 AND bucket_s <= ?3",
            )?
            .query_map(params![granularity_s, from_s, to_s, p], read_views)?
            .collect::<rusqlite::Result<Vec<_>>>(),
    }?;
    let mut buckets: std::collections::BTreeMap<i64, Bucket> = bought.into_iter().map(|b| (b.start_s, b)).collect();
    for (start_s, views) in viewed {
        buckets.entry(start_s).or_insert(Bucket { start_s, buys: 0, units: 0, views: 0, revenue_cents: 0 }).views +=
            views;
    }
    Ok(buckets.into_values().collect())
}

/// A `promotion_buyers` row (user, buys, units, revenue, first, last, refunded) as a customer.
fn customer_row(r: &rusqlite::Row) -> rusqlite::Result<Customer> {
    Ok(Customer {
        user_id: r.get(0)?,
        buys: r.get(1)?,
        units: r.get(2)?,
        revenue_cents: r.get(3)?,
        refunded_units: r.get(6)?,
        first_buy_us: r.get(4)?,
        last_buy_us: r.get(5)?,
    })
}

/// The first `n` buyers of `promotion_id` in `order`, read from the index of that order.
pub fn top_customers(
    conn: &Connection,
    promotion_id: i64,
    order: CustomerOrder,
    n: i64,
) -> Result<Vec<Customer>, StoreError> {
    let sql = match order {
        CustomerOrder::Revenue => {
            "SELECT user_id, buys, units, revenue_cents, first_buy_us, last_buy_us, refunded_units
             FROM promotion_buyers INDEXED BY promotion_buyers_by_revenue
             WHERE promotion_id = ?1 ORDER BY revenue_cents DESC, user_id LIMIT ?2"
        }
        CustomerOrder::Units => {
            "SELECT user_id, buys, units, revenue_cents, first_buy_us, last_buy_us, refunded_units
             FROM promotion_buyers INDEXED BY promotion_buyers_by_units
             WHERE promotion_id = ?1 ORDER BY units DESC, user_id LIMIT ?2"
        }
        CustomerOrder::Buys => {
            "SELECT user_id, buys, units, revenue_cents, first_buy_us, last_buy_us, refunded_units
             FROM promotion_buyers INDEXED BY promotion_buyers_by_buys
             WHERE promotion_id = ?1 ORDER BY buys DESC, user_id LIMIT ?2"
        }
    };
    Ok(conn.prepare_cached(sql)?.query_map(params![promotion_id, n], customer_row)?.collect::<rusqlite::Result<_>>()?)
}

/// One buyer's row in `promotion_id`, if the views know them there.
pub fn customer(conn: &Connection, promotion_id: i64, user_id: i64) -> Result<Option<Customer>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT user_id, buys, units, revenue_cents, first_buy_us, last_buy_us, refunded_units
             FROM promotion_buyers WHERE user_id = ?1 AND promotion_id = ?2",
        )?
        .query_row(params![user_id, promotion_id], customer_row)
        .optional()?)
}

/// The number of buyers of `promotion_id` in the views.
pub fn buyers(conn: &Connection, promotion_id: i64) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached("SELECT unique_buyers FROM promotion_totals WHERE promotion_id = ?1")?
        .query_row([promotion_id], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// Buys and units with `timestamp >= since_us` in the views' snapshot (plus the partial second
/// from the log), summed into `grid`'s cells: seconds up to the first whole minute, minutes up
/// to the first whole hour, then whole hours. A UTC hour that the zone's offset splits between
/// two local hours (a half-hour zone) is read as its minutes, summed by local hour in SQLite.
/// Reading a week of one promotion by minutes was 10,080 rows, each put through the time zone:
/// at 10 M buys p99 90 ms; by hours it is 168 rows.
pub fn timing(
    conn: &Connection,
    edge: &Edge,
    since_us: i64,
    promotion_id: Option<i64>,
    cells: &mut [(i64, i64)],
    grid: &dyn TimingGrid,
) -> Result<(), StoreError> {
    let (second, minute, hour) = window_edges(since_us);
    let mut add = |at_us: i64, buys: i64, units: i64| {
        if let Some(cell) = cells.get_mut(grid.cell_of(at_us)) {
            cell.0 += buys;
            cell.1 += units;
        }
    };
    // The partial second lies in one second, so in one cell.
    let part = edge.log.between(since_us, second * US, promotion_id, edge.applied)?;
    add(since_us, part.buys, part.units);
    // The scope's table and filter, as in RECENT: every buy, or one promotion (?4).
    let (table, scope) = match promotion_id {
        None => ("rollup", ""),
        Some(_) => ("promotion_rollup INDEXED BY promotion_rollup_by_promotion", "promotion_id = ?4 AND"),
    };
    // Rows of (bucket or local hour, buys, units) of `template` (three parameters) in the scope.
    let rows = |template: &str, a: i64, b: i64, c: i64| -> rusqlite::Result<Vec<(i64, i64, i64)>> {
        let read = |r: &rusqlite::Row| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?));
        let mut statement = conn.prepare_cached(&template.replace("{table}", table).replace("{scope}", scope))?;
        match promotion_id {
            None => statement.query_map(params![a, b, c], read)?.collect(),
            Some(p) => statement.query_map(params![a, b, c, p], read)?.collect(),
        }
    };
    // The buckets of `granularity` from `from` to `to` (seconds).
    let buckets = |granularity: i64, from: i64, to: i64| {
        rows(
            "SELECT bucket_s, buys, units FROM {table}
             WHERE {scope} granularity_s = ?1 AND bucket_s >= ?2 AND bucket_s < ?3",
            granularity,
            from,
            to,
        )
    };
    // The minutes of `from..to` (seconds) summed by local hour at the offset `offset`: rows of
    // (local hour since the epoch, buys, units).
    let local_hours = |from: i64, to: i64, offset: i64| {
        rows(
            "SELECT (bucket_s + ?3) / 3600, sum(buys), sum(units) FROM {table}
             WHERE {scope} granularity_s = 60 AND bucket_s >= ?1 AND bucket_s < ?2 GROUP BY 1",
            from,
            to,
            offset,
        )
    };
    for (granularity, from, to) in [(1, second, minute), (60, minute, hour)] {
        for (bucket_s, buys, units) in buckets(granularity, from, to)? {
            add(bucket_s.saturating_mul(US), buys, units);
        }
    }
    // Split hours in runs of consecutive hours with one offset (`None`: it changes inside the
    // hour, which is read minute by minute), so that every instant of a run has its offset.
    let mut runs: Vec<(i64, i64, Option<i64>)> = Vec::new();
    for (bucket_s, buys, units) in buckets(3600, hour, i64::MAX)? {
        let offset = grid.offset_over_hour(bucket_s);
        if offset.is_some_and(|o| o % 3600 == 0) {
            add(bucket_s.saturating_mul(US), buys, units);
            continue;
        }
        let end = bucket_s.saturating_add(3600);
        match runs.last_mut() {
            Some(run) if run.1 == bucket_s && run.2 == offset && offset.is_some() => run.1 = end,
            _ => runs.push((bucket_s, end, offset)),
        }
    }
    for (from, to, offset) in runs {
        match offset {
            // A local hour's first instant in the run (the run's start for the first of them).
            Some(offset) if from.saturating_add(offset) >= 0 => {
                for (local_hour, buys, units) in local_hours(from, to, offset)? {
                    add((local_hour * 3600 - offset).max(from).saturating_mul(US), buys, units);
                }
            }
            _ => {
                for (bucket_s, buys, units) in buckets(60, from, to)? {
                    add(bucket_s.saturating_mul(US), buys, units);
                }
            }
        }
    }
    Ok(())
}
