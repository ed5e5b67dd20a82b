//! The group-commit writer: the one place that writes to the store.
//!
//! Requests hand their [`Submission`]s to a queue and wait. A dedicated thread takes whatever is
//! queued (up to [`MAX_BATCH_BUYS`] buys), commits it in one transaction, and only then answers
//! each request. One fsync thus covers many requests: under load batches grow by themselves, and
//! an idle server commits each request at once.
//!
//! Nothing is dropped silently, and nothing is recorded for a request that was told otherwise:
//! - The queue holds at most [`Limits::queue_buys`] buys (not jobs: one job may carry a thousand),
//!   so a stalled store holds a bounded amount of memory. A request waits for room up to its
//!   enqueue timeout, then gets an error (503).
//! - A job whose requester has given up (its deadline passed, or the client went away, which drops
//!   the reply's receiver) is discarded when the writer takes it, never committed. Only a job
//!   already inside the transaction when its requester gives up can still be recorded; its
//!   requester was told 503 "outcome unknown" and should retry with an `Idempotency-Key`.
//! - A failed commit answers every request in the batch with the error; none is acknowledged.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::clock::Clock;
use crate::store::{Facts, IDEMPOTENCY_TTL_US, Outcome, Store, StoreError, Submission};

/// Upper bound on the buys in one transaction, so a commit's latency stays bounded.
pub const MAX_BATCH_BUYS: usize = 8_192;
/// How often expired Idempotency-Keys are deleted (the views prune their own buckets).
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Expired keys deleted per prune: one short statement between two commits. While a prune finds
/// a full slice, the next runs after the next commit rather than a minute later.
const PRUNE_KEYS: usize = 10_000;

/// How much the writer holds and how long a request waits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Buys the queue holds before senders wait (each holds about 200 bytes: 64k buys are ~13 MB).
    pub queue_buys: usize,
    /// How long a request waits for room in the queue before it is refused.
    pub enqueue_timeout: Duration,
    /// The longest a write waits in all (room in the queue, then its commit): an answer, if only
    /// a 503, comes within 5 seconds whatever the store does.
    pub submit_deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            queue_buys: 65_536,
            enqueue_timeout: Duration::from_secs(4),
            submit_deadline: Duration::from_millis(4_500),
        }
    }
}

/// Why a write was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The queue stayed full for the enqueue timeout.
    #[error("the write queue is full")]
    QueueFull,
    /// The writer has stopped (shutting down, or its thread died).
    #[error("the writer has stopped")]
    Closed,
    /// The commit of the writer's batch number `batch` (as its log lines name it) failed;
    /// nothing of this request was recorded.
    #[error("the commit of batch {batch} failed")]
    Store {
        /// The batch, as the writer's log lines name it.
        batch: u64,
        /// Why it failed.
        #[source]
        source: StoreError,
    },
    /// No answer within the deadline: the outcome is unknown, so it is not acknowledged.
    #[error("the store did not confirm the commit in time")]
    Timeout,
}

/// One queued write and how to answer it.
struct Job {
    write: Submission,
    reply: oneshot::Sender<Result<Outcome, (u64, StoreError)>>,
    /// When the requester stops waiting: a job taken after this is discarded.
    deadline: Instant,
    /// The queue room this job's buys take, given back when the job is answered or discarded.
    room: OwnedSemaphorePermit,
}

enum Message {
    Write(Job),
    /// Commit what is queued, then stop.
    Shutdown,
}

/// A cheap, cloneable handle for submitting writes.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::UnboundedSender<Message>,
    /// Room in the queue, in buys.
    room: Arc<Semaphore>,
    depth: Arc<AtomicUsize>,
    limits: Limits,
}

impl WriterHandle {
    /// Queue `write`, wait for its commit, and return its outcome.
    pub async fn submit(&self, write: Submission) -> Result<Outcome, SubmitError> {
        let now = tokio::time::Instant::now();
        // One deadline for both waits: a request never waits longer than submit_deadline in all.
        let deadline = now + self.limits.submit_deadline;
        // A write holds at most 1,000 buys (the batch limit), far below the queue's room.
        let buys = u32::try_from(write.facts.len().max(1)).unwrap_or(u32::MAX);
        let room = self.room.clone().acquire_many_owned(buys);
        let room = tokio::time::timeout_at(deadline.min(now + self.limits.enqueue_timeout), room)
            .await
            .map_err(|_| SubmitError::QueueFull)?
            .map_err(|_| SubmitError::Closed)?;
        let (reply, answer) = oneshot::channel();
        let job = Job { write, reply, deadline: deadline.into_std(), room };
        self.depth.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(Message::Write(job)).is_err() {
            self.depth.fetch_sub(1, Ordering::Relaxed);
            return Err(SubmitError::Closed);
        }
        // Dropping `answer` (on timeout, or when the client goes away and this future with it)
        // tells the writer not to commit the job if it has not taken it yet.
        match tokio::time::timeout_at(deadline, answer).await {
            Err(_) => Err(SubmitError::Timeout),
            Ok(Err(_)) => Err(SubmitError::Closed),
            Ok(Ok(result)) => result.map_err(|(batch, source)| SubmitError::Store { batch, source }),
        }
    }

