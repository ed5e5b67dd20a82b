//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`, so a committed
//! transaction is on disk before the writer acknowledges it. `memory:` uses the same code on an
//! in-memory database.
//!
//! Concurrency: only the writer thread writes, through `writer`; reads use their own connections
//! from a small pool, which WAL lets run beside the writer without blocking it. An in-memory
//! database cannot be shared between connections, so there reads take the writer's connection.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, params};

mod commit;
mod read;
mod schema;

use schema::migrate;

use super::pool::Pool;
use super::{ExportFilter, ExportRow, OpenError, Outcome, StoreError, Submission};
use crate::lock::lock;
use crate::store::log::{Fact, FactLog, Log, Position, RefundFact, Tail, ViewFact};

/// SQLite behind the [`Store`] interface.
pub struct SqliteStore {
    writer: Mutex<Connection>,
    /// `None` for an in-memory database.
    readers: Option<ReadPool>,
    /// Set on drop to stop the checkpointer thread.
    stop: Arc<AtomicBool>,
    /// The highest buy, view and refund numbers committed, published after each commit (refunds
    /// last, so a refund's buy is published before it).
    committed: AtomicI64,
    committed_views: AtomicI64,
    committed_refunds: AtomicI64,
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

/// Read connections to the same file, at most [`MAX_READERS`].
struct ReadPool {
    path: PathBuf,
    connections: Pool<Connection>,
}

/// Read connections per store. Reads are short and CPU-bound on a local file; more at once would
/// only add page caches (each grows to 2 MiB) and contend for the same cores.
const MAX_READERS: usize = 8;

/// A SQLite failure as a store error (see `StoreError`'s `From<rusqlite::Error>`).
fn unavailable(e: rusqlite::Error) -> StoreError {
    e.into()
}

impl SqliteStore {
    /// Open (creating file and folder if missing) a durable database file.
    pub fn open_file(path: &Path) -> Result<Self, OpenError> {
        let what = format!("SQLite store {}", path.display());
        let describe = |e: &dyn std::fmt::Display| OpenError::new(what.clone(), e.to_string());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| OpenError::new(what.clone(), e))?;
        }
        let conn = Connection::open(path).map_err(|e| OpenError::new(what.clone(), e))?;
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
        let committed = last_committed(&conn).map_err(|e| describe(&e))?;
        let stop = Arc::new(AtomicBool::new(false));
        start_checkpointer(path.to_path_buf(), stop.clone()).map_err(|e| describe(&e))?;
        Ok(SqliteStore {
            writer: Mutex::new(conn),
            readers: Some(ReadPool { path: path.to_path_buf(), connections: Pool::new(MAX_READERS, "SQLite") }),
            stop,
            committed: AtomicI64::new(committed.buys),
            committed_views: AtomicI64::new(committed.views),
            committed_refunds: AtomicI64::new(committed.refunds),
        })
    }

    /// An in-memory database: the same schema and code, nothing kept.
    pub fn open_memory() -> Result<Self, OpenError> {
        let what = "the in-memory store";
        let mut conn = Connection::open_in_memory().map_err(|e| OpenError::new(what, e))?;
        migrate(&mut conn).map_err(|e| OpenError::new(what, e))?;
        Ok(SqliteStore {
            writer: Mutex::new(conn),
            readers: None,
            stop: Arc::new(AtomicBool::new(true)),
            committed: AtomicI64::new(0),
            committed_views: AtomicI64::new(0),
            committed_refunds: AtomicI64::new(0),
        })
    }

    /// Run `f` on a read connection.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let Some(pool) = &self.readers else {
            return f(&lock(&self.writer)).map_err(unavailable);
        };
        let (conn, _) = pool.connections.acquire(|| {
            let conn = Connection::open(&pool.path).map_err(unavailable)?;
            conn.busy_timeout(Duration::from_secs(5)).map_err(unavailable)?;
            Ok(conn)
        })?;
        let result = f(&conn).map_err(unavailable);
        pool.connections.give_back(conn);
        result
    }
}

