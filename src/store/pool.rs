//! The read connections of a store: at most a fixed number open, idle ones reused.
//!
//! Reads run on tokio's blocking pool, which grows to hundreds of threads under a flood of slow
//! reads. Without a bound each of them would open (and keep) a connection of its own: on
//! PostgreSQL that exhausts the server's connections, on SQLite each one grows its own page cache.
//! A read that finds every connection busy waits for one, then gives up with a 503.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{StoreError, StoreErrorKind};
use crate::lock::lock;

/// How long a read waits for a connection when all are busy.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// At most `max` connections of type `C`, idle or in use.
pub struct Pool<C> {
    state: Mutex<State<C>>,
    /// Signalled when a connection is returned or closed.
    freed: Condvar,
    max: usize,
    /// Names the store in the error of a read that found every connection busy.
    what: &'static str,
}

struct State<C> {
    idle: Vec<C>,
    open: usize,
}

impl<C> Pool<C> {
    pub fn new(max: usize, what: &'static str) -> Pool<C> {
        Pool { state: Mutex::new(State { idle: Vec::new(), open: 0 }), freed: Condvar::new(), max, what }
    }

    /// An idle connection (`true`: it was pooled, and may have gone stale), or a new one from
    /// `open` while fewer than the maximum are open; otherwise wait up to [`ACQUIRE_TIMEOUT`].
    pub fn acquire(&self, open: impl FnOnce() -> Result<C, StoreError>) -> Result<(C, bool), StoreError> {
        let deadline = Instant::now() + ACQUIRE_TIMEOUT;
        let mut state = lock(&self.state);
        loop {
            if let Some(conn) = state.idle.pop() {
                return Ok((conn, true));
            }
            if state.open < self.max {
                state.open += 1;
                drop(state);
                return match open() {
                    Ok(conn) => Ok((conn, false)),
                    Err(e) => {
                        self.closed(1);
                        Err(e)
                    }
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let why = format!("all {} {} read connections are busy", self.max, self.what);
                return Err(StoreError::new(StoreErrorKind::Busy, why));
            }
            state = self.freed.wait_timeout(state, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Return a connection for the next read.
    pub fn give_back(&self, conn: C) {
        lock(&self.state).idle.push(conn);
        self.freed.notify_one();
    }

    /// Account for `n` connections closed (dropped by the caller).
    pub fn closed(&self, n: usize) {
        lock(&self.state).open -= n;
        self.freed.notify_all();
    }

    /// Every idle connection, counted as closed: the caller drops them (after one was found
    /// broken, the others are as stale; or when the store closes).
    pub fn take_idle(&self) -> Vec<C> {
        let idle = std::mem::take(&mut lock(&self.state).idle);
        self.closed(idle.len());
        idle
    }

    /// Connections open, idle or in use.
    #[cfg(test)]
    pub fn open(&self) -> usize {
        lock(&self.state).open
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Many reads at once open no more than the maximum; the others wait for a returned
    /// connection, and a read that waits too long gets a clear error.
    #[test]
    fn opens_at_most_the_maximum_and_reuses_returned_connections() {
        let pool: Pool<usize> = Pool::new(3, "test");
        let opened = AtomicUsize::new(0);
        let start = Barrier::new(12);
        std::thread::scope(|scope| {
            for _ in 0..12 {
                scope.spawn(|| {
                    start.wait();
                    let (conn, _) = pool.acquire(|| Ok(opened.fetch_add(1, Ordering::SeqCst))).unwrap();
                    std::thread::sleep(Duration::from_millis(20));
                    pool.give_back(conn);
                });
            }
        });
        assert_eq!(opened.load(Ordering::SeqCst), 3);
        assert_eq!(pool.open(), 3);

        let held: Vec<_> = (0..3).map(|_| pool.acquire(|| unreachable!("all three are idle")).unwrap()).collect();
        assert!(held.iter().all(|(_, pooled)| *pooled));
        let began = Instant::now();
        let Err(error) = pool.acquire(|| Ok(99)) else { panic!("a fourth connection") };
        assert_eq!(error.kind(), StoreErrorKind::Busy);
        let message = std::error::Error::source(&error).map(ToString::to_string).unwrap_or_default();
        assert!(began.elapsed() >= ACQUIRE_TIMEOUT, "{:?}", began.elapsed());
        assert_eq!(message, "all 3 test read connections are busy");
    }

    /// A connection that fails to open, or is closed, frees its place.
    #[test]
    fn failed_and_closed_connections_free_their_place() {
        let pool: Pool<String> = Pool::new(1, "test");
        assert!(pool.acquire(|| Err(StoreError::unavailable("refused"))).is_err());
        let (conn, pooled) = pool.acquire(|| Ok("first".into())).unwrap();
        assert!(!pooled);
        drop(conn);
        pool.closed(1);
        let (conn, _) = pool.acquire(|| Ok("second".into())).unwrap();
        pool.give_back(conn);
        assert_eq!(pool.take_idle(), vec!["second".to_string()]);
        assert_eq!(pool.open(), 0);
        assert_eq!(pool.acquire(|| Ok("third".into())).unwrap(), ("third".into(), false));
    }
}
