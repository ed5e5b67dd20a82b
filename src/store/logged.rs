//! The store the service uses: a log of facts on the acknowledgement path ([`Log`]), and views
//! that follow it (see [`super::views`]), behind the [`Store`] interface.
//!
//! A commit writes only the facts (and their sequence numbers and keys); the view stage picks
//! them up on its cadence. A read includes every fact acknowledged before the request arrived:
//! every read adds the log's tail after the views' snapshot, up to the last fact committed when
//! the read began.

use std::sync::Arc;
use std::thread::JoinHandle;

use super::log::{FactLog, Log, Position};
use super::tail_cache::TailCache;
use super::views::{BARRIER_TIMEOUT, Views};
use super::{
    Bucket, Counts, Customer, CustomerOrder, ExportFilter, ExportRow, Outcome, PromotionOrder, PromotionStats,
    PromotionSummary, Store, StoreError, Submission, TimingGrid,
};
use crate::lock::lock;

/// The most facts a count reads from the log's tail rather than wait for the views: a few times
/// what the view stage applies between two of its batches under load.
const TAIL_MAX: i64 = 20_000;

/// A log and its views.
pub struct LoggedStore {
    log: Arc<dyn Log>,
    /// The log as reads see it: its tail kept in memory between reads.
    tail: TailCache,
    views: Arc<Views>,
    stage: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl LoggedStore {
    /// Serve `log` with `views`, starting the view stage (which first catches up with the log,
    /// in the background: writes are served at once, reads wait for the views).
    pub fn start(log: Arc<dyn Log>, views: Views) -> Result<LoggedStore, super::OpenError> {
        let what = |e: StoreError| super::OpenError::new("the views", e);
        // On a thread of its own: this may be called on an async worker, where a blocking store
        // (PostgreSQL's client drives a runtime of its own) must not run.
        let adopted = std::thread::scope(|scope| scope.spawn(|| views.adopt(&log.store_id()?, log.position()?)).join());
        let foreign = adopted.map_err(|_| super::OpenError::new("the views", "the checking thread panicked"))?;
        if foreign.map_err(what)? {
            tracing::warn!("the views were built from another store, or are ahead of its log: they are rebuilt");
        }
        let views = Arc::new(views);
        let facts: Arc<dyn FactLog> = log.clone();
        let stage = views.start(facts.clone()).map_err(|e| super::OpenError::new("the view stage", e))?;
        Ok(LoggedStore { log, tail: TailCache::new(facts), views, stage: std::sync::Mutex::new(Some(stage)) })
    }

    /// The last fact committed when this was called: a read adds the facts after the views'
    /// snapshot up to it. A long tail (the views catching up at start-up) is not read from the
    /// log: this waits for the views instead.
    fn tail_end(&self) -> Result<Position, StoreError> {
        let target = self.log.position()?;
        let applied = self.views.applied();
        let behind = [target.buys - applied.buys, target.views - applied.views, target.refunds - applied.refunds];
        if behind.iter().any(|&n| n > TAIL_MAX) {
            self.views.wait_for(target, BARRIER_TIMEOUT)?;
        }
        Ok(target)
    }

    /// Wait until the views include every fact committed when this was called (tests: reads
    /// need not, they add the tail).
    #[cfg(test)]
    pub(crate) fn barrier(&self) -> Result<(), StoreError> {
        self.views.wait_for(self.log.position()?, BARRIER_TIMEOUT)
    }
}

impl Drop for LoggedStore {
    fn drop(&mut self) {
        self.views.stop();
        if let Some(stage) = lock(&self.stage).take() {
            let _ = stage.join();
        }
    }
}

impl Store for LoggedStore {
    fn position(&self) -> Result<Position, StoreError> {
        self.log.position()
    }

    fn commit(&self, writes: &[Submission], now_us: i64) -> Result<Vec<Outcome>, StoreError> {
        // The stage picks the facts up on its own cadence, or at once for a read waiting for them.
        self.log.commit(writes, now_us)
    }

    /// Counts need no barrier: the views' snapshot plus the log's tail after it (a range of
    /// a few milliseconds of facts) count every committed fact, at once.
    fn counts(&self, since_us: i64, promotion_id: Option<i64>) -> Result<Counts, StoreError> {
        self.tail_end()?;
        let (mut counts, applied) = self.views.counts(&self.tail, since_us, promotion_id)?;
        let tail = self.tail.tail(applied, since_us, promotion_id)?;
        counts.total_buys += tail.buys;
        counts.total_units += tail.units;
        counts.recent_buys += tail.recent_buys;
        counts.recent_units += tail.recent_units;
        Ok(counts)
    }

