//! Running blocking store reads from async handlers, a bounded number at once.
//!
//! Store calls block, so they run on tokio's blocking pool. Without a bound, a store that stalls
//! makes every read time out (503) while its task keeps running, or waits to run, on that pool;
//! when the cause has passed, the backlog of reads nobody waits for still holds the connections,
//! and 503s go on. So a read first takes one of [`ReadSlots`] (as many as the store has read
//! connections) before it is spawned, giving up at its deadline, and a spawned read whose
//! requester has gone by the time it starts does nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, oneshot};

/// Why a read gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// No slot, or no answer, within the deadline.
    #[error("the store did not answer in time")]
    TimedOut,
    /// The read panicked (a bug).
    #[error("the store read panicked: {0}")]
    Panicked(String),
}

/// At most this many reads run at once.
#[derive(Debug, Clone)]
pub struct ReadSlots(Arc<Semaphore>);

impl ReadSlots {
    /// Room for `slots` reads at once.
    pub fn new(slots: usize) -> Self {
        ReadSlots(Arc::new(Semaphore::new(slots.max(1))))
    }

    /// Run `read` on the blocking pool and return its result, or [`ReadError::TimedOut`] once
    /// `timeout` has passed, waiting for a slot included.
    pub async fn run<T: Send + 'static>(
        &self,
        timeout: Duration,
        read: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ReadError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let slot = tokio::time::timeout_at(deadline, self.0.clone().acquire_owned())
            .await
            .map_err(|_| ReadError::TimedOut)?
            .expect("the read semaphore is never closed");
        let (answer, answered) = oneshot::channel();
        let task = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            // The requester timed out (or its client left) while this waited for a thread.
            if answer.is_closed() {
                return;
            }
            let _ = answer.send(read());
        });
        match tokio::time::timeout_at(deadline, answered).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err(ReadError::Panicked(match task.await {
                Err(join) if join.is_panic() => panic_text(join.into_panic()),
                _ => "the read task ended without an answer".into(),
            })),
            Err(_) => Err(ReadError::TimedOut),
        }
    }
}

fn panic_text(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Instant;

    use super::*;

    /// A stalled store: 40 reads time out while 2 slots are stuck. Once the stall ends, the reads
    /// nobody waits for any more do no work, and the next read answers at once. (Spawned without
    /// slots, as before, the 40 ran after the stall, 50 ms each: the next read waited a second.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_whose_requester_gave_up_do_no_work() {
        let slots = ReadSlots::new(2);
        let stalled = Arc::new(AtomicBool::new(true));
        let worked = Arc::new(AtomicUsize::new(0));
        let read = |stalled: Arc<AtomicBool>, worked: Arc<AtomicUsize>| {
            move || {
                while stalled.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                worked.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        let waiting: Vec<_> = (0..40)
            .map(|_| {
                let (slots, read) = (slots.clone(), read(stalled.clone(), worked.clone()));
                tokio::spawn(async move { slots.run(Duration::from_millis(200), read).await })
            })
            .collect();
        for answer in waiting {
            assert!(matches!(answer.await.unwrap(), Err(ReadError::TimedOut)));
        }
        stalled.store(false, Ordering::Relaxed);
        let started = Instant::now();
        let answer = slots.run(Duration::from_secs(5), || 7).await.unwrap();
        assert_eq!(answer, 7);
        assert!(started.elapsed() < Duration::from_millis(500), "the next read waited {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(worked.load(Ordering::Relaxed) <= 2, "{} abandoned reads ran", worked.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn a_panicking_read_is_reported() {
        let slots = ReadSlots::new(1);
        let answer = slots.run(Duration::from_secs(5), || -> i32 { panic!("boom") }).await;
        assert!(matches!(answer, Err(ReadError::Panicked(ref why)) if why == "boom"), "{answer:?}");
        assert_eq!(slots.run(Duration::from_secs(5), || 1).await.unwrap(), 1, "the slot was given back");
    }
}
