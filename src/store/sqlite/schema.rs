//! The SQLite schema, applied once per version (tracked in `PRAGMA user_version`).
//!
//! The store is a log of facts: the buys, the sequence counter, the idempotency keys and the
//! store's identity. Versions 1 to 3 also kept aggregates, upserted in every write transaction;
//! version 4 drops them, since every analytic is now a view of the buys (`store::views`, in a file
//! of its own) and is rebuilt from them.

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE buys (
    buy_count        INTEGER PRIMARY KEY,
    user_id          INTEGER NOT NULL,
    promotion_id     INTEGER NOT NULL,
    product_id       INTEGER NOT NULL,
    product_quantity INTEGER NOT NULL,
    unit_price_cents INTEGER,
    ip_address       TEXT    NOT NULL,
    timestamp_us     INTEGER NOT NULL,
    received_at_us   INTEGER NOT NULL,
    timestamp_source TEXT    NOT NULL,
    idempotency_key  TEXT
);
-- Bounds the exact count of the partial second at the edge of a window, and /export ranges.
CREATE INDEX buys_timestamp ON buys (timestamp_us);
-- The last sequence number handed out (which is also the number of buys) and the units.
CREATE TABLE counter (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    total       INTEGER NOT NULL,
    total_units INTEGER NOT NULL
);
INSERT INTO counter (id, total, total_units) VALUES (1, 0, 0);
-- Buys and units per bucket of 1, 60 and 3600 seconds of `timestamp`: recent counts read a few
-- hundred rows at most, and timeseries read one row per bucket.
CREATE TABLE rollup (
    granularity_s INTEGER NOT NULL,
    bucket_s      INTEGER NOT NULL,
    buys          INTEGER NOT NULL,
    units         INTEGER NOT NULL,
    PRIMARY KEY (granularity_s, bucket_s)
) WITHOUT ROWID;
-- The same per promotion. The key starts with the bucket so that the rows a commit updates (the
-- current second, minute and hour of every promotion) sit side by side on a few pages: keyed by
-- promotion first, each commit rewrote a page per promotion and granularity to the WAL.
CREATE TABLE promotion_rollup (
    granularity_s INTEGER NOT NULL,
    bucket_s      INTEGER NOT NULL,
    promotion_id  INTEGER NOT NULL,
    buys          INTEGER NOT NULL,
    units         INTEGER NOT NULL,
    PRIMARY KEY (granularity_s, bucket_s, promotion_id)
) WITHOUT ROWID;
-- One promotion's buckets for reads; its entries never change after a bucket's first buy, so
-- updating counts does not touch it.
CREATE INDEX promotion_rollup_by_promotion ON promotion_rollup (promotion_id, granularity_s, bucket_s);
CREATE TABLE promotion_totals (
    promotion_id  INTEGER PRIMARY KEY,
    total_buys    INTEGER NOT NULL,
    total_units   INTEGER NOT NULL,
    revenue_cents INTEGER NOT NULL,
    unique_buyers INTEGER NOT NULL,
    first_buy_us  INTEGER NOT NULL,
    last_buy_us   INTEGER NOT NULL
);
-- No ranking index: its entries would move on every commit; GET /promotions sorts this table,
-- whose size is the number of promotions, not of buys.
CREATE TABLE promotion_products (
    promotion_id INTEGER NOT NULL,
    product_id   INTEGER NOT NULL,
    buys         INTEGER NOT NULL,
    units        INTEGER NOT NULL,
    PRIMARY KEY (promotion_id, product_id)
) WITHOUT ROWID;
-- Top products are found by sorting one promotion's products (bounded by the catalogue); an index
-- on units would be rewritten on every commit.
-- Who bought in each promotion: unique buyers are counted exactly.
CREATE TABLE promotion_buyers (
    promotion_id INTEGER NOT NULL,
    user_id      INTEGER NOT NULL,
    PRIMARY KEY (promotion_id, user_id)
) WITHOUT ROWID;
CREATE TABLE idempotency (
    key           TEXT PRIMARY KEY,
    fingerprint   BLOB    NOT NULL,
    last_seq      INTEGER NOT NULL,
    recorded      INTEGER NOT NULL,
    created_at_us INTEGER NOT NULL
);
CREATE INDEX idempotency_created ON idempotency (created_at_us);
"#,
    // 2: `promotion_buyers` keyed by user first. It is only probed (is this buyer new to the
    // promotion?), never scanned, so the order of its key is free; keyed by promotion first, a commit
    // inserted into one leaf page per promotion it touched (each rewritten whole to the WAL), while
    // buyers who appear together (new users, whose ids are close) now share a few pages.
    r#"
