//! The group-commit writer: the one place that writes to the store.
//!
//! Requests hand their [`Write`]s to a bounded queue and wait. A dedicated thread takes whatever
//! is queued (up to [`MAX_BATCH_BUYS`] buys), commits it in one transaction, and only then answers
//! each request. One fsync thus covers many requests: under load batches grow by themselves,
//! and an idle server commits each request at once.
//!
//! Nothing is dropped silently: a full queue makes a request wait up to [`ENQUEUE_TIMEOUT`],
//! then it gets an error (503); a failed commit answers every request in the batch with an
//! error, and none of them is acknowledged.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::clock::Clock;
use crate::store::{IDEMPOTENCY_TTL_US, ROLLUP_KEEP_S, Store, StoreError, Write, WriteOutcome};

/// Jobs the queue holds before senders wait.
pub const QUEUE_CAPACITY: usize = 16_384;
/// Upper bound on the buys in one transaction, so a commit's latency stays bounded.
pub const MAX_BATCH_BUYS: usize = 8_192;
/// How long a request waits for room in the queue before it is refused.
pub const ENQUEUE_TIMEOUT: Duration = Duration::from_secs(4);
/// How long a request waits for its commit before it is answered 503 (outcome unknown).
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(4);
/// The longest a write waits in all (room in the queue, then its commit): an answer, if only a
/// 503, comes within 5 seconds whatever the store does (SPEC §6).
pub const SUBMIT_DEADLINE: Duration = Duration::from_millis(4_500);
/// How often expired Idempotency-Keys are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Why a write was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The queue stayed full for [`ENQUEUE_TIMEOUT`].
    #[error("the write queue is full; retry shortly")]
    QueueFull,
    /// The writer has stopped (shutting down).
    #[error("the service is shutting down")]
    Closed,
    /// The commit failed; nothing of this request was recorded.
    #[error("the store failed to commit: {0}")]
    Store(#[from] StoreError),
    /// No answer within [`COMMIT_TIMEOUT`]: the outcome is unknown, so it is not acknowledged.
    #[error("the store did not confirm the commit in time")]
    Timeout,
}

enum Job {
    Write {
        write: Write,
        reply: oneshot::Sender<Result<WriteOutcome, String>>,
    },
    /// Commit what is queued, then stop.
    Shutdown,
}

/// A cheap, cloneable handle for submitting writes.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Job>,
    depth: Arc<AtomicUsize>,
}

impl WriterHandle {
    /// Queue `write`, wait for its commit, and return its outcome.
    pub async fn submit(&self, write: Write) -> Result<WriteOutcome, SubmitError> {
        let (reply, answer) = oneshot::channel();
        // One deadline for both waits: a request never waits longer than SUBMIT_DEADLINE in all.
        let deadline = tokio::time::Instant::now() + SUBMIT_DEADLINE;
        let permit =
            tokio::time::timeout_at(deadline.min(tokio::time::Instant::now() + ENQUEUE_TIMEOUT), self.tx.reserve())
                .await
                .map_err(|_| SubmitError::QueueFull)?
                .map_err(|_| SubmitError::Closed)?;
        self.depth.fetch_add(1, Ordering::Relaxed);
        permit.send(Job::Write { write, reply });
        let commit_deadline = deadline.min(tokio::time::Instant::now() + COMMIT_TIMEOUT);
        match tokio::time::timeout_at(commit_deadline, answer).await {
            Err(_) => Err(SubmitError::Timeout),
            Ok(Err(_)) => Err(SubmitError::Closed),
            Ok(Ok(result)) => result.map_err(|e| SubmitError::Store(StoreError::Unavailable(e))),
        }
    }

    /// Writes waiting in the queue (for metrics).
    pub fn queue_depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }
}

/// The running writer: its handle and its thread.
pub struct Writer {
    handle: WriterHandle,
    thread: JoinHandle<()>,
}

