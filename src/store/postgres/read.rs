//! Analytics queries, the same as the SQLite store's: each reads aggregates (a bounded number of
//! rows) plus, at most, the buys of the partial second at a window's edge through the timestamp
//! index. A read that needs several statements runs them in one REPEATABLE READ transaction, so it
//! sees one snapshot; a single statement always does.
//!
//! Aggregate rows are split by writer slot (see `write.rs`), so every read sums over slots. Per
//! promotion buckets are read from the view `promotion_buckets`: the rollup rows and the current
//! bucket of each granularity kept in the totals rows.
//! PostgreSQL sums BIGINTs into NUMERIC, hence the `CAST(… AS BIGINT)` on every sum; revenue
//! saturates at the BIGINT maximum, as each row does.

use std::collections::HashMap;

use postgres::{Client, IsolationLevel, Statement};

use crate::domain::{Buy, Quantity};
use crate::store::aggregate::{US, window_edges};
use crate::store::log::{Fact, Tail};
use crate::store::{Bucket, Counts, ExportFilter, ExportRow, ProductCount, PromotionStats, PromotionSummary};

/// A read connection with the statements it has prepared so far.
pub struct ReadConn {
    /// The connection.
    pub client: Client,
    prepared: HashMap<&'static str, Statement>,
}

impl ReadConn {
    /// Wrap a fresh connection.
    pub fn new(client: Client) -> ReadConn {
        ReadConn { client, prepared: HashMap::new() }
    }

    /// `sql` prepared on this connection (once; later calls reuse it).
    fn statement(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.prepared.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql)?;
        self.prepared.insert(sql, statement.clone());
        Ok(statement)
    }

    /// Run `f` in a read-only REPEATABLE READ transaction: one snapshot for several statements.
    fn snapshot<T>(
        &mut self,
        f: impl FnOnce(&mut postgres::Transaction) -> Result<T, postgres::Error>,
    ) -> Result<T, postgres::Error> {
        let mut tx =
            self.client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start()?;
        let value = f(&mut tx)?;
        tx.commit()?;
        Ok(value)
    }
}

/// Totals and recent counts over all buys, in one statement (one snapshot).
const COUNTS_ALL: &str = "
    WITH parts (buys, units) AS (
        SELECT count(*), coalesce(sum(product_quantity), 0) FROM buys
            WHERE timestamp_us >= $1 AND timestamp_us < $2
        UNION ALL SELECT coalesce(sum(buys), 0), coalesce(sum(units), 0) FROM rollup
            WHERE granularity_s = 1 AND bucket_s >= $3 AND bucket_s < $4
        UNION ALL SELECT coalesce(sum(buys), 0), coalesce(sum(units), 0) FROM rollup
            WHERE granularity_s = 60 AND bucket_s >= $4 AND bucket_s < $5
        UNION ALL SELECT coalesce(sum(buys), 0), coalesce(sum(units), 0) FROM rollup
            WHERE granularity_s = 3600 AND bucket_s >= $5)
    SELECT (SELECT total FROM counter WHERE id = 1), (SELECT total_units FROM counter WHERE id = 1),
           CAST(sum(buys) AS BIGINT), CAST(sum(units) AS BIGINT)
    FROM parts";

/// The same for one promotion ($6).
const COUNTS_PROMOTION: &str = "
    WITH parts (buys, units) AS (
        SELECT count(*), coalesce(sum(product_quantity), 0) FROM buys
            WHERE timestamp_us >= $1 AND timestamp_us < $2 AND promotion_id = $6
        UNION ALL SELECT coalesce(sum(buys), 0), coalesce(sum(units), 0) FROM promotion_buckets
            WHERE promotion_id = $6 AND granularity_s = 1 AND bucket_s >= $3 AND bucket_s < $4
        UNION ALL SELECT coalesce(sum(buys), 0), coalesce(sum(units), 0) FROM promotion_buckets
            WHERE promotion_id = $6 AND granularity_s = 60 AND bucket_s >= $4 AND bucket_s < $5
        UNION ALL SELECT coalesce(sum(buys), 0), coalesce(sum(units), 0) FROM promotion_buckets
            WHERE promotion_id = $6 AND granularity_s = 3600 AND bucket_s >= $5)
    SELECT (SELECT CAST(coalesce(sum(total_buys), 0) AS BIGINT) FROM promotion_totals WHERE promotion_id = $6),
           (SELECT CAST(coalesce(sum(total_units), 0) AS BIGINT) FROM promotion_totals WHERE promotion_id = $6),
           CAST(sum(buys) AS BIGINT), CAST(sum(units) AS BIGINT)
    FROM parts";

