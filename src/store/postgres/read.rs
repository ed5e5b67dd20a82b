//! Reads of the shared log: export pages, and what the views read (facts in sequence order, the
//! tail after a view's snapshot, the partial second at a window's edge through the timestamp
//! index). Each is one statement, so it sees one snapshot.

use std::collections::HashMap;
use std::sync::LazyLock;

use postgres::{Client, Statement};

use crate::domain::{Buy, Quantity};
use crate::page_view::PageView;
use crate::store::log::{Fact, Position, RefundFact, Slice, Tail, ViewFact};
use crate::store::{BuyRow, ExportFilter, ExportKind, ExportRow, RefundRow, ViewRow};

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
}

/// One page of an export of `table` (numbered by `number`): a range of its numbers, then the
/// filter.
fn export_sql(columns: &str, table: &str, number: &str) -> String {
    format!(
        "SELECT {columns} FROM {table}
         WHERE {number} > $1 AND {number} <= $2
           AND (CAST($3 AS BIGINT) IS NULL OR promotion_id = $3)
           AND (CAST($4 AS BIGINT) IS NULL OR timestamp_us >= $4)
           AND (CAST($5 AS BIGINT) IS NULL OR timestamp_us < $5)
         ORDER BY {number} LIMIT $6"
    )
}

static EXPORT_BUYS: LazyLock<String> = LazyLock::new(|| {
    export_sql(
        "buy_count, user_id, promotion_id, product_id, product_quantity, unit_price_cents,
         ip_address, timestamp_us, received_at_us, timestamp_source",
        "buys",
        "buy_count",
    )
});
static EXPORT_VIEWS: LazyLock<String> = LazyLock::new(|| {
    export_sql(
        "view_count, user_id, promotion_id, product_id, ip_address, timestamp_us, received_at_us, timestamp_source",
        "views",
        "view_count",
    )
});
static EXPORT_REFUNDS: LazyLock<String> = LazyLock::new(|| {
    export_sql(
        "refund_count, buy_count, user_id, promotion_id, product_id, refunded_units, refunded_cents,
         ip_address, timestamp_us, received_at_us, timestamp_source",
        "refunds",
        "refund_count",
    )
});

/// Cheap proof that the store answers and holds our schema.
pub const PING: &str = "SELECT total FROM counter WHERE id = 1";

