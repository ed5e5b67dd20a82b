//! Reads of the log: export pages, and what the views read (facts in sequence order, the tail
//! after the views' snapshot, the partial second at a window's edge through the timestamp index).

use rusqlite::{Connection, params};

use crate::domain::{Buy, Quantity};
use crate::page_view::PageView;
use crate::store::log::{Fact, RefundFact, Slice, Tail, ViewFact, join_halves};
use crate::store::{BuyRow, ExportFilter, ExportKind, ExportRow, RefundRow, ViewRow};

/// See [`crate::store::Store::export_page`].
pub fn export_page(
    conn: &Connection,
    filter: &ExportFilter,
    after: i64,
    up_to: i64,
    limit: usize,
) -> rusqlite::Result<Vec<ExportRow>> {
    let values = params![after, up_to, filter.promotion_id, filter.since_us, filter.until_us, limit as i64];
    // The same selection of each kind: a range of its numbers, then the filter.
    let select = |columns: &str, table: &str, number: &str| {
        format!(
            "SELECT {columns} FROM {table}
             WHERE {number} > ?1 AND {number} <= ?2
               AND (?3 IS NULL OR promotion_id = ?3)
               AND (?4 IS NULL OR timestamp_us >= ?4)
               AND (?5 IS NULL OR timestamp_us < ?5)
             ORDER BY {number} LIMIT ?6"
        )
    };
    match filter.kind {
        ExportKind::Buys => {
            let sql = select(
                "buy_count, user_id, promotion_id, product_id, product_quantity, unit_price_cents,
                 ip_address, timestamp_us, received_at_us, timestamp_source",
                "buys",
                "buy_count",
            );
            conn.prepare_cached(&sql)?
                .query_map(values, |r| {
                    Ok(ExportRow::Buy(BuyRow {
                        buy_count: r.get(0)?,
                        user_id: r.get(1)?,
                        promotion_id: r.get(2)?,
                        product_id: r.get(3)?,
                        product_quantity: r.get(4)?,
                        unit_price_cents: r.get(5)?,
                        ip_address: r.get(6)?,
                        timestamp_us: r.get(7)?,
                        received_at_us: r.get(8)?,
                        timestamp_source: r.get(9)?,
                    }))
                })?
                .collect()
        }
        ExportKind::Views => {
            let sql = select(
                "view_count, user_id, promotion_id, product_id, ip_address, timestamp_us, received_at_us, timestamp_source",
                "views",
                "view_count",
            );
            conn.prepare_cached(&sql)?
                .query_map(values, |r| {
                    Ok(ExportRow::View(ViewRow {
                        view_count: r.get(0)?,
                        user_id: r.get(1)?,
                        promotion_id: r.get(2)?,
                        product_id: r.get(3)?,
                        ip_address: r.get(4)?,
                        timestamp_us: r.get(5)?,
                        received_at_us: r.get(6)?,
                        timestamp_source: r.get(7)?,
                    }))
                })?
                .collect()
        }
        ExportKind::Refunds => {
            let sql = select(
                "refund_count, buy_count, user_id, promotion_id, product_id, refunded_units, refunded_cents,
                 ip_address, timestamp_us, received_at_us, timestamp_source",
                "refunds",
                "refund_count",
            );
            conn.prepare_cached(&sql)?
                .query_map(values, |r| {
                    Ok(ExportRow::Refund(RefundRow {
                        refund_count: r.get(0)?,
                        buy_count: r.get(1)?,
                        user_id: r.get(2)?,
                        promotion_id: r.get(3)?,
                        product_id: r.get(4)?,
                        refunded_units: r.get(5)?,
                        refunded_cents: r.get(6)?,
                        ip_address: r.get(7)?,
                        timestamp_us: r.get(8)?,
                        received_at_us: r.get(9)?,
                        timestamp_source: r.get(10)?,
                    }))
                })?
                .collect()
        }
    }
}

