//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`, so a committed
//! transaction is on disk before the writer acknowledges it. `memory:` uses the same code on an
//! in-memory database.
//!
//! Concurrency: only the writer thread writes, through `writer`; reads use their own connections
//! from a small pool, which WAL lets run beside the writer without blocking it. An in-memory
//! database cannot be shared between connections, so there reads take the writer's connection.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{Counts, IDEMPOTENCY_TTL_US, Store, StoreError, Write, WriteOutcome};

/// The schema, applied once per version (tracked in `PRAGMA user_version`).
const MIGRATIONS: &[&str] = &[r#"
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
-- Bounds the exact count of the partial second at the edge of a /stats window, and /export ranges.
CREATE INDEX buys_timestamp ON buys (timestamp_us);
-- The sequence counter: the last sequence number handed out, which is also the total.
CREATE TABLE counter (id INTEGER PRIMARY KEY CHECK (id = 1), total INTEGER NOT NULL);
INSERT INTO counter (id, total) VALUES (1, 0);
-- Buys and units per bucket of 1, 60 and 3600 seconds of `timestamp`, written in the same
-- transaction as the buys, so that recent counts read a few hundred rows at most.
CREATE TABLE rollup (
    granularity_s INTEGER NOT NULL,
    bucket_s      INTEGER NOT NULL,
    buys          INTEGER NOT NULL,
    units         INTEGER NOT NULL,
    PRIMARY KEY (granularity_s, bucket_s)
) WITHOUT ROWID;
CREATE TABLE idempotency (
    key          TEXT PRIMARY KEY,
    fingerprint  BLOB    NOT NULL,
    last_seq     INTEGER NOT NULL,
    recorded     INTEGER NOT NULL,
    created_at_us INTEGER NOT NULL
);
CREATE INDEX idempotency_created ON idempotency (created_at_us);
"#];

/// Bucket sizes kept in the `rollup` table, in seconds.
const GRANULARITIES: [i64; 3] = [1, 60, 3600];
const US: i64 = 1_000_000;

/// SQLite behind the [`Store`] interface.
pub struct SqliteStore {
    writer: Mutex<Connection>,
    /// `None` for an in-memory database.
    readers: Option<ReadPool>,
    /// Set on drop to stop the checkpointer thread.
    stop: Arc<AtomicBool>,
}

/// How often the checkpointer copies the WAL back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Copy committed WAL frames into the database file from a connection of its own, so that the
/// writer's automatic checkpoint (which runs between commits, stalling the requests waiting on the
/// next one) finds little left to copy. PASSIVE never blocks the writer. The writer's own
/// checkpoint stays on: only a checkpoint that completes just before a write lets SQLite restart
/// the WAL from its beginning, which keeps the file from growing under sustained load.
fn start_checkpointer(path: PathBuf, stop: Arc<AtomicBool>) -> Result<(), String> {
    let conn = Connection::open(&path).map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(CHECKPOINT_EVERY);
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "WAL checkpoint failed; will retry");
                }
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Idle read connections to the same file; a reader is opened when none is idle.
struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves SQLite itself consistent (an open transaction is
    // rolled back when dropped), so the poison flag carries no information here.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SqliteStore {
    /// Open (creating file and folder if missing) a durable database file.
    pub fn open_file(path: &Path) -> Result<Self, String> {
        let describe = |e: &dyn std::fmt::Display| format!("cannot open SQLite store {}: {e}", path.display());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| describe(&e))?;
        }
        let conn = Connection::open(path).map_err(|e| describe(&e))?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(|e| describe(&e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(describe(&format!("WAL mode refused (journal_mode is {mode})")));
        }
        // FULL: the WAL is fsynced at every commit, so an acknowledged buy survives power loss.
        conn.execute_batch(
            "PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000;
             PRAGMA cache_size=-65536;",
        )
        .map_err(|e| describe(&e))?;
        let mut conn = conn;
        migrate(&mut conn).map_err(|e| describe(&e))?;
        let stop = Arc::new(AtomicBool::new(false));
        start_checkpointer(path.to_path_buf(), stop.clone()).map_err(|e| describe(&e))?;
        Ok(SqliteStore {
            writer: Mutex::new(conn),
            readers: Some(ReadPool { path: path.to_path_buf(), idle: Mutex::new(Vec::new()) }),
            stop,
        })
    }

    /// An in-memory database: the same schema and code, nothing kept.
    pub fn open_memory() -> Result<Self, String> {
        let mut conn = Connection::open_in_memory().map_err(|e| e.to_string())?;
        migrate(&mut conn).map_err(|e| e.to_string())?;
        Ok(SqliteStore { writer: Mutex::new(conn), readers: None, stop: Arc::new(AtomicBool::new(true)) })
    }

    /// Run `f` on a read connection.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let Some(pool) = &self.readers else {
            return f(&lock(&self.writer)).map_err(unavailable);
        };
        let conn = match lock(&pool.idle).pop() {
            Some(conn) => conn,
            None => {
                let conn = Connection::open(&pool.path).map_err(unavailable)?;
                conn.busy_timeout(Duration::from_secs(5)).map_err(unavailable)?;
                conn
            }
        };
        let result = f(&conn).map_err(unavailable);
        lock(&pool.idle).push(conn);
        result
    }
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// Buys and units per (granularity, bucket) accumulated over one commit, so each bucket is
/// upserted once per transaction however many buys fall in it.
#[derive(Default)]
struct RollupDelta(BTreeMap<(i64, i64), (i64, i64)>);