    fn promotions(
        &self,
        since_us: i64,
        order: PromotionOrder,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<PromotionSummary>, i64), StoreError> {
        let up_to = self.tail_end()?;
        self.views.promotions(&self.tail, since_us, (order, limit, offset), up_to)
    }

    /// As counts: the views' snapshot plus the promotion's facts after it.
    fn promotion_stats(&self, promotion_id: i64, windows: (i64, i64)) -> Result<PromotionStats, StoreError> {
        let up_to = self.tail_end()?;
        self.views.promotion_stats(&self.tail, promotion_id, windows, up_to)
    }

    /// The views' snapshot plus the views after it.
    fn recent_views(&self, since_us: i64, promotion_id: Option<i64>) -> Result<i64, StoreError> {
        let up_to = self.tail_end()?;
        self.views.recent_views(&self.tail, since_us, promotion_id, up_to)
    }

    fn timing(
        &self,
        since_us: i64,
        promotion_id: Option<i64>,
        grid: &dyn TimingGrid,
    ) -> Result<Vec<(i64, i64)>, StoreError> {
        let up_to = self.tail_end()?;
        self.views.timing(&self.tail, (since_us, promotion_id), grid, up_to)
    }

    fn customers(
        &self,
        promotion_id: i64,
        order: CustomerOrder,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<Customer>, i64), StoreError> {
        let up_to = self.tail_end()?;
        self.views.customers(&self.tail, promotion_id, (order, limit, offset), up_to)
    }

    fn timeseries(
        &self,
        granularity_s: i64,
        from_s: i64,
        to_s: i64,
        promotion_id: Option<i64>,
    ) -> Result<Vec<Bucket>, StoreError> {
        let up_to = self.tail_end()?;
        self.views.timeseries(&self.tail, granularity_s, (from_s, to_s), promotion_id, up_to)
    }

    fn export_page(
        &self,
        filter: &ExportFilter,
        after: i64,
        up_to: i64,
        limit: usize,
    ) -> Result<Vec<ExportRow>, StoreError> {
        self.log.export_page(filter, after, up_to, limit)
    }

    fn prune_idempotency(&self, before_us: i64, limit: usize) -> Result<usize, StoreError> {
        self.log.prune_idempotency(before_us, limit)
    }

    fn read_connections(&self) -> usize {
        self.views.read_connections()
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.log.ping()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::domain::BuyRecord;
    use crate::page_view::PageViewRecord;
    use crate::store::sqlite::SqliteStore;
    use crate::store::views::deltas::US;
    use crate::store::{CustomerOrder, Facts};

    /// A store on an in-memory log, with views in a temporary file.
    fn memory() -> LoggedStore {
        LoggedStore::start(Arc::new(SqliteStore::open_memory().unwrap()), Views::open(None).unwrap()).unwrap()
    }

    fn record(timestamp_us: i64, quantity: i64) -> BuyRecord {
        BuyRecord::test(1, 2, 3, quantity, None, timestamp_us)
    }

    fn one(i: i64) -> Submission {
        Submission { facts: Facts::Buys(vec![BuyRecord::example(i, 1_750_000_000_000_000 + i)]), idempotency: None }
    }

    /// A read right after a commit includes it: the barrier waits for the view stage. (Without
    /// it the stage, a thread wake away, lags behind almost every read here.)
    #[test]
    fn a_read_includes_every_commit_before_it() {
        let log = Arc::new(SqliteStore::open_memory().unwrap());
        let store = LoggedStore::start(log, Views::open(None).unwrap()).unwrap();
        for i in 1..=300 {
            store.commit(&[one(i)], 0).unwrap();
            let counts = store.counts(0, None).unwrap();
            assert_eq!((counts.total_buys, counts.recent_buys), (i, i));
            assert_eq!(
                store.promotion_stats(i % 7, (0, 0)).unwrap().counts.total_buys,
                (1..=i).filter(|j| j % 7 == i % 7).count() as i64
            );
        }
    }

    /// Counts include the facts the views have not applied yet, from the log's tail: with the
    /// view stage stopped, the next commits are counted at once, overall and per promotion.
    #[test]
    fn counts_add_the_tail_the_views_have_not_applied() {
        let log = Arc::new(SqliteStore::open_memory().unwrap());
        let store = LoggedStore::start(log, Views::open(None).unwrap()).unwrap();
        store.commit(&(1..=10).map(one).collect::<Vec<_>>(), 0).unwrap();
        assert_eq!(store.counts(0, None).unwrap().total_buys, 10);
        store.views.stop();
        if let Some(stage) = lock(&store.stage).take() {
            stage.join().unwrap();
        }
        store.commit(&(11..=15).map(one).collect::<Vec<_>>(), 0).unwrap();
        assert!(store.views.applied().buys <= 10, "the stage is stopped");
        let counts = store.counts(0, None).unwrap();
        assert_eq!((counts.total_buys, counts.recent_buys), (15, 15));
        assert_eq!(store.counts(0, Some(4)).unwrap().total_buys, 2, "buys 4 and 11 of promotion 4");
        let late = store.counts(1_750_000_000_000_000 + 12, None).unwrap();
        assert_eq!(late.recent_buys, 4, "buys 12 to 15 are at or after the cutoff");
    }

    /// Views built from one store are not trusted for another (a file replaced under the same
    /// path): they are emptied and rebuilt from the new store's log.
    #[test]
    fn views_of_another_store_are_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
        let views = dir.path().join("views.db");
        {
            let log = Arc::new(SqliteStore::open_file(&a).unwrap());
            let store = LoggedStore::start(log, Views::open(Some(&views)).unwrap()).unwrap();
            store.commit(&(1..=50).map(one).collect::<Vec<_>>(), 0).unwrap();
            assert_eq!(store.counts(0, None).unwrap().total_buys, 50);
        }
        let log = Arc::new(SqliteStore::open_file(&b).unwrap());
        log.commit(&(1..=7).map(one).collect::<Vec<_>>(), 0).unwrap();
        let store = LoggedStore::start(log, Views::open(Some(&views)).unwrap()).unwrap();
        let counts = store.counts(0, None).unwrap();
        assert_eq!((counts.total_buys, counts.recent_buys), (7, 7), "only store b's facts");
        assert_eq!(store.promotions(0, PromotionOrder::Buys, 100, 0).unwrap().1, 7);
    }