/// Recent buys of every promotion of a page ($6), in one statement rather than one per promotion.
const RECENT_OF_PAGE: &str = "
    SELECT promotion_id, CAST(sum(buys) AS BIGINT) FROM (
        SELECT promotion_id, count(*) AS buys FROM buys
            WHERE timestamp_us >= $1 AND timestamp_us < $2 AND promotion_id = ANY(CAST($6 AS BIGINT[]))
            GROUP BY promotion_id
        UNION ALL SELECT promotion_id, sum(buys) FROM promotion_buckets
            WHERE promotion_id = ANY(CAST($6 AS BIGINT[])) AND granularity_s = 1 AND bucket_s >= $3 AND bucket_s < $4
            GROUP BY promotion_id
        UNION ALL SELECT promotion_id, sum(buys) FROM promotion_buckets
            WHERE promotion_id = ANY(CAST($6 AS BIGINT[])) AND granularity_s = 60 AND bucket_s >= $4 AND bucket_s < $5
            GROUP BY promotion_id
        UNION ALL SELECT promotion_id, sum(buys) FROM promotion_buckets
            WHERE promotion_id = ANY(CAST($6 AS BIGINT[])) AND granularity_s = 3600 AND bucket_s >= $5
            GROUP BY promotion_id) AS parts
    GROUP BY promotion_id";

const PROMOTION_COUNT: &str = "SELECT count(DISTINCT promotion_id) FROM promotion_totals";

const PROMOTION_PAGE: &str = "
    SELECT promotion_id, CAST(sum(total_buys) AS BIGINT) AS buys, CAST(sum(total_units) AS BIGINT),
           CAST(LEAST(sum(revenue_cents), 9223372036854775807) AS BIGINT)
    FROM promotion_totals GROUP BY promotion_id
    ORDER BY buys DESC, promotion_id LIMIT $1 OFFSET $2";

const PROMOTION_TOTALS: &str = "
    SELECT CAST(LEAST(sum(revenue_cents), 9223372036854775807) AS BIGINT), CAST(sum(unique_buyers) AS BIGINT),
           min(first_buy_us), max(last_buy_us)
    FROM promotion_totals WHERE promotion_id = $1 HAVING count(*) > 0";

const TOP_PRODUCTS: &str = "
    SELECT product_id, CAST(sum(buys) AS BIGINT), CAST(sum(units) AS BIGINT) AS u
    FROM promotion_products WHERE promotion_id = $1 GROUP BY product_id
    ORDER BY u DESC, product_id LIMIT 10";

const TIMESERIES_ALL: &str = "
    SELECT bucket_s, CAST(sum(buys) AS BIGINT), CAST(sum(units) AS BIGINT) FROM rollup
    WHERE granularity_s = $1 AND bucket_s >= $2 AND bucket_s <= $3 GROUP BY bucket_s ORDER BY bucket_s";

const TIMESERIES_PROMOTION: &str = "
    SELECT bucket_s, CAST(sum(buys) AS BIGINT), CAST(sum(units) AS BIGINT) FROM promotion_buckets
    WHERE promotion_id = $4 AND granularity_s = $1 AND bucket_s >= $2 AND bucket_s <= $3
    GROUP BY bucket_s ORDER BY bucket_s";