/// See [`crate::store::log::FactLog::facts_after`]: a range of the buys' primary key.
pub fn facts_after(conn: &Connection, after: i64, limit: usize) -> rusqlite::Result<Vec<Fact>> {
    let mut stmt = conn.prepare_cached(
        "SELECT buy_count, user_id, promotion_id, product_id, product_quantity, unit_price_cents, timestamp_us
         FROM buys WHERE buy_count > ?1 ORDER BY buy_count LIMIT ?2",
    )?;
    stmt.query_map(params![after, limit as i64], fact)?.collect()
}

/// See [`crate::store::log::FactLog::facts_in`]: a range of the primary key.
pub fn facts_in(conn: &Connection, after: i64, up_to: i64, promotion_id: Option<i64>) -> rusqlite::Result<Vec<Fact>> {
    let mut stmt = conn.prepare_cached(
        "SELECT buy_count, user_id, promotion_id, product_id, product_quantity, unit_price_cents, timestamp_us
         FROM buys WHERE buy_count > ?1 AND buy_count <= ?2 AND (?3 IS NULL OR promotion_id = ?3)
         ORDER BY buy_count",
    )?;
    stmt.query_map(params![after, up_to, promotion_id], fact)?.collect()
}

/// A row of `buys` selected as in [`facts_after`], as a fact.
fn fact(r: &rusqlite::Row) -> rusqlite::Result<Fact> {
    let quantity: i64 = r.get(4)?;
    Ok(Fact {
        seq: r.get(0)?,
        buy: Buy {
            user_id: r.get(1)?,
            promotion_id: r.get(2)?,
            product_id: r.get(3)?,
            quantity: Quantity::new(quantity).ok_or(rusqlite::Error::IntegralValueOutOfRange(4, quantity))?,
            unit_price_cents: r.get(5)?,
        },
        timestamp_us: r.get(6)?,
    })
}

/// See [`crate::store::log::FactLog::between`]: through the timestamp index.
pub fn between(
    conn: &Connection,
    from_us: i64,
    to_us: i64,
    promotion_id: Option<i64>,
    up_to: i64,
) -> rusqlite::Result<Slice> {
    // Revenue is summed in two halves of 32 bits, which cannot overflow, and saturated here
    // (SQLite's sum fails on overflow; a product that overflows is saturated per buy).
    conn.prepare_cached(
        "WITH picked (units, revenue) AS (
             SELECT product_quantity, CASE WHEN unit_price_cents > 9223372036854775807 / product_quantity
                 THEN 9223372036854775807 ELSE coalesce(unit_price_cents * product_quantity, 0) END
             FROM buys
             WHERE timestamp_us >= ?1 AND timestamp_us < ?2 AND buy_count <= ?3 AND (?4 IS NULL OR promotion_id = ?4))
         SELECT count(*), coalesce(sum(units), 0), coalesce(sum(revenue >> 32), 0), coalesce(sum(revenue & 4294967295), 0)
         FROM picked",
    )?
    .query_row(params![from_us, to_us, up_to, promotion_id], |r| {
        Ok(Slice { buys: r.get(0)?, units: r.get(1)?, revenue_cents: join_halves(r.get(2)?, r.get(3)?) })
    })
}

