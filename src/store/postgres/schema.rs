//! The PostgreSQL schema: the SQLite log's tables in portable SQL, applied at start-up, one
//! transaction per version, with the applied versions recorded in `schema_version`. Versions 1
//! to 7 also kept aggregates, updated in every write transaction (split by writer slot); version
//! 8 drops them; version 9 adds page views.
//!
//! Replicas that start together must not race on DDL (two concurrent `CREATE TABLE IF NOT EXISTS`
//! can still fail in PostgreSQL), so the whole migration runs under a session-level advisory lock:
//! the first replica migrates, the others wait, then find nothing left to do.
//!
//! Portability: plain `CREATE TABLE`/`CREATE INDEX` with standard types. `pg_advisory_lock` is
//! PostgreSQL's (Citus and YugabyteDB have it; CockroachDB accepts it as a no-op, so there start one
//! replica first or run migrations from a single job).

use postgres::Client;

/// Key of the advisory lock held while migrating (any constant unique to this application).
const MIGRATION_LOCK: i64 = 0x6275_795f_7472_6b72; // "buy_trkr"

/// One entry per schema version, in order; never edit an entry once released, add a new one.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE buys (
    buy_count        BIGINT PRIMARY KEY,
    user_id          BIGINT NOT NULL,
    promotion_id     BIGINT NOT NULL,
    product_id       BIGINT NOT NULL,
    product_quantity BIGINT NOT NULL,
    unit_price_cents BIGINT,
    ip_address       TEXT   NOT NULL,
    timestamp_us     BIGINT NOT NULL,
    received_at_us   BIGINT NOT NULL,
    timestamp_source TEXT   NOT NULL,
    idempotency_key  TEXT
);
-- Bounds the exact count of the partial second at the edge of a window, and /export ranges.
CREATE INDEX buys_timestamp ON buys (timestamp_us);
-- The last sequence number handed out (which is also the number of buys) and the units. Every
-- commit updates this one row last, so it is what orders commits from all replicas.
CREATE TABLE counter (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    total       BIGINT NOT NULL,
    total_units BIGINT NOT NULL
);
INSERT INTO counter (id, total, total_units) VALUES (1, 0, 0);
-- Buys and units per bucket of 1, 60 and 3600 seconds of `timestamp`.
CREATE TABLE rollup (
    granularity_s BIGINT NOT NULL,
    bucket_s      BIGINT NOT NULL,
    buys          BIGINT NOT NULL,
    units         BIGINT NOT NULL,
    PRIMARY KEY (granularity_s, bucket_s)
);
-- The same per promotion.
CREATE TABLE promotion_rollup (
    promotion_id  BIGINT NOT NULL,
    granularity_s BIGINT NOT NULL,
    bucket_s      BIGINT NOT NULL,
    buys          BIGINT NOT NULL,
    units         BIGINT NOT NULL,
    PRIMARY KEY (promotion_id, granularity_s, bucket_s)
);
CREATE TABLE promotion_totals (
    promotion_id  BIGINT PRIMARY KEY,
    total_buys    BIGINT NOT NULL,
    total_units   BIGINT NOT NULL,
    revenue_cents BIGINT NOT NULL,
    unique_buyers BIGINT NOT NULL,
    first_buy_us  BIGINT NOT NULL,
    last_buy_us   BIGINT NOT NULL
);
-- Ranking for GET /promotions: buys descending, ties by id.
CREATE INDEX promotion_rank ON promotion_totals (total_buys DESC, promotion_id);
CREATE TABLE promotion_products (
    promotion_id BIGINT NOT NULL,
    product_id   BIGINT NOT NULL,
    buys         BIGINT NOT NULL,
    units        BIGINT NOT NULL,
    PRIMARY KEY (promotion_id, product_id)
);
-- Top products of a promotion by units without sorting all of them.
CREATE INDEX promotion_products_rank ON promotion_products (promotion_id, units DESC, product_id);
-- Who bought in each promotion: unique buyers are counted exactly.
CREATE TABLE promotion_buyers (
    promotion_id BIGINT NOT NULL,
    user_id      BIGINT NOT NULL,
    PRIMARY KEY (promotion_id, user_id)
);
CREATE TABLE idempotency (
    key           TEXT   PRIMARY KEY,
    fingerprint   BYTEA  NOT NULL,
    last_seq      BIGINT NOT NULL,
    recorded      BIGINT NOT NULL,
    created_at_us BIGINT NOT NULL
);
CREATE INDEX idempotency_created ON idempotency (created_at_us);
"#,
    r#"
