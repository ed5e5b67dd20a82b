//! The views: every analytic, computed from the log of facts by a stage of its own, off the
//! acknowledgement path.
//!
//! The view stage (a thread) reads the facts after the last one it applied, in sequence order,
//! and applies them to a SQLite database of aggregates in one transaction per batch, recording the
//! sequence number applied in the same transaction. That number is the views' checkpoint: at
//! start-up only the facts after it are replayed, and a views file that is missing or of another
//! layout is rebuilt from the whole log (`buy-tracker rebuild-views`).
//!
//! Reads stay exact: each reads one snapshot of the views and adds the log's tail after it, up to
//! the highest sequence number acknowledged when it arrived (`tail`), so no read waits for the
//! stage. A tail too long to read (the views catching up at start-up) is waited for instead
//! ([`Views::wait_for`]); past [`BARRIER_TIMEOUT`] the read fails (503) rather than answer stale.
//!
//! Concurrency: only the stage writes the views; reads use their own connections (WAL lets them
//! run beside the stage). Views opened without a path (`memory:`, and PostgreSQL replicas without
//! `--views-path`) live in a private temporary file, deleted with them: an in-memory database
//! would have one connection, and every read would queue behind the stage and each other (on
//! PostgreSQL under the mix, reads waited 38 ms at the median).

mod apply;
pub(crate) mod deltas;
mod read;
mod schema;
mod tail;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::log::{FactLog, Position};
use super::pool::Pool;
use super::{
    Bucket, Counts, Customer, CustomerOrder, OpenError, PromotionOrder, PromotionStats, PromotionSummary,
    ROLLUP_KEEP_S, StoreError, StoreErrorKind, TimingGrid,
};
use crate::lock::lock;
use read::Edge;
pub use schema::DeferredIndexes;

/// The longest a read waits for the views to reach the facts acknowledged before it.
pub const BARRIER_TIMEOUT: Duration = Duration::from_secs(2);
/// Facts applied per transaction at most: large enough to amortise a catch-up, small enough that
/// a read waiting for the batch's end waits briefly.
const BATCH_FACTS: usize = 20_000;
/// Facts per transaction when rebuilding, which no read waits for.
const REBUILD_BATCH_FACTS: usize = 200_000;
/// How often the stage applies what the log holds when no read waits for it. Applying less often
/// makes batches bigger, and a batch's cost is mostly its commit and the WAL checkpoints it
/// triggers (every page it touched written once), not its facts: measured per-commit batches cost
/// the stage 15 µs a buy. With §9's views, 25 ms cost 14 µs a buy under `POST /buy` at 64
/// connections (the stage's CPU is taken from the writes on 2 cores: buys/s fell to 0.74 of the
/// build before §9); 100 ms costs 8–10 µs, and buys/s are back within noise of it (median 0.97 over
/// six A/B rounds, `docs/performance.md`). Reads never wait for this: they add the log's tail (up to
/// 100 ms of facts), and a read that must wait wakes the stage at once.
const APPLY_EVERY: Duration = Duration::from_millis(100);
/// How often the stage prunes buckets no read can reach.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Read connections on a views file.
const MAX_READERS: usize = 8;

