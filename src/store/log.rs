//! The log of facts: what the acknowledgement path writes, and what every view is computed from.
//!
//! A store's log commits facts (buys, page views), their sequence numbers and idempotency keys, and nothing
//! else, so a 200 waits only for that. Views read the log in sequence order ([`FactLog::facts_after`])
//! and apply it off the acknowledgement path. Sequence numbers have no gaps and facts become
//! visible in sequence order, so "every fact up to n" is a complete, well-defined prefix.

use crate::domain::Buy;
use crate::page_view::PageView;
use crate::store::{ExportFilter, ExportRow, Outcome, StoreError, Submission};

/// A recorded buy as the views see it: its sequence number and what analytics read of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    /// The buy's sequence number.
    pub seq: i64,
    /// The buy.
    pub buy: Buy,
    /// Request generation time, microseconds since the Unix epoch.
    pub timestamp_us: i64,
}

/// A recorded page view as the views see it: its number among views and what analytics read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewFact {
    /// The view's sequence number (among views).
    pub seq: i64,
    /// The view.
    pub view: PageView,
    /// Request generation time, microseconds since the Unix epoch.
    pub timestamp_us: i64,
}

/// A recorded refund as the views see it: its number among refunds, and its buy's promotion,
/// product and user (copied from the buy when it was recorded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefundFact {
    /// The refund's sequence number (among refunds).
    pub seq: i64,
    /// The buy refunded.
    pub buy_count: i64,
    /// The buy's user.
    pub user_id: i64,
    /// The buy's promotion.
    pub promotion_id: i64,
    /// The buy's product.
    pub product_id: i64,
    /// Units given back.
    pub units: i64,
    /// Their price (saturating).
    pub cents: i64,
    /// Request generation time, microseconds since the Unix epoch.
    pub timestamp_us: i64,
}

/// A place in the log: the last number of each kind of fact (each kind is numbered on its own,
/// so "every fact up to here" is one prefix of each).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    /// The last buy number.
    pub buys: i64,
    /// The last view number.
    pub views: i64,
    /// The last refund number.
    pub refunds: i64,
}

impl Position {
    /// Whether every fact up to `other` is included here.
    pub fn covers(&self, other: Position) -> bool {
        self.buys >= other.buys && self.views >= other.views && self.refunds >= other.refunds
    }
}

/// Buys, units and revenue (saturating) of the facts in a range of time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slice {
    /// Buys.
    pub buys: i64,
    /// Their units.
    pub units: i64,
    /// Quantity × unit price over the priced ones, saturating.
    pub revenue_cents: i64,
}

/// A sum of non-negative numbers read as its high and low 32 bits, saturated to an `i64`.
pub fn join_halves(high: i64, low: i64) -> i64 {
    let sum = (i128::from(high) << 32) + i128::from(low);
    i64::try_from(sum).unwrap_or(i64::MAX)
}

/// What [`FactLog::tail`] counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tail {
    /// The log's last committed number (the tail's end).
    pub last_seq: i64,
    /// Buys in the tail.
    pub buys: i64,
    /// Their units.
    pub units: i64,
    /// Buys in the tail stamped at or after the window's start.
    pub recent_buys: i64,
    /// Their units.
    pub recent_units: i64,
}