    /// The views catch up with a log that already holds facts (a restart, or views rebuilt), and
    /// answer as views that followed the same log commit by commit.
    #[test]
    fn views_built_from_an_existing_log_answer_as_views_that_followed_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("buys.db");
        let batch: Vec<Submission> = (1..=2_000).map(one).collect();
        let live = memory();
        for chunk in batch.chunks(7) {
            live.commit(chunk, 0).unwrap();
        }
        SqliteStore::open_file(&path).unwrap().commit(&batch, 0).unwrap();
        let log = Arc::new(SqliteStore::open_file(&path).unwrap());
        let store = LoggedStore::start(log, Views::open(Some(&crate::store::views_path(&path))).unwrap()).unwrap();
        let base = 1_750_000_000_000_000;
        let cutoffs = [0, base, base + 1, base + 999, base + 1_000, base + 1_500, base + 10_000];
        crate::store::assert_same_answers(
            &store,
            &live,
            (&cutoffs, base + 10_000),
            &[0, 3, 6],
            (1_749_999_940, 1_750_000_060),
            (1_749_996_000, 1_750_003_600),
        );
    }

    /// Recent counts from the views (and the log's tail) equal a brute-force count at every cutoff, including cutoffs
    /// inside a second, on a minute or hour edge, and after every buy.
    #[test]
    fn recent_counts_are_exact_at_every_cutoff() {
        let store = memory();
        let base = 1_750_000_000 * US;
        let stamps: Vec<i64> = (0..400).map(|i| base + i * 37_123_457 % (5 * 3600 * US) + i).collect();
        let writes: Vec<Submission> =
            stamps.iter().map(|&t| Submission { facts: Facts::Buys(vec![record(t, 2)]), idempotency: None }).collect();
        store.commit(&writes, base).unwrap();
        let mut cutoffs: Vec<i64> = stamps.iter().flat_map(|&t| [t - 1, t, t + 1]).collect();
        cutoffs.extend([base - 1, base + 3600 * US, base + 60 * US, base + 10 * 3600 * US]);
        for cutoff in cutoffs {
            let expected = stamps.iter().filter(|&&t| t >= cutoff).count() as i64;
            let counts = store.counts(cutoff, None).unwrap();
            assert_eq!(counts.recent_buys, expected, "cutoff {cutoff}");
            assert_eq!(counts.total_buys, 400);
        }
    }