-- Every commit rewrites the aggregate rows it touches. An update can stay on its page without
-- touching any index (a HOT update) only when no indexed column changes and the page has room:
-- the ranking indexes on moving counts made every update of these rows a new index entry, and the
-- tables bloated with dead versions. Ranking sorts a bounded set at read time instead (as in
-- SQLite), and hot tables leave half of each page free for new row versions.
DROP INDEX promotion_rank;
DROP INDEX promotion_products_rank;
ALTER TABLE counter SET (fillfactor = 50);
ALTER TABLE rollup SET (fillfactor = 50);
ALTER TABLE promotion_rollup SET (fillfactor = 50);
ALTER TABLE promotion_totals SET (fillfactor = 50);
ALTER TABLE promotion_products SET (fillfactor = 50);
-- Aggregates are split by writer slot: each writer connection claims a slot of its own (see
-- write.rs) and updates only that slot's rows, so commits from several connections and replicas
-- never wait for each other's aggregate rows; only the counter row, taken last, orders them.
-- Reads sum over the slots.
ALTER TABLE rollup ADD COLUMN slot INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rollup DROP CONSTRAINT rollup_pkey, ADD PRIMARY KEY (granularity_s, bucket_s, slot);
ALTER TABLE promotion_rollup ADD COLUMN slot INTEGER NOT NULL DEFAULT 0;
ALTER TABLE promotion_rollup DROP CONSTRAINT promotion_rollup_pkey,
    ADD PRIMARY KEY (promotion_id, granularity_s, bucket_s, slot);
ALTER TABLE promotion_totals ADD COLUMN slot INTEGER NOT NULL DEFAULT 0;
ALTER TABLE promotion_totals DROP CONSTRAINT promotion_totals_pkey, ADD PRIMARY KEY (promotion_id, slot);
ALTER TABLE promotion_products ADD COLUMN slot INTEGER NOT NULL DEFAULT 0;
ALTER TABLE promotion_products DROP CONSTRAINT promotion_products_pkey,
    ADD PRIMARY KEY (promotion_id, product_id, slot);
"#,
    r#"
-- Old second and minute rows are pruned by bucket (reads never need them); promotion_rollup's key
-- starts with the promotion, so the pruning finds them through this index. Counts are not in it,
-- so updates stay HOT.
CREATE INDEX promotion_rollup_by_bucket ON promotion_rollup (granularity_s, bucket_s);
"#,
    r#"
-- Each promotion's newest second, minute and hour of each slot are counted in its totals row,
-- which every commit updates anyway, instead of three promotion_rollup rows per commit; a bucket
-- moves to promotion_rollup when a newer one replaces it (see write.rs). Reads add both.
ALTER TABLE promotion_totals
    ADD COLUMN second_bucket BIGINT NOT NULL DEFAULT 0, ADD COLUMN second_buys BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN second_units BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN minute_bucket BIGINT NOT NULL DEFAULT 0, ADD COLUMN minute_buys BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN minute_units BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN hour_bucket BIGINT NOT NULL DEFAULT 0, ADD COLUMN hour_buys BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN hour_units BIGINT NOT NULL DEFAULT 0;
-- What reads sum: the moved buckets and the current ones. Every branch's columns have the
-- rollup's types (the granularities cast to BIGINT): PostgreSQL pushes a read's conditions into
-- the branches, and so onto their indexes, only when the types match.
CREATE VIEW promotion_buckets (promotion_id, granularity_s, bucket_s, slot, buys, units) AS
    SELECT promotion_id, granularity_s, bucket_s, slot, buys, units FROM promotion_rollup
    UNION ALL SELECT promotion_id, CAST(1 AS BIGINT), second_bucket, slot, second_buys, second_units
        FROM promotion_totals WHERE second_buys > 0
    UNION ALL SELECT promotion_id, CAST(60 AS BIGINT), minute_bucket, slot, minute_buys, minute_units
        FROM promotion_totals WHERE minute_buys > 0
    UNION ALL SELECT promotion_id, CAST(3600 AS BIGINT), hour_bucket, slot, hour_buys, hour_units
        FROM promotion_totals WHERE hour_buys > 0;
"#,
    r#"
-- What a commit's totals upsert displaced, per granularity: the current bucket a newer one
-- replaced, or the batch's own bucket when it was older (a late buy). The upsert sets them from
-- the row as it locked it and returns them, and the same statement adds them to
-- promotion_rollup: reading the current buckets in an earlier statement cost a join per commit,
-- and in a shared slot a lock taken before that read. NULL: nothing was displaced. They describe
-- the last commit only and are never read otherwise.
ALTER TABLE promotion_totals
    ADD COLUMN second_spill_bucket BIGINT, ADD COLUMN second_spill_buys BIGINT, ADD COLUMN second_spill_units BIGINT,
    ADD COLUMN minute_spill_bucket BIGINT, ADD COLUMN minute_spill_buys BIGINT, ADD COLUMN minute_spill_units BIGINT,
    ADD COLUMN hour_spill_bucket BIGINT, ADD COLUMN hour_spill_buys BIGINT, ADD COLUMN hour_spill_units BIGINT;