/// Take the lock of the views at `path` (a file beside them): one process at a time may use a
/// views file, so two replicas given the same `--views-path`, or a rebuild beside the running
/// service, are refused rather than corrupt each other's views.
pub fn lock_views(path: &Path) -> Result<std::fs::File, OpenError> {
    let lock_path = PathBuf::from(format!("{}.lock", path.display()));
    let what = || format!("views {}", path.display());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| OpenError::new(what(), e))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| OpenError::new(what(), e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(OpenError::new(
            what(),
            "another buy-tracker process uses these views (give each replica its own --views-path)",
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(OpenError::new(what(), e)),
    }
}

/// The views of one store, and the stage that keeps them.
pub struct Views {
    /// The views file's lock, held as long as these views are open.
    _lock: std::fs::File,
    /// The stage's connection.
    writer: Mutex<Connection>,
    /// Read connections to the views file.
    readers: (PathBuf, Pool<Connection>),
    /// The last buy and view applied, and a signal when they move.
    applied: Mutex<Position>,
    advanced: Condvar,
    /// Set by a read waiting for facts not yet applied, to wake the stage at once.
    demand: Mutex<bool>,
    woken: Condvar,
    stop: AtomicBool,
    /// What reads of the newest snapshot have looked up for their tails' users.
    known: Mutex<tail::KnownPairs>,
    /// The folder of views opened without a path, deleted with them (last: after every
    /// connection to the file is closed).
    _temporary: Option<tempfile::TempDir>,
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    e.into()
}

impl Views {
    /// Open the views at `path` (created if missing; rebuilt from the log if of another layout),
    /// or in a private temporary file with `None` (rebuilt at every start).
    pub fn open(path: Option<&Path>) -> Result<Views, OpenError> {
        match path {
            Some(path) => Self::open_locked(path, lock_views(path)?, None),
            None => {
                let temporary = tempfile::Builder::new()
                    .prefix("buy-tracker-views-")
                    .tempdir()
                    .map_err(|e| OpenError::new("temporary views", e))?;
                let path = temporary.path().join("views.db");
                let views = Self::open_locked(&path, lock_views(&path)?, Some(temporary))?;
                // Deleted at exit and rebuilt at every start: nothing to keep across a crash.
                lock(&views.writer)
                    .execute_batch("PRAGMA synchronous=OFF")
                    .map_err(|e| OpenError::new("temporary views", e))?;
                Ok(views)
            }
        }
    }

    fn open_locked(path: &Path, lock: std::fs::File, temporary: Option<tempfile::TempDir>) -> Result<Views, OpenError> {
        let what = format!("views {}", path.display());
        let fail = |e: rusqlite::Error| OpenError::new(what.clone(), e);
        let mut conn = Connection::open(path).map_err(fail)?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(fail)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(OpenError::new(what, format!("WAL mode refused (journal_mode is {mode})")));
        }
        if schema::prepare(&mut conn).map_err(fail)? {
            tracing::info!("{what}: created; they are built from the log");
        }
        let applied = conn
            .query_row("SELECT seq, views_seq, refunds_seq FROM applied WHERE id = 1", [], |r| {
                Ok(Position { buys: r.get(0)?, views: r.get(1)?, refunds: r.get(2)? })
            })
            .map_err(fail)?;
        Ok(Views {
            _lock: lock,
            writer: Mutex::new(conn),
            readers: (path.to_path_buf(), Pool::new(MAX_READERS, "views")),
            known: Mutex::default(),
            applied: Mutex::new(applied),
            advanced: Condvar::new(),
            demand: Mutex::new(false),
            woken: Condvar::new(),
            stop: AtomicBool::new(false),
            _temporary: temporary,
        })
    }

    /// Views at `path` to be built from scratch by [`Views::catch_up`], with the file's safety off
    /// while they are: no rollback journal, no syncs, a large cache, and no secondary indexes (they
    /// are built at the end, each by one sort). A crash mid-way leaves a file marked unfinished,
    /// rebuilt at the next start; [`Views::finish_rebuild`] creates the indexes and turns the usual
    /// settings back on.
    pub fn open_for_rebuild(path: &Path, held: std::fs::File) -> Result<(Views, DeferredIndexes), OpenError> {
        let views = Self::open_locked(path, held, None)?;
        let fail = |e: rusqlite::Error| OpenError::new(format!("views {}", path.display()), e);
        let deferred = {
            let conn = lock(&views.writer);
            conn.execute_batch("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-262144;")
                .map_err(fail)?;
            schema::defer_indexes(&conn).map_err(fail)?
        };
        Ok((views, deferred))
    }

    /// After a rebuild: the deferred indexes created, back to WAL and `synchronous=NORMAL`, with
    /// everything on disk.
    pub fn finish_rebuild(&self, deferred: &DeferredIndexes) -> Result<(), StoreError> {
        let conn = lock(&self.writer);
        schema::create_indexes(&conn, deferred)?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::unavailable(format!("WAL mode refused (journal_mode is {mode})")));
        }
        conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA wal_checkpoint(TRUNCATE); PRAGMA synchronous=NORMAL;")?;
        Ok(())
    }

    /// Take these views for the store `store_id`, whose log is committed up to `last`. Views
    /// recorded for another store, or ahead of the log (a store restored from an older copy), are
    /// emptied, to be rebuilt from the log; returns whether they were.
    pub fn adopt(&self, store_id: &str, last: Position) -> Result<bool, StoreError> {
        let mut conn = lock(&self.writer);
        let (store, applied): (Option<String>, Position) =
            conn.query_row("SELECT store, seq, views_seq, refunds_seq FROM applied WHERE id = 1", [], |r| {
                Ok((r.get(0)?, Position { buys: r.get(1)?, views: r.get(2)?, refunds: r.get(3)? }))
            })?;
        let foreign = store.is_some_and(|s| s != store_id) || !last.covers(applied);
        if foreign {
            schema::reset(&mut conn)?;
            *lock(&self.applied) = Position::default();
        }
        conn.execute("UPDATE applied SET store = ?1 WHERE id = 1", [store_id])?;
        Ok(foreign)
    }

    /// The last buy and view the views have applied.
    pub fn applied(&self) -> Position {
        *lock(&self.applied)
    }

    /// Reads at once the views serve.
    pub fn read_connections(&self) -> usize {
        MAX_READERS
    }

    /// Start the stage, applying `log`'s facts until [`Views::stop`].
    pub fn start(self: &Arc<Self>, log: Arc<dyn FactLog>) -> std::io::Result<JoinHandle<()>> {
        let views = self.clone();
        std::thread::Builder::new().name("view-stage".into()).spawn(move || views.run(log.as_ref()))
    }

    /// Ask the stage to stop after its current batch.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake();
    }

    /// Wake the stage at once (a read waits for it, or it should stop).
    fn wake(&self) {
        *lock(&self.demand) = true;
        self.woken.notify_one();
    }

    /// Wait until the views have applied `target`, at most `timeout`.
    pub fn wait_for(&self, target: Position, timeout: Duration) -> Result<(), StoreError> {
        let deadline = Instant::now() + timeout;
        let mut applied = lock(&self.applied);
        while !applied.covers(target) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let behind = (target.buys - applied.buys).max(0) + (target.views - applied.views).max(0);
                return Err(StoreError::new(
                    StoreErrorKind::Behind,
                    format!("views are {behind} facts behind the log"),
                ));
            }
            drop(applied);
            self.wake();
            applied = lock(&self.applied);
            // Checked again under the lock: the stage may have moved on since the check above,
            // and its notification would be lost to a wait begun after it.
            if applied.covers(target) {
                break;
            }
            applied = self.advanced.wait_timeout(applied, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        Ok(())
    }

    /// Apply what the log holds after the applied number, a batch at a time, until it holds no
    /// more; returns how many facts were applied.
    pub fn catch_up(&self, log: &dyn FactLog) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            let n = self.apply_batch(log, REBUILD_BATCH_FACTS)?;
            total += n;
            if n < REBUILD_BATCH_FACTS {
                return Ok(total);
            }
        }
    }

    /// Apply one batch of at most `limit` buys and `limit` views after the applied ones;
    /// returns how many of the kind with more (a full batch means more may be waiting).
    fn apply_batch(&self, log: &dyn FactLog, limit: usize) -> Result<usize, StoreError> {
        let after = self.applied();
        // Refunds first: each was committed after its buy, so the buys read next include the
        // buys of all of them, unless the batch's limit cuts the buys short.
        let refunds = log.refunds_in(after.refunds, i64::MAX, None, limit)?;
        let facts = log.facts_after(after.buys, limit)?;
        let views = log.views_after(after.views, limit)?;
        if facts.is_empty() && views.is_empty() && refunds.is_empty() {
            return Ok(0);
        }
        let mut conn = lock(&self.writer);
        let tx = conn.transaction().map_err(unavailable)?;
        // Buys first, then views: a user who is new as a buyer and as a viewer in the same batch
        // is counted as converted once, by the views.
        let buys = if facts.is_empty() { after.buys } else { apply::apply(&tx, &facts).map_err(unavailable)? };
        let views_last =
            if views.is_empty() { after.views } else { apply::apply_views(&tx, &views).map_err(unavailable)? };
        // Refunds whose buy is applied: the rest wait for the next batch.
        let refunds_last = match refunds.iter().position(|r| r.buy_count > buys) {
            Some(0) => after.refunds,
            Some(n) => apply::apply_refunds(&tx, &refunds[..n]).map_err(unavailable)?,
            None if refunds.is_empty() => after.refunds,
            None => apply::apply_refunds(&tx, &refunds).map_err(unavailable)?,
        };
        tx.commit().map_err(unavailable)?;
        drop(conn);
        *lock(&self.applied) = Position { buys, views: views_last, refunds: refunds_last };
        self.advanced.notify_all();
        Ok(facts.len().max(views.len()).max(refunds.len()))
    }

    /// Set the metric of how far the views are behind the log, after each batch (during a
    /// catch-up too, when it matters most): one position of the log, on PostgreSQL a query.
    fn report_behind(&self, log: &dyn FactLog) {
        if let Ok(last) = log.position() {
            let applied = self.applied();
            crate::metrics::views_behind((
                last.buys - applied.buys,
                last.views - applied.views,
                last.refunds - applied.refunds,
            ));
        }
    }

    /// The stage: apply batches as facts arrive; prune now and then.
    fn run(&self, log: &dyn FactLog) {
        let mut last_prune = Instant::now();
        let mut failing = false;
        while !self.stop.load(Ordering::Relaxed) {
            match self.apply_batch(log, BATCH_FACTS) {
                Ok(n) => {
                    if failing {
                        tracing::info!("the view stage applies facts again");
                        failing = false;
                    }
                    self.report_behind(log);
                    if n == BATCH_FACTS {
                        continue;
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %crate::telemetry::error_chain(&e), "the view stage cannot apply facts; retrying");
                        failing = true;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = Instant::now();
                if let Err(e) = self.prune(crate::clock::Clock::now_us(&crate::clock::SystemClock)) {
                    tracing::warn!(error = %crate::telemetry::error_chain(&e), "pruning old buckets failed");
                }
            }
            let mut demand = lock(&self.demand);
            if !*demand {
                demand = self.woken.wait_timeout(demand, APPLY_EVERY).unwrap_or_else(|p| p.into_inner()).0;
            }
            *demand = false;
        }
    }

    /// Delete buckets and recent buys no window can reach at `now_us`, a bounded slice.
    pub fn prune(&self, now_us: i64) -> Result<usize, StoreError> {
        let mut conn = lock(&self.writer);
        let tx = conn.transaction().map_err(unavailable)?;
        let deleted = apply::prune(&tx, now_us.div_euclid(1_000_000) - ROLLUP_KEEP_S).map_err(unavailable)?;
        tx.commit().map_err(unavailable)?;
        Ok(deleted)
    }

    /// Run `f` in one read transaction of the views, with the log for windows' edges.
    fn read<T>(
        &self,
        log: &dyn FactLog,
        f: impl FnOnce(&Connection, &Edge) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let snapshot = |conn: &Connection| -> Result<T, StoreError> {
            let tx = conn.unchecked_transaction()?;
            let applied = read::applied(&tx)?;
            let edge =
                Edge { log, applied: applied.buys, views_applied: applied.views, refunds_applied: applied.refunds };
            let value = f(&tx, &edge)?;
            tx.finish()?;
            Ok(value)
        };
        let (path, pool) = &self.readers;
        let (conn, _) = pool.acquire(|| {
            let conn = Connection::open(path).map_err(unavailable)?;
            conn.busy_timeout(Duration::from_secs(5)).map_err(unavailable)?;
            Ok(conn)
        })?;
        let result = snapshot(&conn);
        pool.give_back(conn);
        result
    }

    /// See [`super::Store::counts`], as of the views' snapshot; with the number it was applied to.
    pub fn counts(
        &self,
        log: &dyn FactLog,
        since_us: i64,
        promotion_id: Option<i64>,
    ) -> Result<(Counts, i64), StoreError> {
        self.read(log, |conn, edge| Ok((read::counts(conn, edge, since_us, promotion_id)?, edge.applied)))
    }

    /// See [`super::Store::promotions`]: the views' snapshot, plus the facts after it up to
    /// `up_to`.
    pub fn promotions(
        &self,
        log: &dyn FactLog,
        since_us: i64,
        page: (PromotionOrder, i64, i64),
        up_to: Position,
    ) -> Result<(Vec<PromotionSummary>, i64), StoreError> {
        self.read(log, |conn, edge| {
            let tail = log.facts_in(edge.applied, up_to.buys, None)?;
            let views = log.views_in(edge.views_applied, up_to.views, None)?;
            let refunds = log.refunds_in(edge.refunds_applied, up_to.refunds, None, usize::MAX)?;
            tail::promotions_page((conn, &self.known), edge, since_us, page, (&tail, &views, &refunds))
        })
    }

    /// See [`super::Store::promotion_stats`]: the views' snapshot, plus the promotion's facts
    /// after it up to `up_to` (the log's tail, which no read waits for).
    pub fn promotion_stats(
        &self,
        log: &dyn FactLog,
        promotion_id: i64,
        windows: (i64, i64),
        up_to: Position,
    ) -> Result<PromotionStats, StoreError> {
        self.read(log, |conn, edge| {
            let mut stats = read::promotion_stats(conn, edge, promotion_id, windows)?;
            // Every buy of the tail: new customers depend on buys in other promotions.
            let tail = log.facts_in(edge.applied, up_to.buys, None)?;
            let views = log.views_in(edge.views_applied, up_to.views, Some(promotion_id))?;
            let refunds = log.refunds_in(edge.refunds_applied, up_to.refunds, Some(promotion_id), usize::MAX)?;
            tail::add_to_promotion_stats(
                (conn, &self.known, edge.position()),
                &mut stats,
                promotion_id,
                windows,
                (&tail, &views),
            )?;
            for refund in &refunds {
                stats.refunded_units += refund.units;
                stats.refunded_cents = stats.refunded_cents.saturating_add(refund.cents);
            }
            Ok(stats)
        })
    }

    /// See [`super::Store::recent_views`]: the views' snapshot, plus the views after it up to
    /// `up_to`.
    pub fn recent_views(
        &self,
        log: &dyn FactLog,
        since_us: i64,
        promotion_id: Option<i64>,
        up_to: Position,
    ) -> Result<i64, StoreError> {
        self.read(log, |conn, edge| {
            let views = log.views_in(edge.views_applied, up_to.views, promotion_id)?;
            let tail = views.iter().filter(|v| v.timestamp_us >= since_us).count() as i64;
            Ok(read::recent_views(conn, edge, since_us, promotion_id)? + tail)
        })
    }

    /// See [`super::Store::timing`]: the views' snapshot, plus the facts after it up to
    /// `up_to`.
    pub fn timing(
        &self,
        log: &dyn FactLog,
        (since_us, promotion_id): (i64, Option<i64>),
        grid: &dyn TimingGrid,
        up_to: Position,
    ) -> Result<Vec<(i64, i64)>, StoreError> {
        self.read(log, |conn, edge| {
            let mut counts = vec![(0, 0); grid.cells()];
            read::timing(conn, edge, since_us, promotion_id, &mut counts, grid)?;
            for fact in log.facts_in(edge.applied, up_to.buys, promotion_id)? {
                if fact.timestamp_us >= since_us
                    && let Some(cell) = counts.get_mut(grid.cell_of(fact.timestamp_us))
                {
                    cell.0 += 1;
                    cell.1 += fact.buy.quantity.get();
                }
            }
            Ok(counts)
        })
    }

    /// See [`super::Store::customers`]: the views' snapshot, plus the promotion's buys after it
    /// up to `up_to`.
    pub fn customers(
        &self,
        log: &dyn FactLog,
        promotion_id: i64,
        page: (CustomerOrder, i64, i64),
        up_to: Position,
    ) -> Result<(Vec<Customer>, i64), StoreError> {
        self.read(log, |conn, edge| {
            let tail = log.facts_in(edge.applied, up_to.buys, Some(promotion_id))?;
            let refunds = log.refunds_in(edge.refunds_applied, up_to.refunds, Some(promotion_id), usize::MAX)?;
            tail::customers_page(conn, promotion_id, page, (&tail, &refunds))
        })
    }

    /// See [`super::Store::timeseries`]: the views' snapshot, plus the facts after it up to
    /// `up_to`.
    pub fn timeseries(
        &self,
        log: &dyn FactLog,
        granularity_s: i64,
        (from_s, to_s): (i64, i64),
        promotion_id: Option<i64>,
        up_to: Position,
    ) -> Result<Vec<Bucket>, StoreError> {
        self.read(log, |conn, edge| {
            let mut buckets = read::timeseries(conn, granularity_s, from_s, to_s, promotion_id)?;
            let tail = log.facts_in(edge.applied, up_to.buys, promotion_id)?;
            let views = log.views_in(edge.views_applied, up_to.views, promotion_id)?;
            tail::add_to_timeseries(&mut buckets, (granularity_s, from_s, to_s), &tail, &views);
            Ok(buckets)
        })
    }
}