    /// Pruning the views' second and minute buckets older than ROLLUP_KEEP_S changes no answer a read can
    /// ask for: every window of at most 168 hours and the one before it, overall and per promotion, and
    /// minute series.
    #[test]
    fn pruned_views_answer_every_readable_window_exactly() {
        let (pruned, kept) = (memory(), memory());
        let now = 1_750_000_000 * US;
        // Twenty days of buys (previous windows reach 336 hours back), one every 144 s or so at
        // irregular instants, over three promotions, plus a stray one from years before.
        let mut stamps: Vec<i64> = (0..12_000).map(|i| now - 20 * 24 * 3600 * US + i * 143_999_917 + i % 997).collect();
        stamps.push(now - 5 * 365 * 24 * 3600 * US);
        let buy = |i: usize, t: i64| {
            let mut r = record(t, 1 + (i % 3) as i64);
            r.buy.promotion_id = (i % 3) as i64;
            r
        };
        for (i, chunk) in stamps.chunks(100).enumerate() {
            let writes: Vec<Submission> = chunk
                .iter()
                .enumerate()
                .map(|(j, &t)| Submission { facts: Facts::Buys(vec![buy(i * 100 + j, t)]), idempotency: None })
                .collect();
            pruned.commit(&writes, now).unwrap();
            kept.commit(&writes, now).unwrap();
        }
        let recent: Vec<i64> = stamps.iter().filter(|&&t| t >= now - 168 * 3600 * US).step_by(97).copied().collect();
        let cutoffs: Vec<i64> = recent.iter().flat_map(|&t| [t, t + 1]).chain([now - 90 * US - 3]).collect();
        crate::store::assert_pruning_changes_no_answer(
            &pruned,
            &mut || pruned.views.prune(now).unwrap(),
            &kept,
            now,
            &cutoffs,
        );
    }