"#,
    r#"
-- Buyers keyed by user first, as the SQLite store's since its version 2. The table is only probed
-- (is this buyer new to the promotion?), never scanned by promotion, and a commit's new users then
-- land on a few index pages instead of one page per promotion it touches.
ALTER TABLE promotion_buyers DROP CONSTRAINT promotion_buyers_pkey, ADD PRIMARY KEY (user_id, promotion_id);
"#,
    r#"
-- Which store this is, drawn once: a replica's views record it, and views built from another
-- store (a database restored or replaced under the same URL) are rebuilt rather than trusted.
CREATE TABLE store_identity (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value TEXT NOT NULL
);
INSERT INTO store_identity (id, value) VALUES (1, md5(random()::text || clock_timestamp()::text));
"#,
    r#"
-- The aggregates leave the write transaction: every analytic is a view of the buys, which each
-- replica keeps itself (store::views) and rebuilds from this shared log. Every replica must run
-- this build or a later one: an older replica would still write these tables.
DROP VIEW promotion_buckets;
DROP TABLE rollup;
DROP TABLE promotion_rollup;
DROP TABLE promotion_totals;
DROP TABLE promotion_products;
DROP TABLE promotion_buyers;
"#,
    r#"
-- Page views: a second kind of fact, numbered by a counter of its own (taken, like the buys'
-- counter, last in the transaction, so views become visible in their order too).
CREATE TABLE views (
    view_count       BIGINT PRIMARY KEY,
    user_id          BIGINT NOT NULL,
    promotion_id     BIGINT NOT NULL,
    product_id       BIGINT,
    ip_address       TEXT   NOT NULL,
    timestamp_us     BIGINT NOT NULL,
    received_at_us   BIGINT NOT NULL,
    timestamp_source TEXT   NOT NULL,
    idempotency_key  TEXT
);
CREATE INDEX views_timestamp ON views (timestamp_us);
CREATE TABLE view_counter (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    total BIGINT NOT NULL
);
INSERT INTO view_counter (id, total) VALUES (1, 0);
"#,
    r#"
-- Refunds: a third kind of fact with a counter of its own, taken last as the others. Each row
-- copies its buy's user, promotion and product, and keeps the buy's units left after it.
CREATE TABLE refunds (
    refund_count     BIGINT PRIMARY KEY,
    buy_count        BIGINT NOT NULL,
    user_id          BIGINT NOT NULL,
    promotion_id     BIGINT NOT NULL,
    product_id       BIGINT NOT NULL,
    refunded_units   BIGINT NOT NULL,
    refunded_cents   BIGINT NOT NULL,
    remaining_units  BIGINT NOT NULL,
    ip_address       TEXT   NOT NULL,
    timestamp_us     BIGINT NOT NULL,
    received_at_us   BIGINT NOT NULL,
    timestamp_source TEXT   NOT NULL,
    idempotency_key  TEXT
);
CREATE INDEX refunds_by_buy ON refunds (buy_count, refund_count);
CREATE TABLE refund_counter (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    total BIGINT NOT NULL
);
INSERT INTO refund_counter (id, total) VALUES (1, 0);
"#,
];

/// Bring the schema up to date. Holds the advisory lock for the whole run, so replicas starting
/// together migrate one after the other; the lock is released explicitly, and by PostgreSQL if the
/// connection dies.
pub fn migrate(client: &mut Client) -> Result<(), String> {
    let describe = |e: postgres::Error| super::describe(&e);
    // Waiting for another replica's migration may take longer than an ordinary statement may.
    client.batch_execute("SET statement_timeout = '120s'").map_err(describe)?;
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).map_err(describe)?;
    let result = apply_pending(client);
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    result?;
    unlocked.map_err(describe)?;
    Ok(())
}

fn apply_pending(client: &mut Client) -> Result<(), String> {
    let describe = |e: postgres::Error| super::describe(&e);
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)")
        .map_err(describe)?;
    let current: i32 = client
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .and_then(|row| row.try_get(0))
        .map_err(describe)?;
    // An older build would write rows its statements no longer match (a rolling upgrade must not
    // start old replicas on a newer schema): refuse, rather than fail every commit.
    if current as usize > MIGRATIONS.len() {
        return Err(format!(
            "the database schema is version {current}, newer than this build's {}: run a newer buy-tracker",
            MIGRATIONS.len()
        ));
    }
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
        let version = version as i32 + 1;
        let mut tx = client.transaction().map_err(describe)?;
        tx.batch_execute(sql).map_err(describe)?;
        tx.execute("INSERT INTO schema_version (version) VALUES ($1)", &[&version]).map_err(describe)?;
        tx.commit().map_err(describe)?;
        tracing::info!(version, "PostgreSQL schema migrated");
    }
    Ok(())
}
