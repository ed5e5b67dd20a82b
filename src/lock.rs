//! Locking a mutex whose poison flag carries no information.

use std::sync::{Mutex, MutexGuard};

/// Lock `m`, ignoring poisoning. For the mutexes of this crate a panic cannot leave the guarded
/// value half-updated: a store's connection is either in its pool or not (and SQLite rolls back a
/// transaction dropped open), a set of keys or rate buckets only gains or loses whole entries, a
/// flag is set in one write. So a poisoned lock is used as is rather than failing every later
/// request.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