/// The facts side of a store.
pub trait FactLog: Send + Sync + 'static {
    /// Which store this is (drawn once when it was created): views built from another store are
    /// not trusted.
    fn store_id(&self) -> Result<String, StoreError>;

    /// The highest sequence number committed (every fact up to it is durable and visible).
    fn last_seq(&self) -> Result<i64, StoreError>;

    /// Up to `limit` facts numbered after `after`, in sequence order.
    fn facts_after(&self, after: i64, limit: usize) -> Result<Vec<Fact>, StoreError>;

    /// The facts numbered in `after + 1 ..= up_to`, over all buys or one promotion, in sequence
    /// order (the tail a read adds to views applied up to `after`).
    fn facts_in(&self, after: i64, up_to: i64, promotion_id: Option<i64>) -> Result<Vec<Fact>, StoreError>;

    /// Buys, units and revenue of the facts numbered up to `up_to` with a timestamp in `from_us..to_us`
    /// (at most a second: the partial second at a window's edge), over all buys or one promotion.
    fn between(&self, from_us: i64, to_us: i64, promotion_id: Option<i64>, up_to: i64) -> Result<Slice, StoreError>;

    /// The facts numbered after `after` and up to the log's last committed one, over all buys or
    /// one promotion: `(last number, buys, units, buys at or after since_us, their units)`. Added
    /// to views applied up to `after`, this counts every committed fact without waiting for the
    /// views. One snapshot: the last number is read with the facts.
    fn tail(&self, after: i64, since_us: i64, promotion_id: Option<i64>) -> Result<Tail, StoreError>;

    /// The highest view number committed.
    fn last_view_seq(&self) -> Result<i64, StoreError>;

    /// The highest refund number committed.
    fn last_refund_seq(&self) -> Result<i64, StoreError>;

    /// The last number committed of each kind of fact. Refunds are read first: a refund's buy
    /// was committed before it, so every refund of the position has its buy in it.
    fn position(&self) -> Result<Position, StoreError> {
        let refunds = self.last_refund_seq()?;
        Ok(Position { refunds, buys: self.last_seq()?, views: self.last_view_seq()? })
    }

    /// The refunds numbered in `after + 1 ..= up_to` (at most `limit`), over all or one
    /// promotion, in sequence order.
    fn refunds_in(
        &self,
        after: i64,
        up_to: i64,
        promotion_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<RefundFact>, StoreError>;

    /// Up to `limit` page views numbered after `after`, in sequence order.
    fn views_after(&self, after: i64, limit: usize) -> Result<Vec<ViewFact>, StoreError>;

    /// The page views numbered in `after + 1 ..= up_to`, over all or one promotion, in order.
    fn views_in(&self, after: i64, up_to: i64, promotion_id: Option<i64>) -> Result<Vec<ViewFact>, StoreError>;

    /// Views numbered up to `up_to` with a timestamp in `from_us..to_us` (at most a second: the
    /// partial second at a window's edge), over all or one promotion.
    fn views_between(&self, from_us: i64, to_us: i64, promotion_id: Option<i64>, up_to: i64)
    -> Result<i64, StoreError>;

    /// As [`FactLog::between`], for every promotion at once: `(promotion, buys, units)` of the
    /// promotions with buys in the range.
    fn between_by_promotion(&self, from_us: i64, to_us: i64, up_to: i64) -> Result<Vec<(i64, i64, i64)>, StoreError>;
}

/// A log of facts as the service writes it: the acknowledgement path, export and housekeeping.
/// Each store (SQLite, PostgreSQL) is one; every analytic is a view of it (`store::views`).
pub trait Log: FactLog {
    /// Record `writes` in one transaction, assigning consecutive sequence numbers in order.
    /// Returns one outcome per write. When this returns `Ok`, everything is durable.
    fn commit(&self, writes: &[Submission], now_us: i64) -> Result<Vec<Outcome>, StoreError>;

    /// Up to `limit` selected buys with `after < buy_count <= up_to`, in sequence order.
    fn export_page(
        &self,
        filter: &ExportFilter,
        after: i64,
        up_to: i64,
        limit: usize,
    ) -> Result<Vec<ExportRow>, StoreError>;

    /// Forget at most `limit` Idempotency-Keys older than `before_us`, oldest first; returns how
    /// many (see [`crate::store::Store::prune_idempotency`]).
    fn prune_idempotency(&self, before_us: i64, limit: usize) -> Result<usize, StoreError>;

    /// Check that the log answers (for `/health`).
    fn ping(&self) -> Result<(), StoreError>;
}