/// Optional filters are NULL when absent; the casts give the parameters a type where they are
/// only compared with NULL.
const EXPORT_PAGE: &str = "
    SELECT buy_count, user_id, promotion_id, product_id, product_quantity, unit_price_cents,
           ip_address, timestamp_us, received_at_us, timestamp_source
    FROM buys
    WHERE buy_count > $1 AND buy_count <= $2
      AND (CAST($3 AS BIGINT) IS NULL OR promotion_id = $3)
      AND (CAST($4 AS BIGINT) IS NULL OR timestamp_us >= $4)
      AND (CAST($5 AS BIGINT) IS NULL OR timestamp_us < $5)
    ORDER BY buy_count LIMIT $6";

/// Cheap proof that the store answers and holds our schema.
pub const PING: &str = "SELECT total FROM counter WHERE id = 1";

/// See [`crate::store::Store::counts`].
pub fn counts(conn: &mut ReadConn, since_us: i64, promotion_id: Option<i64>) -> Result<Counts, postgres::Error> {
    let (second, minute, hour) = window_edges(since_us);
    let (edge, second_start) = (since_us, second * US);
    let row = match promotion_id {
        None => {
            let statement = conn.statement(COUNTS_ALL)?;
            conn.client.query_one(&statement, &[&edge, &second_start, &second, &minute, &hour])?
        }
        Some(p) => {
            let statement = conn.statement(COUNTS_PROMOTION)?;
            conn.client.query_one(&statement, &[&edge, &second_start, &second, &minute, &hour, &p])?
        }
    };
    counts_of(&row)
}

/// Read the four columns of [`COUNTS_ALL`] or [`COUNTS_PROMOTION`].
fn counts_of(row: &postgres::Row) -> Result<Counts, postgres::Error> {
    Ok(Counts {
        total_buys: row.try_get(0)?,
        total_units: row.try_get(1)?,
        recent_buys: row.try_get(2)?,
        recent_units: row.try_get(3)?,
    })
}

/// See [`crate::store::Store::promotions`].
pub fn promotions(
    conn: &mut ReadConn,
    since_us: i64,
    limit: i64,
    offset: i64,
) -> Result<(Vec<PromotionSummary>, i64), postgres::Error> {
    let count = conn.statement(PROMOTION_COUNT)?;
    let page = conn.statement(PROMOTION_PAGE)?;
    let recent = conn.statement(RECENT_OF_PAGE)?;
    let (second, minute, hour) = window_edges(since_us);
    conn.snapshot(|tx| {
        let total: i64 = tx.query_one(&count, &[])?.try_get(0)?;
        let mut promotions = tx
            .query(&page, &[&limit, &offset])?
            .iter()
            .map(|r| {
                Ok(PromotionSummary {
                    promotion_id: r.try_get(0)?,
                    total_buys: r.try_get(1)?,
                    total_units: r.try_get(2)?,
                    recent_buys: 0,
                    revenue_cents: r.try_get(3)?,
                })
            })
            .collect::<Result<Vec<_>, postgres::Error>>()?;
        let ids: Vec<i64> = promotions.iter().map(|p| p.promotion_id).collect();
        let rows = tx.query(&recent, &[&since_us, &(second * US), &second, &minute, &hour, &ids])?;
        let recent = rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<HashMap<i64, i64>, postgres::Error>>()?;
        for p in &mut promotions {
            p.recent_buys = recent.get(&p.promotion_id).copied().unwrap_or(0);
        }
        Ok((promotions, total))
    })
}