impl Writer {
    /// Start the writer thread over `store`.
    pub fn start(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Writer {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let depth = Arc::new(AtomicUsize::new(0));
        let thread_depth = depth.clone();
        let thread = std::thread::Builder::new()
            .name("buy-writer".into())
            .spawn(move || run(rx, store, clock, thread_depth))
            .expect("spawning the writer thread");
        Writer { handle: WriterHandle { tx, depth }, thread }
    }

    /// A handle for submitting writes.
    pub fn handle(&self) -> WriterHandle {
        self.handle.clone()
    }

    /// Commit everything already queued, then stop the thread. Writes submitted afterwards get
    /// [`SubmitError::Closed`].
    pub async fn shutdown(self) {
        // Shutdown is queued behind every write already accepted, so those are committed first.
        if self.handle.tx.send(Job::Shutdown).await.is_ok() {
            let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
        }
    }
}

fn run(mut rx: mpsc::Receiver<Job>, store: Arc<dyn Store>, clock: Arc<dyn Clock>, depth: Arc<AtomicUsize>) {
    let mut last_prune = Instant::now();
    // After `close`, `blocking_recv` still yields what was queued, then `None`: the loop drains.
    while let Some(first) = rx.blocking_recv() {
        let mut writes = Vec::new();
        let mut replies = Vec::new();
        let mut buys = 0;
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Write { write, reply } => {
                    buys += write.buys.len();
                    writes.push(write);
                    replies.push(reply);
                }
                Job::Shutdown => rx.close(),
            }
            if buys < MAX_BATCH_BUYS {
                next = rx.try_recv().ok();
            }
        }
        if writes.is_empty() {
            continue;
        }
        let waiting = depth.fetch_sub(writes.len(), Ordering::Relaxed) - writes.len();
        crate::metrics::queue_depth(waiting);
        let now_us = clock.now_us();
        let started = Instant::now();
        let result = store.commit(&writes, now_us);
        crate::metrics::commit(started.elapsed(), buys, result.is_ok());
        match result {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, writes = writes.len(), "commit failed; nothing in this batch was recorded");
                for reply in replies {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = Instant::now();
            if let Err(e) = store.prune_idempotency(now_us - IDEMPOTENCY_TTL_US) {
                tracing::warn!(error = %e, "pruning expired idempotency keys failed");
            }
            if let Err(e) = store.prune_rollups(now_us.div_euclid(1_000_000) - ROLLUP_KEEP_S) {
                tracing::warn!(error = %e, "pruning old second and minute rollups failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::clock::SystemClock;
    use crate::domain::{Buy, BuyRecord};
    use crate::request_time::TimestampSource;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{Bucket, Counts, ExportFilter, ExportRow, PromotionStats, PromotionSummary};

    /// An in-memory SQLite store whose every commit first waits for a message on `gate`: a
    /// store that stops answering, then answers once.
    struct GatedStore {
        inner: SqliteStore,
        gate: Mutex<std::sync::mpsc::Receiver<()>>,
    }

    fn unused<T>() -> Result<T, StoreError> {
        Err(StoreError::Unavailable("the writer only commits".into()))
    }

    impl Store for GatedStore {
        fn commit(&self, writes: &[Write], now_us: i64) -> Result<Vec<WriteOutcome>, StoreError> {
            // A closed gate (the test ended) blocks nothing.
            let _ = self.gate.lock().unwrap().recv();
            self.inner.commit(writes, now_us)
        }
        fn counts(&self, _: i64, _: Option<i64>) -> Result<Counts, StoreError> {
            unused()
        }
        fn promotions(&self, _: i64, _: i64, _: i64) -> Result<(Vec<PromotionSummary>, i64), StoreError> {
            unused()
        }
        fn promotion_stats(&self, _: i64, _: i64) -> Result<PromotionStats, StoreError> {
            unused()
        }
        fn timeseries(&self, _: i64, _: i64, _: i64, _: Option<i64>) -> Result<Vec<Bucket>, StoreError> {
            unused()
        }
        fn export_page(&self, _: &ExportFilter, _: i64, _: i64, _: usize) -> Result<Vec<ExportRow>, StoreError> {
            unused()
        }
        fn prune_idempotency(&self, _: i64) -> Result<usize, StoreError> {
            Ok(0)
        }
        fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    fn one_buy() -> Write {
        let json = serde_json::json!({"user_id": 1, "promotion_id": 2, "product_id": 3, "product_quantity": 1});
        let record = BuyRecord {
            buy: Buy::parse(&json, &[]).unwrap(),
            ip_address: "127.0.0.1".into(),
            timestamp_us: 1_750_000_000_000_000,
            received_at_us: 1_750_000_000_000_000,
            timestamp_source: TimestampSource::Server,
            idempotency_key: None,
        };
        Write { buys: vec![record], idempotency: None }
    }

    /// A write that waits 3 s for room in a full queue gets only what is left of its 4.5 s for
    /// the commit: it is answered (503, not acknowledged) 4.5 s after it was submitted, not 3 + 4 s.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_waits_at_most_the_submit_deadline_in_all() {
        let (open, gate) = std::sync::mpsc::channel();
        let store = GatedStore { inner: SqliteStore::open_memory().unwrap(), gate: Mutex::new(gate) };
        let writer = Writer::start(Arc::new(store), Arc::new(SystemClock));
        let handle = writer.handle();
        let submit = |handle: &WriterHandle| {
            let handle = handle.clone();
            tokio::spawn(async move { handle.submit(one_buy()).await })
        };
        // The writer takes the first write and waits at the gate; then the queue fills up.
        let first = submit(&handle);
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Exactly as many as the queue holds: a waiter beyond them would take room before `late`.
        let _queued: Vec<_> = (0..QUEUE_CAPACITY).map(|_| submit(&handle)).collect();
        let until = Instant::now() + Duration::from_secs(10);
        while handle.queue_depth() < QUEUE_CAPACITY {
            assert!(Instant::now() < until, "the queue did not fill: {}", handle.queue_depth());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let submitted = Instant::now();
        let late = submit(&handle);
        tokio::time::sleep(Duration::from_secs(3)).await;
        // The first commit goes through; the writer takes the next batch, which frees room for
        // `late`, and waits at the gate again for good.
        open.send(()).unwrap();
        let answer = late.await.unwrap();
        let waited = submitted.elapsed();
        assert!(matches!(answer, Err(SubmitError::Timeout)), "{answer:?}");
        assert!(waited >= Duration::from_millis(4_400), "answered after {waited:?}");
        assert!(waited < Duration::from_millis(5_000), "answered after {waited:?}");
        assert!(matches!(first.await.unwrap(), Ok(WriteOutcome::Recorded { last_seq: 1, recorded: 1 })));
        drop(open);
    }
}