impl RollupDelta {
    fn add(&mut self, timestamp_us: i64, units: i64) {
        let second = timestamp_us.div_euclid(US);
        for g in GRANULARITIES {
            let slot = self.0.entry((g, second - second.rem_euclid(g))).or_default();
            slot.0 += 1;
            slot.1 += units;
        }
    }

    fn flush(&self, tx: &Transaction) -> rusqlite::Result<()> {
        let mut upsert = tx.prepare_cached(
            "INSERT INTO rollup (granularity_s, bucket_s, buys, units) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (granularity_s, bucket_s)
             DO UPDATE SET buys = buys + excluded.buys, units = units + excluded.units",
        )?;
        for ((g, bucket), (buys, units)) in &self.0 {
            upsert.execute(params![g, bucket, buys, units])?;
        }
        Ok(())
    }
}

/// Apply `writes` inside `tx`; returns the outcomes and the new total.
fn apply(tx: &Transaction, writes: &[Write], now_us: i64) -> rusqlite::Result<Vec<WriteOutcome>> {
    let mut seq: i64 = tx.query_row("SELECT total FROM counter WHERE id = 1", [], |r| r.get(0))?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO buys (buy_count, user_id, promotion_id, product_id, product_quantity,
            unit_price_cents, ip_address, timestamp_us, received_at_us, timestamp_source, idempotency_key)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?;
    let mut find_key = tx.prepare_cached(
        "SELECT fingerprint, last_seq, recorded FROM idempotency WHERE key = ?1 AND created_at_us >= ?2",
    )?;
    let mut claim_key = tx.prepare_cached(
        "INSERT INTO idempotency (key, fingerprint, last_seq, recorded, created_at_us) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint, last_seq = excluded.last_seq,
             recorded = excluded.recorded, created_at_us = excluded.created_at_us",
    )?;
    let mut rollups = RollupDelta::default();
    let mut outcomes = Vec::with_capacity(writes.len());
    for write in writes {
        if let Some(claim) = &write.idempotency {
            let earlier = find_key
                .query_row(params![claim.key, now_us - IDEMPOTENCY_TTL_US], |r| {
                    Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                })
                .optional()?;
            if let Some((fingerprint, last_seq, recorded)) = earlier {
                outcomes.push(if fingerprint == claim.fingerprint {
                    WriteOutcome::Replayed { last_seq, recorded: recorded as usize }
                } else {
                    WriteOutcome::KeyMismatch
                });
                continue;
            }
        }
        for record in &write.buys {
            seq += 1;
            let buy = &record.buy;
            insert.execute(params![
                seq,
                buy.user_id,
                buy.promotion_id,
                buy.product_id,
                buy.quantity.get(),
                buy.unit_price_cents,
                record.ip_address,
                record.timestamp_us,
                record.received_at_us,
                record.timestamp_source.as_str(),
                record.idempotency_key,
            ])?;
            rollups.add(record.timestamp_us, buy.quantity.get());
        }
        if let Some(claim) = &write.idempotency {
            claim_key.execute(params![claim.key, &claim.fingerprint[..], seq, write.buys.len() as i64, now_us])?;
        }
        outcomes.push(WriteOutcome::Recorded { last_seq: seq, recorded: write.buys.len() });
    }
    rollups.flush(tx)?;
    tx.execute("UPDATE counter SET total = ?1 WHERE id = 1", [seq])?;
    Ok(outcomes)
}

/// Second, minute and hour boundaries at or after `since_us`, splitting `[since, ∞)` into a
/// partial second counted from the index and whole buckets summed from the rollups.
fn window_edges(since_us: i64) -> (i64, i64, i64) {
    let second = since_us.div_euclid(US) + i64::from(since_us.rem_euclid(US) != 0);
    let ceil_to = |x: i64, g: i64| x + (g - x.rem_euclid(g)) % g;
    let minute = ceil_to(second, 60);
    (second, minute, ceil_to(minute, 3600))
}

