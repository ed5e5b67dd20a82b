//! The log's tail kept in memory between reads.
//!
//! Every read adds the facts after the views' snapshot (see [`super::logged`]). The views apply
//! every 100 ms, so under load that tail is hundreds of facts, and each read used to fetch all of
//! them from the log again: under the mix (90% buys, 10% reads) fetching the tail was 16% of the
//! service's CPU. Successive reads share most of it (the snapshot moves only when the stage
//! applies a batch), so this keeps one run of facts per kind, from the newest snapshot a read has
//! used up to the last number a read asked for, and fetches from the log only the facts after it.
//!
//! Exact by construction: sequence numbers have no gaps and a read asks only for numbers already
//! acknowledged, so the run is always a complete range; a fetch that does not return exactly the
//! numbers asked for is not kept. A read of a snapshot older than the run (it began before the
//! stage's last batch) reads the log directly. The run holds at most what reads may take from the
//! tail ([`super::logged`]'s bound, a few thousand facts), since the snapshot it starts at follows
//! the views.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::StoreError;
use super::log::{Fact, FactLog, Position, RefundFact, Slice, Tail, ViewFact};
use crate::lock::lock;

/// A fact of the log as the run needs it: its number and its promotion.
trait Numbered: Clone {
    fn seq(&self) -> i64;
    fn promotion_id(&self) -> i64;
}

impl Numbered for Fact {
    fn seq(&self) -> i64 {
        self.seq
    }
    fn promotion_id(&self) -> i64 {
        self.buy.promotion_id
    }
}

impl Numbered for ViewFact {
    fn seq(&self) -> i64 {
        self.seq
    }
    fn promotion_id(&self) -> i64 {
        self.view.promotion_id
    }
}

impl Numbered for RefundFact {
    fn seq(&self) -> i64 {
        self.seq
    }
    fn promotion_id(&self) -> i64 {
        self.promotion_id
    }
}

/// Facts with consecutive numbers from `after + 1`, in chunks as they were fetched. Chunks are
/// shared: a read copies the pointers under the lock and the facts after releasing it.
#[derive(Debug)]
struct Run<T> {
    after: i64,
    chunks: VecDeque<Arc<[T]>>,
}

impl<T> Default for Run<T> {
    fn default() -> Self {
        Run { after: 0, chunks: VecDeque::new() }
    }
}

impl<T: Numbered> Run<T> {
    fn end(&self) -> i64 {
        self.chunks.back().and_then(|chunk| chunk.last()).map_or(self.after, Numbered::seq)
    }

    /// The chunks holding what the run has of `after + 1 ..= up_to`, and the last number they
    /// cover; first forgetting the chunks up to `after` (the views applied them). `None` for a
    /// snapshot older than the run.
    fn take(&mut self, after: i64, up_to: i64) -> Option<(Vec<Arc<[T]>>, i64)> {
        if after < self.after {
            return None;
        }
        while self.chunks.front().and_then(|chunk| chunk.last()).is_some_and(|last| last.seq() <= after) {
            self.chunks.pop_front();
        }
        self.after = after;
        Some((self.chunks.iter().cloned().collect(), up_to.min(self.end())))
    }

    /// Keep `fetched` (consecutive numbers) if it continues the run.
    fn offer(&mut self, fetched: Arc<[T]>) {
        if fetched.first().is_some_and(|fact| fact.seq() == self.end() + 1) {
            self.chunks.push_back(fetched);
        }
    }
}

fn of_promotion<T: Numbered>(fact: &T, promotion_id: Option<i64>) -> bool {
    promotion_id.is_none_or(|p| fact.promotion_id() == p)
}