impl Log for SqliteStore {
    fn commit(&self, writes: &[Submission], now_us: i64) -> Result<Vec<Outcome>, StoreError> {
        let conn = lock(&self.writer);
        let (outcomes, last) =
            in_write_transaction(&conn, |tx| commit::apply(tx, writes, now_us)).map_err(unavailable)?;
        self.committed.fetch_max(last.buys, Ordering::Release);
        self.committed_views.fetch_max(last.views, Ordering::Release);
        self.committed_refunds.fetch_max(last.refunds, Ordering::Release);
        Ok(outcomes)
    }

    fn export_page(
        &self,
        filter: &ExportFilter,
        after: i64,
        up_to: i64,
        limit: usize,
    ) -> Result<Vec<ExportRow>, StoreError> {
        self.read(|conn| read::export_page(conn, filter, after, up_to, limit))
    }

    fn prune_idempotency(&self, before_us: i64, limit: usize) -> Result<usize, StoreError> {
        let delete = "DELETE FROM idempotency WHERE rowid IN
            (SELECT rowid FROM idempotency WHERE created_at_us < ?1 ORDER BY created_at_us LIMIT ?2)";
        let conn = lock(&self.writer);
        conn.prepare_cached(delete).and_then(|mut s| s.execute(params![before_us, limit as i64])).map_err(unavailable)
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| conn.query_row("SELECT total FROM counter WHERE id = 1", [], |_| Ok(())))
    }
}

/// Run `f` in one write transaction on the writer's connection: committed if it succeeds, rolled
/// back if it (or the commit) fails. BEGIN and COMMIT are cached statements:
/// `Connection::transaction` parses both again at every commit.
fn in_write_transaction<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
    let result = f(conn).and_then(|value| conn.prepare_cached("COMMIT")?.execute([]).map(|_| value));
    if result.is_err() && !conn.is_autocommit() {
        // Nothing of a failed commit stays: the next one starts from the committed state.
        let _ = conn.execute_batch("ROLLBACK");
    }
    result
}

/// The counters' totals: the highest buy and view numbers committed.
fn last_committed(conn: &Connection) -> rusqlite::Result<Position> {
    conn.query_row(
        "SELECT (SELECT total FROM counter WHERE id = 1), (SELECT total FROM view_counter WHERE id = 1),
                (SELECT total FROM refund_counter WHERE id = 1)",
        [],
        |r| Ok(Position { buys: r.get(0)?, views: r.get(1)?, refunds: r.get(2)? }),
    )
}

impl FactLog for SqliteStore {
    fn tail(&self, after: i64, since_us: i64, promotion_id: Option<i64>) -> Result<Tail, StoreError> {
        self.read(|conn| read::tail(conn, after, since_us, promotion_id))
    }

    fn store_id(&self) -> Result<String, StoreError> {
        self.read(|conn| conn.query_row("SELECT value FROM store_identity WHERE id = 1", [], |r| r.get(0)))
    }

    fn last_seq(&self) -> Result<i64, StoreError> {
        Ok(self.committed.load(Ordering::Acquire))
    }

    fn facts_in(&self, after: i64, up_to: i64, promotion_id: Option<i64>) -> Result<Vec<Fact>, StoreError> {
        self.read(|conn| read::facts_in(conn, after, up_to, promotion_id))
    }

    fn facts_after(&self, after: i64, limit: usize) -> Result<Vec<Fact>, StoreError> {
        self.read(|conn| read::facts_after(conn, after, limit))
    }

    fn between(
        &self,
        from_us: i64,
        to_us: i64,
        promotion_id: Option<i64>,
        up_to: i64,
    ) -> Result<crate::store::log::Slice, StoreError> {
        self.read(|conn| read::between(conn, from_us, to_us, promotion_id, up_to))
    }