impl Store for SqliteStore {
    fn commit(&self, writes: &[Write], now_us: i64) -> Result<Vec<WriteOutcome>, StoreError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction().map_err(unavailable)?;
        let outcomes = apply(&tx, writes, now_us).map_err(unavailable)?;
        tx.commit().map_err(unavailable)?;
        Ok(outcomes)
    }

    fn counts(&self, since_us: i64) -> Result<Counts, StoreError> {
        let (second, minute, hour) = window_edges(since_us);
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT (SELECT total FROM counter WHERE id = 1),
                   (SELECT count(*) FROM buys WHERE timestamp_us >= ?1 AND timestamp_us < ?2)
                 + (SELECT coalesce(sum(buys), 0) FROM rollup WHERE granularity_s = 1 AND bucket_s >= ?3 AND bucket_s < ?4)
                 + (SELECT coalesce(sum(buys), 0) FROM rollup WHERE granularity_s = 60 AND bucket_s >= ?4 AND bucket_s < ?5)
                 + (SELECT coalesce(sum(buys), 0) FROM rollup WHERE granularity_s = 3600 AND bucket_s >= ?5)",
            )?;
            stmt.query_row(params![since_us, second * US, second, minute, hour], |r| {
                Ok(Counts { total_buys: r.get(0)?, recent_buys: r.get(1)? })
            })
        })
    }

    fn prune_idempotency(&self, before_us: i64) -> Result<usize, StoreError> {
        lock(&self.writer).execute("DELETE FROM idempotency WHERE created_at_us < ?1", [before_us]).map_err(unavailable)
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| conn.query_row("SELECT total FROM counter WHERE id = 1", [], |_| Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Buy, BuyRecord};
    use crate::request_time::TimestampSource;

    fn record(timestamp_us: i64, quantity: i64) -> BuyRecord {
        let json = serde_json::json!({"user_id": 1, "promotion_id": 2, "product_id": 3, "product_quantity": quantity});
        BuyRecord {
            buy: Buy::parse(&json, &[]).unwrap(),
            ip_address: "127.0.0.1".into(),
            timestamp_us,
            received_at_us: timestamp_us,
            timestamp_source: TimestampSource::Server,
            idempotency_key: None,
        }
    }

    #[test]
    fn window_edges_round_up() {
        assert_eq!(window_edges(0), (0, 0, 0));
        assert_eq!(window_edges(1), (1, 60, 3600));
        assert_eq!(window_edges(3_600 * US), (3600, 3600, 3600));
        assert_eq!(window_edges(3_599 * US + 5), (3600, 3600, 3600));
        assert_eq!(window_edges(61 * US), (61, 120, 3600));
    }

    /// Recent counts from rollups equal a brute-force count at every cutoff, including cutoffs
    /// inside a second, on a minute or hour edge, and after every buy.
    #[test]
    fn recent_counts_are_exact_at_every_cutoff() {
        let store = SqliteStore::open_memory().unwrap();
        let base = 1_750_000_000 * US;
        let stamps: Vec<i64> = (0..400).map(|i| base + i * 37_123_457 % (5 * 3600 * US) + i).collect();
        let writes: Vec<Write> =
            stamps.iter().map(|&t| Write { buys: vec![record(t, 2)], idempotency: None }).collect();
        store.commit(&writes, base).unwrap();
        let mut cutoffs: Vec<i64> = stamps.iter().flat_map(|&t| [t - 1, t, t + 1]).collect();
        cutoffs.extend([base - 1, base + 3600 * US, base + 60 * US, base + 10 * 3600 * US]);
        for cutoff in cutoffs {
            let expected = stamps.iter().filter(|&&t| t >= cutoff).count() as i64;
            let counts = store.counts(cutoff).unwrap();
            assert_eq!(counts.recent_buys, expected, "cutoff {cutoff}");
            assert_eq!(counts.total_buys, 400);
        }
    }

    #[test]
    fn sequence_numbers_continue_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/store.db");
        let one = Write { buys: vec![record(US * 1_750_000_000, 1); 3], idempotency: None };
        {
            let store = SqliteStore::open_file(&path).unwrap();
            let outcomes = store.commit(std::slice::from_ref(&one), 0).unwrap();
            assert_eq!(outcomes, vec![WriteOutcome::Recorded { last_seq: 3, recorded: 3 }]);
        }
        let store = SqliteStore::open_file(&path).unwrap();
        let outcomes = store.commit(&[one], 0).unwrap();
        assert_eq!(outcomes, vec![WriteOutcome::Recorded { last_seq: 6, recorded: 3 }]);
        assert_eq!(store.counts(0).unwrap().total_buys, 6);
    }
}