/// The facts numbered in `after + 1 ..= up_to` (of `promotion_id`, or all): what `run` holds of
/// them, and the rest from `fetch(from, up_to)` (every fact in `from + 1 ..= up_to`), which the
/// run then keeps. `None` for a snapshot older than the run, or a fetch that was not the whole
/// range: the caller reads the log itself.
///
/// Every read takes the lock, so it is held only to copy pointers. Held through a query, and
/// then through copying the facts, it stalled every other read 50 to 150 ms under the mix: the
/// holder lost its core for that long (measured: copying 55 facts under the lock took 132 ms).
/// Why the scheduler left it off so long was not pinned down (2 busy cores, ~80 threads, a
/// virtual machine with a few per cent of steal time); the cure does not depend on it.
fn tail_of<T: Numbered>(
    run: &Mutex<Run<T>>,
    (after, up_to, promotion_id): (i64, i64, Option<i64>),
    fetch: impl FnOnce(i64, i64) -> Result<Vec<T>, StoreError>,
) -> Result<Option<Vec<T>>, StoreError> {
    let Some((chunks, covered)) = lock(run).take(after, up_to) else {
        return Ok(None);
    };
    let wanted = |fact: &&T| (after + 1..=up_to).contains(&fact.seq()) && of_promotion(*fact, promotion_id);
    let mut facts: Vec<T> = chunks.iter().flat_map(|chunk| chunk.iter()).filter(wanted).cloned().collect();
    if covered < up_to {
        let fetched = fetch(covered, up_to)?;
        let whole = fetched.len() as i64 == up_to - covered
            && fetched.iter().zip(covered + 1..).all(|(fact, expected)| fact.seq() == expected);
        if !whole {
            return Ok(None);
        }
        let fetched: Arc<[T]> = fetched.into();
        facts.extend(fetched.iter().filter(wanted).cloned());
        lock(run).offer(fetched);
    }
    Ok(Some(facts))
}

/// A log whose tail reads (`facts_in`, `views_in`, `refunds_in`, `tail`) are served from memory
/// where they can be; everything else goes to the log.
pub struct TailCache {
    log: Arc<dyn FactLog>,
    buys: Mutex<Run<Fact>>,
    views: Mutex<Run<ViewFact>>,
    refunds: Mutex<Run<RefundFact>>,
}

impl TailCache {
    /// Keep the tail of `log`.
    pub fn new(log: Arc<dyn FactLog>) -> TailCache {
        TailCache {
            log,
            buys: Mutex::new(Run::default()),
            views: Mutex::new(Run::default()),
            refunds: Mutex::new(Run::default()),
        }
    }
}

impl FactLog for TailCache {
    fn store_id(&self) -> Result<String, StoreError> {
        self.log.store_id()
    }

    fn last_seq(&self) -> Result<i64, StoreError> {
        self.log.last_seq()
    }

    fn facts_after(&self, after: i64, limit: usize) -> Result<Vec<Fact>, StoreError> {
        self.log.facts_after(after, limit)
    }

    fn facts_in(&self, after: i64, up_to: i64, promotion_id: Option<i64>) -> Result<Vec<Fact>, StoreError> {
        let cached = tail_of(&self.buys, (after, up_to, promotion_id), |from, to| self.log.facts_in(from, to, None))?;
        match cached {
            Some(facts) => Ok(facts),
            None => self.log.facts_in(after, up_to, promotion_id),
        }
    }

    fn between(&self, from_us: i64, to_us: i64, promotion_id: Option<i64>, up_to: i64) -> Result<Slice, StoreError> {
        self.log.between(from_us, to_us, promotion_id, up_to)
    }

    /// The last number committed, then the facts up to it from the run: every fact up to a
    /// committed number is visible, so this is the same prefix the log's own query counts.
    fn tail(&self, after: i64, since_us: i64, promotion_id: Option<i64>) -> Result<Tail, StoreError> {
        let last_seq = self.log.last_seq()?;
        let mut tail = Tail { last_seq, ..Tail::default() };
        for fact in self.facts_in(after, last_seq, promotion_id)? {
            let units = fact.buy.quantity.get();
            tail.buys += 1;
            tail.units += units;
            if fact.timestamp_us >= since_us {
                tail.recent_buys += 1;
                tail.recent_units += units;
            }
        }
        Ok(tail)
    }

    fn last_view_seq(&self) -> Result<i64, StoreError> {
        self.log.last_view_seq()
    }

    fn last_refund_seq(&self) -> Result<i64, StoreError> {
        self.log.last_refund_seq()
    }

    fn position(&self) -> Result<Position, StoreError> {
        self.log.position()
    }