/// See [`crate::store::Store::promotion_stats`].
pub fn promotion_stats(
    conn: &mut ReadConn,
    promotion_id: i64,
    since_us: i64,
) -> Result<PromotionStats, postgres::Error> {
    let totals = conn.statement(PROMOTION_TOTALS)?;
    let top = conn.statement(TOP_PRODUCTS)?;
    let counts = conn.statement(COUNTS_PROMOTION)?;
    let (second, minute, hour) = window_edges(since_us);
    conn.snapshot(|tx| {
        let Some(row) = tx.query_opt(&totals, &[&promotion_id])? else {
            return Ok(PromotionStats::default());
        };
        let top_products = tx
            .query(&top, &[&promotion_id])?
            .iter()
            .map(|r| Ok(ProductCount { product_id: r.try_get(0)?, buys: r.try_get(1)?, units: r.try_get(2)? }))
            .collect::<Result<_, postgres::Error>>()?;
        let c = tx.query_one(&counts, &[&since_us, &(second * US), &second, &minute, &hour, &promotion_id])?;
        Ok(PromotionStats {
            counts: counts_of(&c)?,
            revenue_cents: row.try_get(0)?,
            unique_buyers: row.try_get(1)?,
            first_buy_us: Some(row.try_get(2)?),
            last_buy_us: Some(row.try_get(3)?),
            top_products,
        })
    })
}

/// See [`crate::store::Store::timeseries`].
pub fn timeseries(
    conn: &mut ReadConn,
    granularity_s: i64,
    from_s: i64,
    to_s: i64,
    promotion_id: Option<i64>,
) -> Result<Vec<Bucket>, postgres::Error> {
    let rows = match promotion_id {
        None => {
            let statement = conn.statement(TIMESERIES_ALL)?;
            conn.client.query(&statement, &[&granularity_s, &from_s, &to_s])?
        }
        Some(p) => {
            let statement = conn.statement(TIMESERIES_PROMOTION)?;
            conn.client.query(&statement, &[&granularity_s, &from_s, &to_s, &p])?
        }
    };
    rows.iter().map(|r| Ok(Bucket { start_s: r.try_get(0)?, buys: r.try_get(1)?, units: r.try_get(2)? })).collect()
}

/// See [`crate::store::Store::export_page`].
pub fn export_page(
    conn: &mut ReadConn,
    filter: &ExportFilter,
    after: i64,
    up_to: i64,
    limit: usize,
) -> Result<Vec<ExportRow>, postgres::Error> {
    let statement = conn.statement(EXPORT_PAGE)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = conn
        .client
        .query(&statement, &[&after, &up_to, &filter.promotion_id, &filter.since_us, &filter.until_us, &limit])?;
    rows.iter()
        .map(|r| {
            Ok(ExportRow {
                buy_count: r.try_get(0)?,
                user_id: r.try_get(1)?,
                promotion_id: r.try_get(2)?,
                product_id: r.try_get(3)?,
                product_quantity: r.try_get(4)?,
                unit_price_cents: r.try_get(5)?,
                ip_address: r.try_get(6)?,
                timestamp_us: r.try_get(7)?,
                received_at_us: r.try_get(8)?,
                timestamp_source: r.try_get(9)?,
            })
        })
        .collect()
}

/// See [`crate::store::Store::ping`].
pub fn ping(conn: &mut ReadConn) -> Result<(), postgres::Error> {
    let statement = conn.statement(PING)?;
    conn.client.query_one(&statement, &[])?;
    Ok(())
}

const LAST_SEQ: &str = "SELECT total FROM counter WHERE id = 1";

const FACTS_AFTER: &str = "
    SELECT buy_count, user_id, promotion_id, product_id, product_quantity, unit_price_cents, timestamp_us
    FROM buys WHERE buy_count > $1 ORDER BY buy_count LIMIT $2";

const BETWEEN: &str = "
    SELECT count(*), CAST(coalesce(sum(product_quantity), 0) AS BIGINT) FROM buys
    WHERE timestamp_us >= $1 AND timestamp_us < $2 AND buy_count <= $3
      AND (CAST($4 AS BIGINT) IS NULL OR promotion_id = $4)";

/// See [`crate::store::log::FactLog::last_seq`].
pub fn last_seq(conn: &mut ReadConn) -> Result<i64, postgres::Error> {
    let statement = conn.statement(LAST_SEQ)?;
    conn.client.query_one(&statement, &[])?.try_get(0)
}

