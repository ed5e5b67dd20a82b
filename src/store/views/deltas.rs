//! The views' arithmetic, in memory: the aggregate changes of one batch of facts, and how a
//! recent-window count splits into rollup buckets.

use std::collections::{BTreeMap, BTreeSet};

use crate::domain::Buy;
use crate::page_view::PageView;

/// Microseconds per second (timestamps are stored in microseconds).
pub const US: i64 = 1_000_000;
/// Bucket sizes of the rollups, in seconds.
pub const GRANULARITIES: [i64; 3] = [1, 60, 3600];

/// Second, minute and hour boundaries at or after `since_us`: `[since, ∞)` is split into a
/// partial second (counted from the buys' timestamp index) and whole seconds, minutes and hours
/// (summed from the rollups), so a window reads a few hundred rows at most.
pub fn window_edges(since_us: i64) -> (i64, i64, i64) {
    let second = since_us.div_euclid(US) + i64::from(since_us.rem_euclid(US) != 0);
    let ceil_to = |x: i64, g: i64| x + (g - x.rem_euclid(g)) % g;
    let minute = ceil_to(second, 60);
    (second, minute, ceil_to(minute, 3600))
}

/// Buys, units and revenue.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    /// Buys.
    pub buys: i64,
    /// Units.
    pub units: i64,
    /// Quantity × unit price over the priced buys (saturating).
    pub revenue_cents: i64,
}

impl Tally {
    fn add(&mut self, buy: &Buy) {
        self.buys += 1;
        self.units += buy.quantity.get();
        self.revenue_cents = self.revenue_cents.saturating_add(revenue_cents(buy));
    }
}

/// What one promotion gains in one transaction.
#[derive(Debug)]
pub struct PromotionDelta {
    /// Its buys and units.
    pub tally: Tally,
    /// Quantity × unit price over its priced buys (saturating).
    pub revenue_cents: i64,
    /// Buyers new to the promotion (filled in by the store, which knows who bought before).
    pub new_buyers: i64,
    /// Of those, how many had viewed it (filled in by the store).
    pub converted: i64,
    /// Its buys that carry a price.
    pub priced_buys: i64,
    /// Buyers reaching their second buy in it (filled in by the store).
    pub repeat_buyers: i64,
    /// Buyers whose first buy anywhere is in it (filled in by the store).
    pub new_customers: i64,
    /// Earliest and latest timestamp among its buys.
    pub first_us: i64,
    /// See `first_us`.
    pub last_us: i64,
}

/// All aggregate changes of one batch, each row's change summed so it is written once. The maps
/// are ordered, so rows are written in key order (neighbouring pages together).
#[derive(Debug, Default)]
pub struct Deltas {
    /// (granularity, bucket) → tally, for all buys.
    pub rollup: BTreeMap<(i64, i64), Tally>,
    /// (promotion, granularity, bucket) → tally.
    pub promotion_rollup: BTreeMap<(i64, i64, i64), Tally>,
    /// promotion → what it gains.
    pub promotions: BTreeMap<i64, PromotionDelta>,
    /// (promotion, product) → tally.
    pub products: BTreeMap<(i64, i64), Tally>,
    /// (user, promotion) → what the buyer gains there in this batch.
    pub buyers: BTreeMap<(i64, i64), BuyerDelta>,
    /// user → the promotion of their first buy in this batch (facts arrive in sequence order).
    pub first_buys: BTreeMap<i64, i64>,
    /// Units over all buys.
    pub units: i64,
}

/// The start, in seconds, of the bucket of `granularity_s` seconds that `timestamp_us` falls in.
pub fn bucket_start(timestamp_us: i64, granularity_s: i64) -> i64 {
    let second = timestamp_us.div_euclid(US);
    second - second.rem_euclid(granularity_s)
}

/// What `buy` adds to its promotion's revenue: quantity × unit price, saturating, so a hostile
/// price cannot wrap the revenue around (0 without a price).
pub fn revenue_cents(buy: &Buy) -> i64 {
    buy.unit_price_cents.map_or(0, |p| p.saturating_mul(buy.quantity.get()))
}