    fn refunds_in(
        &self,
        after: i64,
        up_to: i64,
        promotion_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<RefundFact>, StoreError> {
        if usize::try_from(up_to - after).is_ok_and(|n| n <= limit) {
            let fetch = |from, to| self.log.refunds_in(from, to, None, usize::MAX);
            if let Some(refunds) = tail_of(&self.refunds, (after, up_to, promotion_id), fetch)? {
                return Ok(refunds);
            }
        }
        self.log.refunds_in(after, up_to, promotion_id, limit)
    }

    fn views_after(&self, after: i64, limit: usize) -> Result<Vec<ViewFact>, StoreError> {
        self.log.views_after(after, limit)
    }

    fn views_in(&self, after: i64, up_to: i64, promotion_id: Option<i64>) -> Result<Vec<ViewFact>, StoreError> {
        let cached = tail_of(&self.views, (after, up_to, promotion_id), |from, to| self.log.views_in(from, to, None))?;
        match cached {
            Some(views) => Ok(views),
            None => self.log.views_in(after, up_to, promotion_id),
        }
    }

    fn views_between(
        &self,
        from_us: i64,
        to_us: i64,
        promotion_id: Option<i64>,
        up_to: i64,
    ) -> Result<i64, StoreError> {
        self.log.views_between(from_us, to_us, promotion_id, up_to)
    }

    fn between_by_promotion(&self, from_us: i64, to_us: i64, up_to: i64) -> Result<Vec<(i64, i64, i64)>, StoreError> {
        self.log.between_by_promotion(from_us, to_us, up_to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Numbered2(i64, i64);

    impl Numbered for Numbered2 {
        fn seq(&self) -> i64 {
            self.0
        }
        fn promotion_id(&self) -> i64 {
            self.1
        }
    }

    /// A log of facts 1..=n, fact i in promotion i % 3.
    fn log(from: i64, to: i64) -> Result<Vec<Numbered2>, StoreError> {
        Ok((from + 1..=to).map(|i| Numbered2(i, i % 3)).collect())
    }

    fn seqs(facts: Option<Vec<Numbered2>>) -> Option<Vec<i64>> {
        facts.map(|f| f.into_iter().map(|n| n.0).collect())
    }

    #[test]
    fn a_run_answers_every_range_as_the_log_would() {
        let run = Mutex::new(Run::default());
        let fetched = std::cell::RefCell::new(Vec::new());
        let fetch = |from, to| {
            fetched.borrow_mut().push((from, to));
            log(from, to)
        };
        let read = |after, up_to, promotion| seqs(tail_of(&run, (after, up_to, promotion), fetch).unwrap());
        assert_eq!(read(0, 5, None), Some(vec![1, 2, 3, 4, 5]));
        assert_eq!(read(0, 3, None), Some(vec![1, 2, 3]));
        assert_eq!(read(2, 8, Some(1)), Some(vec![4, 7]));
        // Older than the run: the caller reads the log.
        assert_eq!(read(1, 8, None), None);
        // The views passed everything kept.
        assert_eq!(read(20, 22, None), Some(vec![21, 22]));
        assert_eq!(read(22, 22, None), Some(vec![]));
        // Only what the run lacked was fetched.
        assert_eq!(*fetched.borrow(), vec![(0, 5), (5, 8), (20, 22)]);
    }

    #[test]
    fn a_fetch_with_a_gap_is_not_kept() {
        let run = Mutex::new(Run::default());
        let gap = |from, to| Ok(log(from, to)?.into_iter().filter(|n: &Numbered2| n.0 != 3).collect());
        assert_eq!(tail_of(&run, (0, 5, None), gap).unwrap(), None);
        assert_eq!(seqs(tail_of(&run, (0, 5, None), log).unwrap()), Some(vec![1, 2, 3, 4, 5]));
    }

    #[test]
    fn a_fetch_that_raced_another_is_kept_only_if_it_continues_the_run() {
        let mut run = Run::default();
        run.offer(log(0, 4).unwrap().into());
        // Another read appended 1..=4 meanwhile; this one fetched 2..=6.
        run.offer(log(1, 6).unwrap().into());
        assert_eq!(run.end(), 4);
        run.offer(log(4, 6).unwrap().into());
        assert_eq!(run.end(), 6);
        // Forgetting what the views applied drops whole chunks only.
        let (chunks, covered) = run.take(2, 6).unwrap();
        assert_eq!((chunks.len(), covered), (2, 6));
        assert_eq!(run.take(4, 6).unwrap().0.len(), 1);
    }
}