/// See [`crate::store::Store::export_page`].
pub fn export_page(
    conn: &mut ReadConn,
    filter: &ExportFilter,
    after: i64,
    up_to: i64,
    limit: usize,
) -> Result<Vec<ExportRow>, postgres::Error> {
    let sql: &'static str = match filter.kind {
        ExportKind::Buys => EXPORT_BUYS.as_str(),
        ExportKind::Views => EXPORT_VIEWS.as_str(),
        ExportKind::Refunds => EXPORT_REFUNDS.as_str(),
    };
    let statement = conn.statement(sql)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = conn
        .client
        .query(&statement, &[&after, &up_to, &filter.promotion_id, &filter.since_us, &filter.until_us, &limit])?;
    rows.iter()
        .map(|r| {
            Ok(match filter.kind {
                ExportKind::Buys => ExportRow::Buy(BuyRow {
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
                }),
                ExportKind::Views => ExportRow::View(ViewRow {
                    view_count: r.try_get(0)?,
                    user_id: r.try_get(1)?,
                    promotion_id: r.try_get(2)?,
                    product_id: r.try_get(3)?,
                    ip_address: r.try_get(4)?,
                    timestamp_us: r.try_get(5)?,
                    received_at_us: r.try_get(6)?,
                    timestamp_source: r.try_get(7)?,
                }),
                ExportKind::Refunds => ExportRow::Refund(RefundRow {
                    refund_count: r.try_get(0)?,
                    buy_count: r.try_get(1)?,
                    user_id: r.try_get(2)?,
                    promotion_id: r.try_get(3)?,
                    product_id: r.try_get(4)?,
                    refunded_units: r.try_get(5)?,
                    refunded_cents: r.try_get(6)?,
                    ip_address: r.try_get(7)?,
                    timestamp_us: r.try_get(8)?,
                    received_at_us: r.try_get(9)?,
                    timestamp_source: r.try_get(10)?,
                }),
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

const FACTS_IN: &str = "
    SELECT buy_count, user_id, promotion_id, product_id, product_quantity, unit_price_cents, timestamp_us
    FROM buys WHERE buy_count > $1 AND buy_count <= $2 AND (CAST($3 AS BIGINT) IS NULL OR promotion_id = $3)
    ORDER BY buy_count";

const BETWEEN: &str = "
    SELECT count(*), CAST(coalesce(sum(product_quantity), 0) AS BIGINT),
           CAST(LEAST(coalesce(sum(CAST(product_quantity AS NUMERIC) * unit_price_cents), 0), 9223372036854775807) AS BIGINT)
    FROM buys
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
    rows.iter().map(fact).collect()
}

/// See [`crate::store::log::FactLog::facts_in`].
pub fn facts_in(
    conn: &mut ReadConn,
    after: i64,
    up_to: i64,
    promotion_id: Option<i64>,
) -> Result<Vec<Fact>, postgres::Error> {
    let statement = conn.statement(FACTS_IN)?;
    let rows = conn.client.query(&statement, &[&after, &up_to, &promotion_id])?;
    rows.iter().map(fact).collect()
}

/// A row selected as in [`FACTS_AFTER`], as a fact.
fn fact(r: &postgres::Row) -> Result<Fact, postgres::Error> {
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
}

/// See [`crate::store::log::FactLog::between`]: through the timestamp index.
pub fn between(
    conn: &mut ReadConn,
    from_us: i64,
    to_us: i64,
    promotion_id: Option<i64>,
    up_to: i64,
) -> Result<Slice, postgres::Error> {
    let statement = conn.statement(BETWEEN)?;
    let row = conn.client.query_one(&statement, &[&from_us, &to_us, &up_to, &promotion_id])?;
    Ok(Slice { buys: row.try_get(0)?, units: row.try_get(1)?, revenue_cents: row.try_get(2)? })
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

// Bounded above by the counter as well: with `buy_count > $1` alone, the generic plan of the
// prepared statement estimated a third of the table and scanned all of it (reads under load
// then cost PostgreSQL 360 µs each, and more as the table grew).
const TAIL: &str = "
    WITH last AS (SELECT total FROM counter WHERE id = 1)
    SELECT (SELECT total FROM last), count(*), CAST(coalesce(sum(product_quantity), 0) AS BIGINT),
           count(*) FILTER (WHERE timestamp_us >= $2),
           CAST(coalesce(sum(product_quantity) FILTER (WHERE timestamp_us >= $2), 0) AS BIGINT)
    FROM buys WHERE buy_count > $1 AND buy_count <= (SELECT total FROM last)
        AND (CAST($3 AS BIGINT) IS NULL OR promotion_id = $3)";

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

const POSITION: &str = "SELECT (SELECT total FROM counter WHERE id = 1), (SELECT total FROM view_counter WHERE id = 1),
    (SELECT total FROM refund_counter WHERE id = 1)";

/// See [`crate::store::log::FactLog::position`]: every counter in one statement, so in one
/// snapshot (a refund visible there has its buy visible too).
pub fn position(conn: &mut ReadConn) -> Result<Position, postgres::Error> {
    let statement = conn.statement(POSITION)?;
    let row = conn.client.query_one(&statement, &[])?;
    Ok(Position { buys: row.try_get(0)?, views: row.try_get(1)?, refunds: row.try_get(2)? })
}

const REFUNDS_IN: &str = "
    SELECT refund_count, buy_count, user_id, promotion_id, product_id, refunded_units, refunded_cents, timestamp_us
    FROM refunds WHERE refund_count > $1 AND refund_count <= $2 AND (CAST($3 AS BIGINT) IS NULL OR promotion_id = $3)
    ORDER BY refund_count LIMIT $4";

/// See [`crate::store::log::FactLog::refunds_in`].
pub fn refunds_in(
    conn: &mut ReadConn,
    after: i64,
    up_to: i64,
    promotion_id: Option<i64>,
    limit: usize,
) -> Result<Vec<RefundFact>, postgres::Error> {
    let statement = conn.statement(REFUNDS_IN)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = conn.client.query(&statement, &[&after, &up_to, &promotion_id, &limit])?;
    rows.iter()
        .map(|r| {
            Ok(RefundFact {
                seq: r.try_get(0)?,
                buy_count: r.try_get(1)?,
                user_id: r.try_get(2)?,
                promotion_id: r.try_get(3)?,
                product_id: r.try_get(4)?,
                units: r.try_get(5)?,
                cents: r.try_get(6)?,
                timestamp_us: r.try_get(7)?,
            })
        })
        .collect()
}

const VIEWS_AFTER: &str = "
    SELECT view_count, user_id, promotion_id, product_id, timestamp_us
    FROM views WHERE view_count > $1 ORDER BY view_count LIMIT $2";

const VIEWS_IN: &str = "
    SELECT view_count, user_id, promotion_id, product_id, timestamp_us
    FROM views WHERE view_count > $1 AND view_count <= $2 AND (CAST($3 AS BIGINT) IS NULL OR promotion_id = $3)
    ORDER BY view_count";

const VIEWS_BETWEEN: &str = "
    SELECT count(*) FROM views
    WHERE timestamp_us >= $1 AND timestamp_us < $2 AND view_count <= $3
      AND (CAST($4 AS BIGINT) IS NULL OR promotion_id = $4)";

/// See [`crate::store::log::FactLog::views_after`] (one snapshot, as [`facts_after`]).
pub fn views_after(conn: &mut ReadConn, after: i64, limit: usize) -> Result<Vec<ViewFact>, postgres::Error> {
    let statement = conn.statement(VIEWS_AFTER)?;
    let rows = conn.client.query(&statement, &[&after, &(limit as i64)])?;
    rows.iter().map(view_fact).collect()
}

/// See [`crate::store::log::FactLog::views_in`].
pub fn views_in(
    conn: &mut ReadConn,
    after: i64,
    up_to: i64,
    promotion_id: Option<i64>,
) -> Result<Vec<ViewFact>, postgres::Error> {
    let statement = conn.statement(VIEWS_IN)?;
    let rows = conn.client.query(&statement, &[&after, &up_to, &promotion_id])?;
    rows.iter().map(view_fact).collect()
}

/// A row selected as in [`VIEWS_AFTER`], as a fact.
fn view_fact(r: &postgres::Row) -> Result<ViewFact, postgres::Error> {
    Ok(ViewFact {
        seq: r.try_get(0)?,
        view: PageView { user_id: r.try_get(1)?, promotion_id: r.try_get(2)?, product_id: r.try_get(3)? },
        timestamp_us: r.try_get(4)?,
    })
}

/// See [`crate::store::log::FactLog::views_between`]: through the timestamp index.
pub fn views_between(
    conn: &mut ReadConn,
    from_us: i64,
    to_us: i64,
    promotion_id: Option<i64>,
    up_to: i64,
) -> Result<i64, postgres::Error> {
    let statement = conn.statement(VIEWS_BETWEEN)?;
    conn.client.query_one(&statement, &[&from_us, &to_us, &up_to, &promotion_id])?.try_get(0)
}
