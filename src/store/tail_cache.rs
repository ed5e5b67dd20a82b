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

/// Facts numbered `after + 1 ..= after + facts.len()`, in order.
#[derive(Debug)]
struct Run<T> {
    after: i64,
    facts: VecDeque<T>,
}

impl<T> Default for Run<T> {
    fn default() -> Self {
        Run { after: 0, facts: VecDeque::new() }
    }
}

impl<T: Numbered> Run<T> {
    fn end(&self) -> i64 {
        self.after + self.facts.len() as i64
    }

    /// What the run holds of `after + 1 ..= up_to` (of `promotion_id`, or all), and the last
    /// number it covers; first forgetting the facts up to `after` (the views applied them).
    /// `None` for a snapshot older than the run.
    fn take(&mut self, after: i64, up_to: i64, promotion_id: Option<i64>) -> Option<(Vec<T>, i64)> {
        if after < self.after {
            return None;
        }
        if after >= self.end() {
            self.facts.clear();
        } else {
            let stale = usize::try_from(after - self.after).unwrap_or(0);
            self.facts.drain(..stale);
        }
        self.after = after;
        let covered = up_to.min(self.end());
        let wanted = usize::try_from(covered - after).unwrap_or(0);
        let facts = self.facts.iter().take(wanted).filter(|fact| of_promotion(*fact, promotion_id)).cloned().collect();
        Some((facts, covered))
    }

    /// Keep the facts of `fetched` (consecutive numbers) that continue the run.
    fn offer(&mut self, fetched: &[T]) {
        let end = self.end();
        let next = fetched.iter().position(|fact| fact.seq() > end).unwrap_or(fetched.len());
        if fetched.get(next).is_some_and(|fact| fact.seq() == end + 1) {
            self.facts.extend(fetched[next..].iter().cloned());
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
/// The log is read without the lock: every read takes it, and a reader holding it through a
/// query was preempted on a busy machine while the others queued (waits of 50 to 200 ms under
/// the mix on 2 cores).
fn tail_of<T: Numbered>(
    run: &Mutex<Run<T>>,
    (after, up_to, promotion_id): (i64, i64, Option<i64>),
    fetch: impl FnOnce(i64, i64) -> Result<Vec<T>, StoreError>,
) -> Result<Option<Vec<T>>, StoreError> {
    let Some((mut facts, covered)) = lock(run).take(after, up_to, promotion_id) else {
        return Ok(None);
    };
    if covered < up_to {
        let fetched = fetch(covered, up_to)?;
        let whole = fetched.len() as i64 == up_to - covered
            && fetched.iter().zip(covered + 1..).all(|(fact, expected)| fact.seq() == expected);
        if !whole {
            return Ok(None);
        }
        lock(run).offer(&fetched);
        facts.extend(fetched.into_iter().filter(|fact| of_promotion(fact, promotion_id)));
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
    fn a_fetch_that_raced_another_keeps_only_what_continues_the_run() {
        let mut run = Run::default();
        run.take(0, 0, None);
        run.offer(&log(0, 4).unwrap());
        // Another read appended 1..=4 meanwhile; this one fetched 2..=6.
        run.offer(&log(1, 6).unwrap());
        assert_eq!(seqs(run.take(0, 6, None).map(|(f, _)| f)), Some(vec![1, 2, 3, 4, 5, 6]));
        // A fetch that does not reach the run's end is dropped.
        run.offer(&log(8, 9).unwrap());
        assert_eq!(run.end(), 6);
    }
}