/// See [`crate::store::log::FactLog::facts_after`]. One statement, so one snapshot: since every
/// transaction takes its numbers from the counter row last and holds it to COMMIT, a snapshot that
/// sees a buy sees every buy numbered before it, and the answer has no gaps.
pub fn facts_after(conn: &mut ReadConn, after: i64, limit: usize) -> Result<Vec<Fact>, postgres::Error> {
    let statement = conn.statement(FACTS_AFTER)?;
    let rows = conn.client.query(&statement, &[&after, &(limit as i64)])?;
    rows.iter()
        .map(|r| {
            let quantity: i64 = r.try_get(4)?;
            Ok(Fact {
                seq: r.try_get(0)?,
                buy: Buy {
                    user_id: r.try_get(1)?,
                    promotion_id: r.try_get(2)?,
                    product_id: r.try_get(3)?,
                    // Stored by a commit that took it from a valid `Quantity`.
                    quantity: Quantity::new(quantity).unwrap_or(Quantity::ONE),
                    unit_price_cents: r.try_get(5)?,
                },
                timestamp_us: r.try_get(6)?,
            })
        })
        .collect()
}

/// See [`crate::store::log::FactLog::between`]: through the timestamp index.
pub fn between(
    conn: &mut ReadConn,
    from_us: i64,
    to_us: i64,
    promotion_id: Option<i64>,
    up_to: i64,
) -> Result<(i64, i64), postgres::Error> {
    let statement = conn.statement(BETWEEN)?;
    let row = conn.client.query_one(&statement, &[&from_us, &to_us, &up_to, &promotion_id])?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

const BETWEEN_BY_PROMOTION: &str = "
    SELECT promotion_id, count(*), CAST(sum(product_quantity) AS BIGINT) FROM buys
    WHERE timestamp_us >= $1 AND timestamp_us < $2 AND buy_count <= $3 GROUP BY promotion_id";

/// See [`crate::store::log::FactLog::between_by_promotion`].
pub fn between_by_promotion(
    conn: &mut ReadConn,
    from_us: i64,
    to_us: i64,
    up_to: i64,
) -> Result<Vec<(i64, i64, i64)>, postgres::Error> {
    let statement = conn.statement(BETWEEN_BY_PROMOTION)?;
    let rows = conn.client.query(&statement, &[&from_us, &to_us, &up_to])?;
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))).collect()
}

/// See [`crate::store::log::FactLog::store_id`].
pub fn store_id(conn: &mut ReadConn) -> Result<String, postgres::Error> {
    let statement = conn.statement("SELECT value FROM store_identity WHERE id = 1")?;
    conn.client.query_one(&statement, &[])?.try_get(0)
}

const TAIL: &str = "
    SELECT (SELECT total FROM counter WHERE id = 1), count(*), CAST(coalesce(sum(product_quantity), 0) AS BIGINT),
           count(*) FILTER (WHERE timestamp_us >= $2),
           CAST(coalesce(sum(product_quantity) FILTER (WHERE timestamp_us >= $2), 0) AS BIGINT)
    FROM buys WHERE buy_count > $1 AND (CAST($3 AS BIGINT) IS NULL OR promotion_id = $3)";

/// See [`crate::store::log::FactLog::tail`]: one statement, so the counter and the facts come
/// from one snapshot (and, facts becoming visible in sequence order, the tail has no gaps).
pub fn tail(
    conn: &mut ReadConn,
    after: i64,
    since_us: i64,
    promotion_id: Option<i64>,
) -> Result<Tail, postgres::Error> {
    let statement = conn.statement(TAIL)?;
    let row = conn.client.query_one(&statement, &[&after, &since_us, &promotion_id])?;
    Ok(Tail {
        last_seq: row.try_get(0)?,
        buys: row.try_get(1)?,
        units: row.try_get(2)?,
        recent_buys: row.try_get(3)?,
        recent_units: row.try_get(4)?,
    })
}