impl Deltas {
    /// Account for `buy`, stamped `timestamp_us`.
    pub fn add(&mut self, buy: &Buy, timestamp_us: i64) {
        let units = buy.quantity.get();
        for g in GRANULARITIES {
            let bucket = bucket_start(timestamp_us, g);
            self.rollup.entry((g, bucket)).or_default().add(buy);
            self.promotion_rollup.entry((buy.promotion_id, g, bucket)).or_default().add(buy);
        }
        let promotion = self.promotions.entry(buy.promotion_id).or_insert(PromotionDelta {
            tally: Tally::default(),
            revenue_cents: 0,
            new_buyers: 0,
            converted: 0,
            priced_buys: 0,
            repeat_buyers: 0,
            new_customers: 0,
            first_us: timestamp_us,
            last_us: timestamp_us,
        });
        promotion.tally.add(buy);
        promotion.revenue_cents = promotion.revenue_cents.saturating_add(revenue_cents(buy));
        promotion.first_us = promotion.first_us.min(timestamp_us);
        promotion.last_us = promotion.last_us.max(timestamp_us);
        self.products.entry((buy.promotion_id, buy.product_id)).or_default().add(buy);
        self.buyers
            .entry((buy.user_id, buy.promotion_id))
            .or_insert(BuyerDelta { first_us: timestamp_us, last_us: timestamp_us, ..BuyerDelta::default() })
            .add(buy, timestamp_us);
        self.first_buys.entry(buy.user_id).or_insert(buy.promotion_id);
        promotion.priced_buys += i64::from(buy.unit_price_cents.is_some());
        self.units += units;
    }
}

/// What one buyer gains in one promotion: their row of `GET /promotions/{id}/customers`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BuyerDelta {
    /// Buys.
    pub buys: i64,
    /// Units.
    pub units: i64,
    /// Quantity × unit price over the priced ones (saturating).
    pub revenue_cents: i64,
    /// Earliest buy timestamp.
    pub first_us: i64,
    /// Latest buy timestamp.
    pub last_us: i64,
}

impl BuyerDelta {
    /// Account for `buy`, stamped `timestamp_us`.
    pub fn add(&mut self, buy: &Buy, timestamp_us: i64) {
        self.buys += 1;
        self.units += buy.quantity.get();
        self.revenue_cents = self.revenue_cents.saturating_add(revenue_cents(buy));
        self.first_us = self.first_us.min(timestamp_us);
        self.last_us = self.last_us.max(timestamp_us);
    }
}

/// What one promotion gains from one batch of views.
#[derive(Debug, Default)]
pub struct PromotionViews {
    /// Its views.
    pub views: i64,
    /// Viewers new to it (filled in by the store).
    pub new_viewers: i64,
    /// Of those, how many had bought in it (filled in by the store).
    pub converted: i64,
}

/// The aggregate changes of one batch of page views.
#[derive(Debug, Default)]
pub struct ViewDeltas {
    /// (promotion, granularity, bucket) → views.
    pub rollup: BTreeMap<(i64, i64, i64), i64>,
    /// (granularity, bucket) → views, over every promotion.
    pub all_rollup: BTreeMap<(i64, i64), i64>,
    /// promotion → what it gains.
    pub promotions: BTreeMap<i64, PromotionViews>,
    /// (user, promotion) pairs seen, in the viewers table's key order.
    pub viewers: BTreeSet<(i64, i64)>,
}

impl ViewDeltas {
    /// Account for `view`, stamped `timestamp_us`.
    pub fn add(&mut self, view: &PageView, timestamp_us: i64) {
        for g in GRANULARITIES {
            *self.rollup.entry((view.promotion_id, g, bucket_start(timestamp_us, g))).or_default() += 1;
            *self.all_rollup.entry((g, bucket_start(timestamp_us, g))).or_default() += 1;
        }
        self.promotions.entry(view.promotion_id).or_default().views += 1;
        self.viewers.insert((view.user_id, view.promotion_id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_edges_round_up() {
        assert_eq!(window_edges(0), (0, 0, 0));
        assert_eq!(window_edges(1), (1, 60, 3600));
        assert_eq!(window_edges(3_600 * US), (3600, 3600, 3600));
        assert_eq!(window_edges(3_599 * US + 5), (3600, 3600, 3600));
        assert_eq!(window_edges(61 * US), (61, 120, 3600));
    }
}