    /// Totals and recent counts agree: with every buy recent, `recent_buys`
    /// equals `total_buys` in every read taken while commits go on. (Read in two snapshots, a
    /// commit between them made the recent count exceed the total; the views' snapshot and the
    /// log's tail must not either.)
    #[test]
    fn counts_are_read_in_one_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let log = Arc::new(SqliteStore::open_file(&path).unwrap());
        let store =
            Arc::new(LoggedStore::start(log, Views::open(Some(&crate::store::views_path(&path))).unwrap()).unwrap());
        let now = 1_750_000_000 * US;
        let writing = Arc::new(AtomicBool::new(true));
        let writer = {
            let (store, writing) = (store.clone(), writing.clone());
            std::thread::spawn(move || {
                while writing.load(Ordering::Relaxed) {
                    store
                        .commit(&[Submission { facts: Facts::Buys(vec![record(now, 1)]), idempotency: None }], now)
                        .unwrap();
                }
            })
        };
        for _ in 0..3_000 {
            let counts = store.counts(now - US, None).unwrap();
            assert_eq!(counts.recent_buys, counts.total_buys, "{counts:?}");
        }
        writing.store(false, Ordering::Relaxed);
        writer.join().unwrap();
    }

    /// Views, unique and converted viewers and recent views equal a recount from the facts.
    #[test]
    fn the_funnel_matches_a_recount() {
        let store = memory();
        let settle = || store.barrier().unwrap();
        crate::store::assert_funnel_matches_a_recount(&[&store], &settle, 1_750_000_000 * US);
    }

    /// The local hours of a zone whose offset is 2 hours in every third UTC hour and 2:45 in
    /// the others: both ways of reading `timing` (hourly buckets, and minutes summed by local
    /// hour for split hours) in one answer, with runs of split hours broken by whole ones.
    struct MixedGrid;

    impl MixedGrid {
        fn offset(hour_s: i64) -> i64 {
            if hour_s.div_euclid(3600) % 3 == 0 { 7200 } else { 7200 + 45 * 60 }
        }
    }

    impl TimingGrid for MixedGrid {
        fn cells(&self) -> usize {
            97
        }
        fn cell_of(&self, us: i64) -> usize {
            let s = us.div_euclid(US);
            (s + Self::offset(s)).div_euclid(3600).rem_euclid(97) as usize
        }
        fn offset_over_hour(&self, hour_s: i64) -> Option<i64> {
            Some(Self::offset(hour_s))
        }
    }

    /// Promotion stats, timeseries and the promotions page add the facts the views have not
    /// applied, exactly: with the stage stopped, answers over a tail that brings new and known
    /// buyers, moves products into and out of the top ten, a promotion up the ranking and a new
    /// one onto it, and lands in old and new buckets, equal those of views that applied
    /// everything. The tail arrives in pieces with reads between them, as under load.
    #[test]
    fn the_tail_added_to_views_answers_as_views_that_applied_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("buys.db");
        let base = 1_750_000_000 * US;
        let buy = |i: i64, product: i64, at: i64| {
            let mut record = BuyRecord::test(i % 23, i % 3, product, 1 + i % 4, (i % 5 != 0).then_some(100 + i), at);
            record.buy.user_id = i % 23;
            Submission { facts: Facts::Buys(vec![record]), idempotency: None }
        };
        let view = |i: i64, promotion: i64, at: i64| Submission {
            facts: Facts::Views(vec![PageViewRecord::test(i % 29, promotion, at)]),
            idempotency: None,
        };
        // Views are committed in the same transactions as buys, interleaved.
        let applied: Vec<Submission> = (0..400)
            .flat_map(|i| [buy(i, i % 15, base + i * 7_000_000), view(i * 5, i % 3, base + i * 6_000_000)])
            .collect();
        // The tail: products 20 to 22 are new to promotion 0 and 21 enters its top ten; some buys
        // are late.
        let tail: Vec<Submission> = (400..520)
            .flat_map(|i| {
                let mut write = buy(i * 3, if i % 2 == 0 { 14 } else { 20 + i % 3 }, base + (i % 7) * 900_000_000 + i);
                // Promotion 3 is new; promotion 2 gains enough to pass promotion 1.
                write.buys_mut()[0].buy.promotion_id = [0, 0, 3, 2, 2, 2][i as usize % 6];
                // Viewers who bought before, viewers who buy in the tail, and promotion 4, which
                // has views only.
                let promotion = [0, 1, 2, 3, 4, 4][i as usize % 6];
                [write, view(i * 7, promotion, base + (i % 5) * 800_000_000 + i)]
            })
            .collect();
        let windows = [0, base, base + 1_000 * US, base + 2_800 * US + 1];
        let series = (base / US - 7200, base / US + 7200);
        let answers = |store: &LoggedStore| {
            let mut all = Vec::new();
            for p in 0..5 {
                for &since in &windows {
                    all.push(format!("{:?}", store.promotion_stats(p, (since, since - 900 * US)).unwrap()));
                }
                for g in [60, 3600] {
                    all.push(format!("{:?}", store.timeseries(g, series.0, series.1, Some(p)).unwrap()));
                }
                for &since in &windows {
                    all.push(format!("{:?}", store.timing(since, Some(p), &MixedGrid).unwrap()));
                }
                for (_, order) in CustomerOrder::ALL {
                    for (limit, offset) in [(10, 0), (3, 2), (1000, 0)] {
                        all.push(format!("{:?}", store.customers(p, order, limit, offset).unwrap()));
                    }
                }
            }
            all.push(format!("{:?}", store.timeseries(60, series.0, series.1, None).unwrap()));
            for &since in &windows {
                for (limit, offset) in [(10, 0), (1, 0), (1, 1), (2, 2), (5, 3), (100, 0)] {
                    for (_, order) in PromotionOrder::ALL {
                        all.push(format!("{:?}", store.promotions(since, order, limit, offset).unwrap()));
                    }
                }
            }
            all
        };
        let with_tail = {
            let store =
                LoggedStore::start(Arc::new(SqliteStore::open_file(&path).unwrap()), Views::open(None).unwrap())
                    .unwrap();
            store.commit(&applied, base).unwrap();
            store.barrier().unwrap();
            store.views.stop();
            if let Some(stage) = lock(&store.stage).take() {
                stage.join().unwrap();
            }
            // In pieces, each read: the reads' caches of the tail and of what the snapshot knows
            // of its users are warm with part of it when the last read comes.
            for piece in tail.chunks(37) {
                store.commit(piece, base).unwrap();
                answers(&store);
            }
            assert_eq!(store.views.applied(), Position { buys: 400, views: 400, refunds: 0 }, "the stage is stopped");
            answers(&store)
        };
        let store =
            LoggedStore::start(Arc::new(SqliteStore::open_file(&path).unwrap()), Views::open(None).unwrap()).unwrap();
        store.barrier().unwrap();
        assert_eq!(store.views.applied(), Position { buys: 520, views: 520, refunds: 0 });
        assert_eq!(with_tail, answers(&store));
        let funnel = store.promotion_stats(4, (0, 0)).unwrap();
        assert_eq!((funnel.views, funnel.counts.total_buys), (40, 0), "promotion 4 has views only");
        let top = store.promotion_stats(0, (0, 0)).unwrap().top_products;
        assert!(top.iter().any(|p| p.product_id == 21), "new product 21 entered the top ten: {top:?}");
        let ranking: Vec<i64> =
            store.promotions(0, PromotionOrder::Buys, 10, 0).unwrap().0.iter().map(|p| p.promotion_id).collect();
        assert_eq!(ranking, [2, 0, 1, 3, 4], "promotion 2 passed the others, 3 is new, 4 has views only");
    }
}