    /// Writes waiting in the queue (for metrics).
    pub fn queue_depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Whether the writer thread still takes writes: false once it has stopped, after a graceful
    /// shutdown or because it died (a panic in the store), so that `/health` reports it.
    pub fn is_running(&self) -> bool {
        !self.tx.is_closed()
    }
}

/// The running writer: its handle and its thread.
pub struct Writer {
    handle: WriterHandle,
    thread: JoinHandle<()>,
}

impl Writer {
    /// Start the writer thread over `store`.
    pub fn start(store: Arc<dyn Store>, clock: Arc<dyn Clock>, limits: Limits) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::unbounded_channel();
        let depth = Arc::new(AtomicUsize::new(0));
        let thread_depth = depth.clone();
        let thread = std::thread::Builder::new()
            .name("buy-writer".into())
            .spawn(move || run(rx, store.as_ref(), clock.as_ref(), &thread_depth))?;
        let room = Arc::new(Semaphore::new(limits.queue_buys));
        Ok(Writer { handle: WriterHandle { tx, room, depth, limits }, thread })
    }

    /// A handle for submitting writes.
    pub fn handle(&self) -> WriterHandle {
        self.handle.clone()
    }

    /// Commit everything already queued, then stop the thread. Writes submitted afterwards get
    /// [`SubmitError::Closed`].
    pub async fn shutdown(self) {
        // Shutdown is queued behind every write already accepted, so those are committed first.
        if self.handle.tx.send(Message::Shutdown).is_ok() {
            let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
        }
    }
}

/// Logs the writer thread's end when it is not a shutdown (a panic): writes then answer 503
/// and `/health` reports the writer stopped.
struct DeathNotice;

impl Drop for DeathNotice {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("the writer thread died; writes are refused until the service is restarted");
        }
    }
}

fn run(mut rx: mpsc::UnboundedReceiver<Message>, store: &dyn Store, clock: &dyn Clock, depth: &AtomicUsize) {
    let _notice = DeathNotice;
    let mut last_prune = Instant::now();
    let mut batch = 0;
    let mut backlog = false;
    // After `close`, `blocking_recv` still yields what was queued, then `None`: the loop drains.
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = Vec::new();
        let mut buys = 0;
        let mut taken = 0;
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Write(job) => {
                    taken += 1;
                    // Its requester was already answered 503 (or is gone): recording it now
                    // would count a write the client was told was not acknowledged.
                    if job.reply.is_closed() || Instant::now() >= job.deadline {
                        crate::metrics::write_abandoned();
                    } else {
                        buys += job.write.facts.len();
                        jobs.push(job);
                    }
                }
                Message::Shutdown => rx.close(),
            }
            if buys < MAX_BATCH_BUYS {
                next = rx.try_recv().ok();
            }
        }
        let waiting = depth.fetch_sub(taken, Ordering::Relaxed) - taken;
        crate::metrics::queue_depth(waiting);
        if !jobs.is_empty() {
            batch += 1;
            commit_batch(store, clock, jobs, buys, batch);
        }
        if backlog || last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = Instant::now();
            backlog = prune(store, clock.now_us());
        }
    }
}