ALTER TABLE promotion_buyers RENAME TO promotion_buyers_v1;
CREATE TABLE promotion_buyers (
    user_id      INTEGER NOT NULL,
    promotion_id INTEGER NOT NULL,
    PRIMARY KEY (user_id, promotion_id)
) WITHOUT ROWID;
INSERT INTO promotion_buyers (user_id, promotion_id)
    SELECT user_id, promotion_id FROM promotion_buyers_v1 ORDER BY user_id, promotion_id;
DROP TABLE promotion_buyers_v1;
"#,
    // 3: which store this is, drawn once: its views record it, and views built from another
    // store (a file replaced under the same path) are rebuilt rather than trusted.
    r#"
CREATE TABLE store_identity (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value TEXT NOT NULL
);
INSERT INTO store_identity (id, value) VALUES (1, lower(hex(randomblob(16))));
"#,
    // 4: the aggregates leave the write transaction (they are views of the buys, kept apart).
    r#"
DROP TABLE rollup;
DROP TABLE promotion_rollup;
DROP TABLE promotion_totals;
DROP TABLE promotion_products;
DROP TABLE promotion_buyers;
"#,
    // 5: page views, a second kind of fact with sequence numbers of its own.
    r#"
CREATE TABLE views (
    view_count       INTEGER PRIMARY KEY,
    user_id          INTEGER NOT NULL,
    promotion_id     INTEGER NOT NULL,
    product_id       INTEGER,
    ip_address       TEXT    NOT NULL,
    timestamp_us     INTEGER NOT NULL,
    received_at_us   INTEGER NOT NULL,
    timestamp_source TEXT    NOT NULL,
    idempotency_key  TEXT
);
-- The partial second at the edge of a window, and /export ranges.
CREATE INDEX views_timestamp ON views (timestamp_us);
-- The last view number handed out.
CREATE TABLE view_counter (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    total INTEGER NOT NULL
);
INSERT INTO view_counter (id, total) VALUES (1, 0);
"#,
    // 6: refunds, a third kind of fact numbered on its own. Each row copies its buy's user,
    // promotion and product (the views and the export read refunds without joining the buys) and
    // keeps the buy's units left after it, so the next refund of that buy reads one row.
    r#"
CREATE TABLE refunds (
    refund_count     INTEGER PRIMARY KEY,
    buy_count        INTEGER NOT NULL,
    user_id          INTEGER NOT NULL,
    promotion_id     INTEGER NOT NULL,
    product_id       INTEGER NOT NULL,
    refunded_units   INTEGER NOT NULL,
    refunded_cents   INTEGER NOT NULL,
    remaining_units  INTEGER NOT NULL,
    ip_address       TEXT    NOT NULL,
    timestamp_us     INTEGER NOT NULL,
    received_at_us   INTEGER NOT NULL,
    timestamp_source TEXT    NOT NULL,
    idempotency_key  TEXT
);
CREATE INDEX refunds_by_buy ON refunds (buy_count, refund_count);
CREATE TABLE refund_counter (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    total INTEGER NOT NULL
);
INSERT INTO refund_counter (id, total) VALUES (1, 0);
"#,
];

/// Bring the schema up to date, one transaction per version.
/// A store written by a newer build is refused: this build's statements may no longer match it.
pub fn migrate(conn: &mut Connection) -> Result<(), String> {
    let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| e.to_string())?;
    if version > MIGRATIONS.len() {
        return Err(format!(
            "the store's schema is version {version}, newer than this build's {}: run a newer buy-tracker",
            MIGRATIONS.len()
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let mut apply = || -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i + 1)?;
            tx.commit()
        };
        apply().map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_from_a_newer_build_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", MIGRATIONS.len() + 1).unwrap();
        let error = migrate(&mut conn).unwrap_err();
        assert!(error.contains("newer than this build"), "{error}");
    }

    /// A store of version 1 (aggregates in the write transaction) upgrades to the log: its buys,
    /// counter and keys stay, the aggregate tables go.
    #[test]
    fn a_version_1_store_upgrades_to_the_log_of_facts() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute_batch(
            "INSERT INTO buys VALUES (1, 10, 1, 5, 2, NULL, '127.0.0.1', 7, 7, 'server', NULL);
             UPDATE counter SET total = 1, total_units = 2;
             INSERT INTO promotion_buyers (promotion_id, user_id) VALUES (1, 10);",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, MIGRATIONS.len());
        let kept: (i64, i64) = conn
            .query_row("SELECT (SELECT count(*) FROM buys), total FROM counter", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        assert_eq!(kept, (1, 1));
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            tables,
            ["buys", "counter", "idempotency", "refund_counter", "refunds", "store_identity", "view_counter", "views"]
        );
    }
}