/// See [`crate::store::log::FactLog::between_by_promotion`].
pub fn between_by_promotion(
    conn: &Connection,
    from_us: i64,
    to_us: i64,
    up_to: i64,
) -> rusqlite::Result<Vec<(i64, i64, i64)>> {
    conn.prepare_cached(
        "SELECT promotion_id, count(*), sum(product_quantity) FROM buys
         WHERE timestamp_us >= ?1 AND timestamp_us < ?2 AND buy_count <= ?3 GROUP BY promotion_id",
    )?
    .query_map(params![from_us, to_us, up_to], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
    .collect()
}

/// See [`crate::store::log::FactLog::tail`]: a range of the primary key after `after` (the
/// counter's total read in the same statement, so in the same snapshot).
pub fn tail(conn: &Connection, after: i64, since_us: i64, promotion_id: Option<i64>) -> rusqlite::Result<Tail> {
    conn.prepare_cached(
        "SELECT (SELECT total FROM counter WHERE id = 1), count(*), coalesce(sum(product_quantity), 0),
                coalesce(sum(timestamp_us >= ?2), 0),
                coalesce(sum(CASE WHEN timestamp_us >= ?2 THEN product_quantity ELSE 0 END), 0)
         FROM buys WHERE buy_count > ?1 AND (?3 IS NULL OR promotion_id = ?3)",
    )?
    .query_row(params![after, since_us, promotion_id], |r| {
        Ok(Tail {
            last_seq: r.get(0)?,
            buys: r.get(1)?,
            units: r.get(2)?,
            recent_buys: r.get(3)?,
            recent_units: r.get(4)?,
        })
    })
}

/// See [`crate::store::log::FactLog::views_after`]: a range of the views' primary key.
pub fn views_after(conn: &Connection, after: i64, limit: usize) -> rusqlite::Result<Vec<ViewFact>> {
    let mut stmt = conn.prepare_cached(
        "SELECT view_count, user_id, promotion_id, product_id, timestamp_us
         FROM views WHERE view_count > ?1 ORDER BY view_count LIMIT ?2",
    )?;
    stmt.query_map(params![after, limit as i64], view_fact)?.collect()
}

/// See [`crate::store::log::FactLog::views_in`]: a range of the primary key.
pub fn views_in(
    conn: &Connection,
    after: i64,
    up_to: i64,
    promotion_id: Option<i64>,
) -> rusqlite::Result<Vec<ViewFact>> {
    let mut stmt = conn.prepare_cached(
        "SELECT view_count, user_id, promotion_id, product_id, timestamp_us
         FROM views WHERE view_count > ?1 AND view_count <= ?2 AND (?3 IS NULL OR promotion_id = ?3)
         ORDER BY view_count",
    )?;
    stmt.query_map(params![after, up_to, promotion_id], view_fact)?.collect()
}

/// See [`crate::store::log::FactLog::refunds_in`]: a range of the primary key.
pub fn refunds_in(
    conn: &Connection,
    after: i64,
    up_to: i64,
    promotion_id: Option<i64>,
    limit: usize,
) -> rusqlite::Result<Vec<RefundFact>> {
    let mut stmt = conn.prepare_cached(
        "SELECT refund_count, buy_count, user_id, promotion_id, product_id, refunded_units, refunded_cents, timestamp_us
         FROM refunds WHERE refund_count > ?1 AND refund_count <= ?2 AND (?3 IS NULL OR promotion_id = ?3)
         ORDER BY refund_count LIMIT ?4",
    )?;
    stmt.query_map(params![after, up_to, promotion_id, i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
        Ok(RefundFact {
            seq: r.get(0)?,
            buy_count: r.get(1)?,
            user_id: r.get(2)?,
            promotion_id: r.get(3)?,
            product_id: r.get(4)?,
            units: r.get(5)?,
            cents: r.get(6)?,
            timestamp_us: r.get(7)?,
        })
    })?
    .collect()
}

/// A row of `views` selected as in [`views_after`], as a fact.
fn view_fact(r: &rusqlite::Row) -> rusqlite::Result<ViewFact> {
    Ok(ViewFact {
        seq: r.get(0)?,
        view: PageView { user_id: r.get(1)?, promotion_id: r.get(2)?, product_id: r.get(3)? },
        timestamp_us: r.get(4)?,
    })
}

/// See [`crate::store::log::FactLog::views_between`]: through the timestamp index.
pub fn views_between(
    conn: &Connection,
    from_us: i64,
    to_us: i64,
    promotion_id: Option<i64>,
    up_to: i64,
) -> rusqlite::Result<i64> {
    conn.prepare_cached(
        "SELECT count(*) FROM views
         WHERE timestamp_us >= ?1 AND timestamp_us < ?2 AND view_count <= ?3 AND (?4 IS NULL OR promotion_id = ?4)",
    )?
    .query_row(params![from_us, to_us, up_to, promotion_id], |r| r.get(0))
}