/// Commit `jobs` in one transaction and answer each of them. `batch` numbers the commit in the
/// logs, and in the errors its requests get, so that a 503 leads to the commit that caused it.
fn commit_batch(store: &dyn Store, clock: &dyn Clock, jobs: Vec<Job>, buys: usize, batch: u64) {
    let (writes, replies): (Vec<Submission>, Vec<_>) =
        jobs.into_iter().map(|job| (job.write, (job.reply, job.room))).unzip();
    let views: usize = writes.iter().map(|w| if let Facts::Views(v) = &w.facts { v.len() } else { 0 }).sum();
    let started = Instant::now();
    let result = store.commit(&writes, clock.now_us());
    crate::metrics::commit(started.elapsed(), (buys - views, views), result.is_ok());
    match result {
        Ok(outcomes) => {
            for ((reply, _room), outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(e) => {
            let error = crate::telemetry::error_chain(&e);
            tracing::error!(batch, %error, writes = writes.len(), buys, "commit failed; nothing in this batch was recorded");
            for (reply, _room) in replies {
                let _ = reply.send(Err((batch, e.clone())));
            }
        }
    }
}

/// Forget a slice of expired Idempotency-Keys; returns whether keys are left over (a backlog).
fn prune(store: &dyn Store, now_us: i64) -> bool {
    let keys = store.prune_idempotency(now_us - IDEMPOTENCY_TTL_US, PRUNE_KEYS).unwrap_or_else(|e| {
        tracing::warn!(error = %crate::telemetry::error_chain(&e), "pruning expired idempotency keys failed");
        0
    });
    keys == PRUNE_KEYS
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::clock::SystemClock;
    use crate::domain::BuyRecord;
    use crate::store::log::Log;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{
        Bucket, Counts, Customer, CustomerOrder, ExportFilter, ExportRow, PromotionOrder, PromotionStats,
        PromotionSummary,
    };

    /// An in-memory SQLite store whose every commit first waits for a message on `gate` (or for
    /// the gate to close): a store that stops answering, then answers. With `panics`, a commit
    /// panics instead.
    struct GatedStore {
        inner: SqliteStore,
        gate: Mutex<std::sync::mpsc::Receiver<()>>,
        panics: bool,
    }

    fn gated(panics: bool) -> (std::sync::mpsc::Sender<()>, Arc<GatedStore>) {
        let (open, gate) = std::sync::mpsc::channel();
        (open, Arc::new(GatedStore { inner: SqliteStore::open_memory().unwrap(), gate: Mutex::new(gate), panics }))
    }

    fn unused<T>() -> Result<T, StoreError> {
        Err(StoreError::unavailable("the writer only commits"))
    }

    impl Store for GatedStore {
        fn commit(&self, writes: &[Submission], now_us: i64) -> Result<Vec<Outcome>, StoreError> {
            assert!(!self.panics, "a store that panics");
            // A closed gate (the test ended) blocks nothing.
            let _ = self.gate.lock().unwrap().recv();
            self.inner.commit(writes, now_us)
        }
        fn counts(&self, _: i64, _: Option<i64>) -> Result<Counts, StoreError> {
            unused()
        }
        fn position(&self) -> Result<crate::store::log::Position, StoreError> {
            unused()
        }
        fn promotions(
            &self,
            _: i64,
            _: PromotionOrder,
            _: i64,
            _: i64,
        ) -> Result<(Vec<PromotionSummary>, i64), StoreError> {
            unused()
        }
        fn customers(&self, _: i64, _: CustomerOrder, _: i64, _: i64) -> Result<(Vec<Customer>, i64), StoreError> {
            unused()
        }
        fn timing(
            &self,
            _: i64,
            _: Option<i64>,
            _: &dyn crate::store::TimingGrid,
        ) -> Result<Vec<(i64, i64)>, StoreError> {
            unused()
        }
        fn promotion_stats(&self, _: i64, _: (i64, i64)) -> Result<PromotionStats, StoreError> {
            unused()
        }
        fn recent_views(&self, _: i64, _: Option<i64>) -> Result<i64, StoreError> {
            unused()
        }
        fn timeseries(&self, _: i64, _: i64, _: i64, _: Option<i64>) -> Result<Vec<Bucket>, StoreError> {
            unused()
        }
        fn export_page(&self, _: &ExportFilter, _: i64, _: i64, _: usize) -> Result<Vec<ExportRow>, StoreError> {
            unused()
        }
        fn prune_idempotency(&self, _: i64, _: usize) -> Result<usize, StoreError> {
            Ok(0)
        }
        fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    fn buys(n: usize) -> Submission {
        Submission {
            facts: Facts::Buys((0..n).map(|i| BuyRecord::example(i as i64, 1_750_000_000_000_000)).collect()),
            idempotency: None,
        }
    }

    fn start(store: Arc<GatedStore>, limits: Limits) -> (Writer, WriterHandle) {
        let writer = Writer::start(store, Arc::new(SystemClock), limits).unwrap();
        let handle = writer.handle();
        (writer, handle)
    }

    fn submit(handle: &WriterHandle, n: usize) -> tokio::task::JoinHandle<Result<Outcome, SubmitError>> {
        let handle = handle.clone();
        tokio::spawn(async move { handle.submit(buys(n)).await })
    }

    /// Waits until `n` writes are queued behind the one being committed.
    async fn queued(handle: &WriterHandle, n: usize) {
        let until = Instant::now() + Duration::from_secs(10);
        while handle.queue_depth() < n {
            assert!(Instant::now() < until, "the queue did not fill: {}", handle.queue_depth());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A write that waits 3 s for room in a full queue gets only what is left of its 4.5 s for
    /// the commit: it is answered (503, not acknowledged) 4.5 s after it was submitted, not 3 + 4 s.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_waits_at_most_the_submit_deadline_in_all() {
        let (open, store) = gated(false);
        let limits = Limits { queue_buys: 8, ..Limits::default() };
        let (_writer, handle) = start(store, limits);
        // The writer takes the first write and waits at the gate; then the queue fills up.
        let first = submit(&handle, 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Exactly as many as the queue holds beside the first: a waiter beyond them would take
        // room before `late`.
        let _queued: Vec<_> = (0..7).map(|_| submit(&handle, 1)).collect();
        queued(&handle, 7).await;
        let submitted = Instant::now();
        let late = submit(&handle, 1);
        tokio::time::sleep(Duration::from_secs(3)).await;
        // The first commit goes through; the writer takes the next batch, which frees room for
        // `late`, and waits at the gate again for good.
        open.send(()).unwrap();
        let answer = late.await.unwrap();
        let waited = submitted.elapsed();
        assert!(matches!(answer, Err(SubmitError::Timeout)), "{answer:?}");
        assert!(waited >= Duration::from_millis(4_400), "answered after {waited:?}");
        assert!(waited < Duration::from_millis(5_000), "answered after {waited:?}");
        assert!(matches!(first.await.unwrap(), Ok(Outcome::Recorded { last_seq: 1, recorded: 1 })));
        drop(open);
    }

    /// Writes whose requester gave up while the store stalled (one timed out, one whose client
    /// went away) are not recorded when it recovers: only the write already in the transaction
    /// is. (Committing every queued job records all three, although each requester was told "not
    /// acknowledged".)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_whose_requester_gave_up_are_not_recorded() {
        let (open, store) = gated(false);
        let limits = Limits { submit_deadline: Duration::from_millis(400), ..Limits::default() };
        let (_writer, handle) = start(store, limits);
        let in_transaction = submit(&handle, 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let timed_out = submit(&handle, 2);
        let client_left = submit(&handle, 3);
        queued(&handle, 2).await;
        client_left.abort();
        assert!(matches!(timed_out.await.unwrap(), Err(SubmitError::Timeout)));
        assert!(matches!(in_transaction.await.unwrap(), Err(SubmitError::Timeout)));
        // The store recovers: the write in the transaction commits; the next write is numbered
        // right after it.
        drop(open);
        let next = submit(&handle, 1).await.unwrap();
        assert!(matches!(next, Ok(Outcome::Recorded { last_seq: 2, recorded: 1 })), "{next:?}");
    }

    /// The queue is bounded in buys: two batches of a thousand fill 2,000 places, and a single
    /// buy then waits for room and is refused, however few jobs are queued.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_queue_holds_a_bounded_number_of_buys() {
        let (open, store) = gated(false);
        let limits = Limits {
            queue_buys: 2_000,
            enqueue_timeout: Duration::from_millis(300),
            submit_deadline: Duration::from_secs(10),
        };
        let (_writer, handle) = start(store, limits);
        let first = submit(&handle, 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let big = [submit(&handle, 1_000), submit(&handle, 999)];
        queued(&handle, 2).await;
        let refused = submit(&handle, 1).await.unwrap();
        assert!(matches!(refused, Err(SubmitError::QueueFull)), "{refused:?}");
        drop(open);
        assert!(first.await.unwrap().is_ok());
        for batch in big {
            assert!(batch.await.unwrap().is_ok());
        }
        assert!(submit(&handle, 1).await.unwrap().is_ok(), "room is given back after the commits");
    }

    /// A writer thread that dies (a store that panics) is reported, so `/health` can say so.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_writer_is_reported() {
        let (_open, store) = gated(true);
        let (_writer, handle) = start(store, Limits::default());
        assert!(handle.is_running());
        assert!(matches!(submit(&handle, 1).await.unwrap(), Err(SubmitError::Closed)));
        let until = Instant::now() + Duration::from_secs(5);
        while handle.is_running() {
            assert!(Instant::now() < until, "the dead writer still counts as running");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(matches!(submit(&handle, 1).await.unwrap(), Err(SubmitError::Closed)));
    }
}