    fn between_by_promotion(&self, from_us: i64, to_us: i64, up_to: i64) -> Result<Vec<(i64, i64, i64)>, StoreError> {
        self.read(|conn| read::between_by_promotion(conn, from_us, to_us, up_to))
    }

    fn last_view_seq(&self) -> Result<i64, StoreError> {
        Ok(self.committed_views.load(Ordering::Acquire))
    }

    fn last_refund_seq(&self) -> Result<i64, StoreError> {
        Ok(self.committed_refunds.load(Ordering::Acquire))
    }

    fn refunds_in(
        &self,
        after: i64,
        up_to: i64,
        promotion_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<RefundFact>, StoreError> {
        self.read(|conn| read::refunds_in(conn, after, up_to, promotion_id, limit))
    }

    fn views_after(&self, after: i64, limit: usize) -> Result<Vec<ViewFact>, StoreError> {
        self.read(|conn| read::views_after(conn, after, limit))
    }

    fn views_in(&self, after: i64, up_to: i64, promotion_id: Option<i64>) -> Result<Vec<ViewFact>, StoreError> {
        self.read(|conn| read::views_in(conn, after, up_to, promotion_id))
    }

    fn views_between(
        &self,
        from_us: i64,
        to_us: i64,
        promotion_id: Option<i64>,
        up_to: i64,
    ) -> Result<i64, StoreError> {
        self.read(|conn| read::views_between(conn, from_us, to_us, promotion_id, up_to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::BuyRecord;
    use crate::store::Facts;
    use crate::store::IDEMPOTENCY_TTL_US;
    use crate::store::views::deltas::US;

    fn record(timestamp_us: i64, quantity: i64) -> BuyRecord {
        BuyRecord::test(1, 2, 3, quantity, None, timestamp_us)
    }

    /// Expired keys are deleted a bounded slice per call, so a backlog (after a long outage)
    /// never stalls a commit for long; unexpired keys stay.
    #[test]
    fn expired_keys_are_pruned_in_bounded_slices() {
        let store = SqliteStore::open_memory().unwrap();
        let now = 1_750_000_000 * US;
        let keyed = |i: usize, at: i64| Submission {
            facts: Facts::Buys(vec![record(at, 1)]),
            idempotency: Some(crate::store::IdempotencyClaim { key: format!("k{i}"), fingerprint: [0; 32] }),
        };
        let old: Vec<Submission> = (0..2_500).map(|i| keyed(i, now)).collect();
        store.commit(&old, now).unwrap();
        store.commit(&[keyed(9_999, now)], now + 2 * IDEMPOTENCY_TTL_US).unwrap();
        let before = now + IDEMPOTENCY_TTL_US;
        let slices: Vec<usize> = (0..4).map(|_| store.prune_idempotency(before, 1_000).unwrap()).collect();
        assert_eq!(slices, vec![1_000, 1_000, 500, 0]);
        let left: i64 = lock(&store.writer).query_row("SELECT count(*) FROM idempotency", [], |r| r.get(0)).unwrap();
        assert_eq!(left, 1, "the unexpired key stays");
    }

    #[test]
    fn sequence_numbers_continue_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/store.db");
        let one = Submission { facts: Facts::Buys(vec![record(US * 1_750_000_000, 1); 3]), idempotency: None };
        {
            let store = SqliteStore::open_file(&path).unwrap();
            let outcomes = store.commit(std::slice::from_ref(&one), 0).unwrap();
            assert_eq!(outcomes, vec![Outcome::Recorded { last_seq: 3, recorded: 3 }]);
        }
        let store = SqliteStore::open_file(&path).unwrap();
        let outcomes = store.commit(&[one], 0).unwrap();
        assert_eq!(outcomes, vec![Outcome::Recorded { last_seq: 6, recorded: 3 }]);
        assert_eq!(store.last_seq().unwrap(), 6);
    }
}
