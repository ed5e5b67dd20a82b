//! The log's tail added to a read of the views: the facts committed after the views' snapshot
//! (a few milliseconds of them under load), so that a read includes every acknowledged fact
//! without waiting for the view stage to apply them.
//!
//! Each function takes the snapshot's connection, so what it looks up in the views (is this buyer
//! known? how many units has this product?) is as of the same applied prefix as the answer it
//! adds to.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use crate::lock::lock;
use crate::store::log::{Fact, Position, RefundFact, ViewFact};
use crate::store::views::deltas::{BuyerDelta, bucket_start, revenue_cents};
use crate::store::views::read::{self, Edge};
use crate::store::{
    Bucket, Customer, CustomerOrder, ProductCount, PromotionOrder, PromotionStats, PromotionSummary, StoreError,
};

/// How many top products a promotion's stats list.
const TOP_PRODUCTS: usize = 10;

/// Add the tail (every buy after the views' snapshot, which `stats` was read from, and the views
/// of `promotion_id` after it) to `stats`, with the window starting at `since_us`. All buys, not
/// only the promotion's: whether a buyer is a new customer here depends on their first buy
/// anywhere.
pub fn add_to_promotion_stats(
    (conn, known, snapshot): (&Connection, &Mutex<KnownPairs>, Position),
    stats: &mut PromotionStats,
    promotion_id: i64,
    (since_us, previous_since_us): (i64, i64),
    (all_buys, views): (&[Fact], &[ViewFact]),
) -> Result<(), StoreError> {
    let previous = previous_since_us..since_us;
    stats.new_customers += new_customers(conn, promotion_id, all_buys)?;
    let tail = all_buys.iter().filter(|f| f.buy.promotion_id == promotion_id);
    let mut users: BTreeMap<i64, i64> = BTreeMap::new();
    let mut products: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for fact in tail {
        let units = fact.buy.quantity.get();
        let counts = &mut stats.counts;
        counts.total_buys += 1;
        counts.total_units += units;
        let revenue = revenue_cents(&fact.buy);
        if fact.timestamp_us >= since_us {
            counts.recent_buys += 1;
            counts.recent_units += units;
            stats.recent_revenue_cents = stats.recent_revenue_cents.saturating_add(revenue);
        } else if previous.contains(&fact.timestamp_us) {
            stats.previous.buys += 1;
            stats.previous.units += units;
            stats.previous.revenue_cents = stats.previous.revenue_cents.saturating_add(revenue);
        }
        stats.revenue_cents = stats.revenue_cents.saturating_add(revenue);
        stats.first_buy_us = Some(stats.first_buy_us.map_or(fact.timestamp_us, |t| t.min(fact.timestamp_us)));
        stats.last_buy_us = Some(stats.last_buy_us.map_or(fact.timestamp_us, |t| t.max(fact.timestamp_us)));
        *users.entry(fact.buy.user_id).or_default() += 1;
        stats.priced_buys += i64::from(fact.buy.unit_price_cents.is_some());
        let product = products.entry(fact.buy.product_id).or_default();
        product.0 += 1;
        product.1 += units;
    }
    let mut viewers = BTreeSet::new();
    for fact in views {
        stats.views += 1;
        stats.recent_views += i64::from(fact.timestamp_us >= since_us);
        stats.previous.views += i64::from(previous.contains(&fact.timestamp_us));
        viewers.insert(fact.view.user_id);
    }
    let gained = users_gained(conn, (known, snapshot), promotion_id, &users, &viewers)?;
    stats.unique_buyers += gained.buyers;
    stats.unique_viewers += gained.viewers;
    stats.converted_viewers += gained.converted;
    stats.repeat_buyers += gained.repeat;
    // The new top products are among the views' top ones and the tail's: a product in neither
    // ranked after every one of the views' top, and those only gained.
    let mut candidates: BTreeMap<i64, (i64, i64)> =
        stats.top_products.iter().map(|p| (p.product_id, (p.buys, p.units))).collect();
    let mut counted =
        conn.prepare_cached("SELECT buys, units FROM promotion_products WHERE promotion_id = ?1 AND product_id = ?2")?;
    for (product, (buys, units)) in products {
        let (before_buys, before_units) = match candidates.get(&product) {
            Some(&counts) => counts,
            None => counted
                .query_row(params![promotion_id, product], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?
                .unwrap_or((0, 0)),
        };
        candidates.insert(product, (before_buys + buys, before_units + units));
    }
    let mut top: Vec<ProductCount> =
        candidates.into_iter().map(|(product_id, (buys, units))| ProductCount { product_id, buys, units }).collect();
    top.sort_by(|a, b| b.units.cmp(&a.units).then(a.product_id.cmp(&b.product_id)));
    top.truncate(TOP_PRODUCTS);
    stats.top_products = top;
    Ok(())
}

/// Add `tail` (buys) and `views` to `buckets` (of `granularity_s` seconds, starting in
/// `from_s..=to_s`, oldest first, as the views answered), keeping them sorted and non-empty.
pub fn add_to_timeseries(
    buckets: &mut Vec<Bucket>,
    (granularity_s, from_s, to_s): (i64, i64, i64),
    tail: &[Fact],
    views: &[ViewFact],
) {
    if tail.is_empty() && views.is_empty() {
        return;
    }
    let mut all: BTreeMap<i64, Bucket> = buckets.drain(..).map(|b| (b.start_s, b)).collect();
    let start =
        |timestamp_us: i64| Some(bucket_start(timestamp_us, granularity_s)).filter(|s| (from_s..=to_s).contains(s));
    let empty = |start_s| Bucket { start_s, buys: 0, units: 0, views: 0, revenue_cents: 0 };
    for fact in tail {
        if let Some(start_s) = start(fact.timestamp_us) {
            let bucket = all.entry(start_s).or_insert_with(|| empty(start_s));
            bucket.buys += 1;
            bucket.units += fact.buy.quantity.get();
            bucket.revenue_cents = bucket.revenue_cents.saturating_add(revenue_cents(&fact.buy));
        }
    }
    for fact in views {
        if let Some(start_s) = start(fact.timestamp_us) {
            all.entry(start_s).or_insert_with(|| empty(start_s)).views += 1;
        }
    }
    *buckets = all.into_values().collect();
}

/// What the tail's users add to one promotion's distinct counts.
#[derive(Debug, Default, Clone, Copy)]
struct UsersGained {
    buyers: i64,
    viewers: i64,
    converted: i64,
    repeat: i64,
}

/// Buyers of `promotion_id` in `all_buys` (the tail, in sequence order) who are new customers
/// there: unknown to the views' customers, and whose first buy in the tail is in it. The tail
/// holds every promotion's buys (hundreds to thousands under load), so it is only scanned against
/// the promotion's own buyers, a few of them: a map of every user's first buy cost 100 µs a read.
fn new_customers(conn: &Connection, promotion_id: i64, all_buys: &[Fact]) -> Result<i64, StoreError> {
    let buyers: HashSet<i64> =
        all_buys.iter().filter(|f| f.buy.promotion_id == promotion_id).map(|f| f.buy.user_id).collect();
    let mut first: HashMap<i64, i64> = HashMap::with_capacity(buyers.len());
    for fact in all_buys.iter().filter(|f| buyers.contains(&f.buy.user_id)) {
        first.entry(fact.buy.user_id).or_insert(fact.buy.promotion_id);
    }
    let mut known = conn.prepare_cached("SELECT 1 FROM customers WHERE user_id = ?1")?;
    let mut n = 0;
    for (user, promotion) in first {
        if promotion == promotion_id && !known.exists([user])? {
            n += 1;
        }
    }
    Ok(n)
}

/// What the views' snapshot says of (user, promotion) pairs the tail touches: the user's buys in
/// the promotion, and whether they viewed it. Kept between reads of the same snapshot: it moves
/// only when the stage applies a batch (every 100 ms), while each read's tail holds hundreds of
/// users, most of them probed by the read before (under the mix, the probes were 14% of the
/// service's CPU). Bounded by the tail: cleared whenever a newer snapshot is read.
#[derive(Debug, Default)]
pub struct KnownPairs {
    applied: Position,
    pairs: Pairs,
}

/// (user, promotion) → (the user's buys in it, whether they viewed it).
type Pairs = HashMap<(i64, i64), (i64, bool)>;

impl KnownPairs {
    /// The pairs of `snapshot`, or none for a snapshot older than the one kept.
    fn of(&mut self, snapshot: Position) -> Option<&mut Pairs> {
        if self.applied != snapshot {
            if !snapshot.covers(self.applied) {
                return None;
            }
            self.applied = snapshot;
            self.pairs.clear();
        }
        Some(&mut self.pairs)
    }
}

/// Of `buyers` (user → buys) and `viewers`, the tail's in `promotion_id`: those new to it as
/// buyers or viewers, those the tail makes both a viewer and a buyer for the first time, and
/// those it brings to a second buy. A user is known when the views' snapshot holds their pair.
fn users_gained(
    conn: &Connection,
    (known, snapshot): (&Mutex<KnownPairs>, Position),
    promotion_id: i64,
    buyers: &BTreeMap<i64, i64>,
    viewers: &BTreeSet<i64>,
) -> Result<UsersGained, StoreError> {
    let mut bought =
        conn.prepare_cached("SELECT buys FROM promotion_buyers WHERE user_id = ?1 AND promotion_id = ?2")?;
    let mut viewed = conn.prepare_cached("SELECT 1 FROM promotion_viewers WHERE user_id = ?1 AND promotion_id = ?2")?;
    let mut probe = |user: i64| -> Result<(i64, bool), StoreError> {
        let before: i64 = bought.query_row(params![user, promotion_id], |r| r.get(0)).optional()?.unwrap_or(0);
        Ok((before, viewed.exists(params![user, promotion_id])?))
    };
    let users: BTreeSet<i64> = buyers.keys().chain(viewers).copied().collect();
    // The lock is not held through the probes (a reader preempted while holding it would stall
    // every other): look up, probe what is missing, then keep it.
    let mut found: HashMap<i64, (i64, bool)> = match lock(known).of(snapshot) {
        Some(pairs) => users.iter().filter_map(|&u| pairs.get(&(u, promotion_id)).map(|&pair| (u, pair))).collect(),
        None => HashMap::new(),
    };
    let mut probed = Vec::new();
    for &user in users.iter().filter(|u| !found.contains_key(u)) {
        probed.push((user, probe(user)?));
    }
    if !probed.is_empty() {
        if let Some(pairs) = lock(known).of(snapshot) {
            pairs.extend(probed.iter().map(|&(user, pair)| ((user, promotion_id), pair)));
        }
        found.extend(probed);
    }
    let mut gained = UsersGained::default();
    for user in users {
        let (before, had_viewed) = found[&user];
        let had_bought = before > 0;
        let now = buyers.get(&user).copied().unwrap_or(0);
        let (buys_now, views_now) = (now > 0, viewers.contains(&user));
        gained.repeat += i64::from(before < 2 && before + now >= 2);
        gained.buyers += i64::from(buys_now && !had_bought);
        gained.viewers += i64::from(views_now && !had_viewed);
        let converted = (had_bought || buys_now) && (had_viewed || views_now);
        gained.converted += i64::from(converted && !(had_bought && had_viewed));
    }
    Ok(gained)
}

/// What one promotion gains from the tail, for the ranking.
#[derive(Debug, Default)]
struct Gains {
    buys: i64,
    units: i64,
    revenue_cents: i64,
    recent_buys: i64,
    views: i64,
    refunded_cents: i64,
    buyers: BTreeMap<i64, i64>,
    viewers: BTreeSet<i64>,
}

/// One page of the promotions ranking in `order` (`limit` from `offset`) over the views'
/// snapshot plus `tail`, and the number of promotions.
///
/// In an order that facts only raise (buys, units, revenue, views), every promotion outside the
/// tail can only move down: one on the page was among the views' first `offset + limit`. The
/// page is found among those and the tail's own promotions. A conversion rate can also fall, so
/// for it every promotion is a candidate (their number, not the facts', bounds the work).
pub fn promotions_page(
    (conn, known): (&Connection, &Mutex<KnownPairs>),
    edge: &Edge,
    since_us: i64,
    (order, limit, offset): (PromotionOrder, i64, i64),
    (tail, views, refunds): (&[Fact], &[ViewFact], &[RefundFact]),
) -> Result<(Vec<PromotionSummary>, i64), StoreError> {
    let mut gained: BTreeMap<i64, Gains> = BTreeMap::new();
    for fact in tail {
        let g = gained.entry(fact.buy.promotion_id).or_default();
        g.buys += 1;
        g.units += fact.buy.quantity.get();
        g.revenue_cents = g.revenue_cents.saturating_add(revenue_cents(&fact.buy));
        g.recent_buys += i64::from(fact.timestamp_us >= since_us);
        *g.buyers.entry(fact.buy.user_id).or_default() += 1;
    }
    for fact in views {
        let g = gained.entry(fact.view.promotion_id).or_default();
        g.views += 1;
        g.viewers.insert(fact.view.user_id);
    }
    for refund in refunds {
        let g = gained.entry(refund.promotion_id).or_default();
        g.refunded_cents = g.refunded_cents.saturating_add(refund.cents);
    }
    let first = order.only_grows().then(|| offset.saturating_add(limit));
    let (mut candidates, mut total) = read::ranked(conn, order, first)?;
    for &promotion in gained.keys() {
        if !candidates.iter().any(|c| c.promotion_id == promotion) {
            match read::ranked_one(conn, promotion)? {
                Some(row) => candidates.push(row),
                None => {
                    total += 1;
                    candidates.push(PromotionSummary { promotion_id: promotion, ..PromotionSummary::default() });
                }
            }
        }
    }
    for row in &mut candidates {
        if let Some(g) = gained.get(&row.promotion_id) {
            let users = users_gained(conn, (known, edge.position()), row.promotion_id, &g.buyers, &g.viewers)?;
            row.total_buys += g.buys;
            row.total_units += g.units;
            row.revenue_cents = row.revenue_cents.saturating_add(g.revenue_cents);
            row.views += g.views;
            row.refunded_cents = row.refunded_cents.saturating_add(g.refunded_cents);
            row.unique_viewers += users.viewers;
            row.converted_viewers += users.converted;
        }
    }
    candidates.sort_by(|a, b| order.compare(a, b));
    let page: Vec<PromotionSummary> = candidates
        .into_iter()
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(usize::try_from(limit).unwrap_or(0))
        .collect();
    let recent = gained.iter().map(|(&p, g)| (p, g.recent_buys)).collect();
    Ok((read::with_recent(conn, edge, since_us, page, &recent)?, total))
}

/// One page of `promotion_id`'s buyers in `order` (`limit` from `offset`) over the views'
/// snapshot plus `tail` (buys after it, any promotion), and the number of its buyers.
///
/// Buys only raise a buyer's revenue, units and buys, so a buyer outside the tail can only move
/// down: the page is among the views' first `offset + limit` and the tail's buyers.
pub fn customers_page(
    conn: &Connection,
    promotion_id: i64,
    (order, limit, offset): (CustomerOrder, i64, i64),
    (tail, refunds): (&[Fact], &[RefundFact]),
) -> Result<(Vec<Customer>, i64), StoreError> {
    let mut gained: BTreeMap<i64, BuyerDelta> = BTreeMap::new();
    for fact in tail.iter().filter(|f| f.buy.promotion_id == promotion_id) {
        let t = fact.timestamp_us;
        gained
            .entry(fact.buy.user_id)
            .or_insert(BuyerDelta { first_us: t, last_us: t, ..BuyerDelta::default() })
            .add(&fact.buy, t);
    }
    let mut candidates = read::top_customers(conn, promotion_id, order, offset.saturating_add(limit))?;
    let mut total = read::buyers(conn, promotion_id)?;
    for &user in gained.keys() {
        if !candidates.iter().any(|c| c.user_id == user) {
            match read::customer(conn, promotion_id, user)? {
                Some(row) => candidates.push(row),
                None => {
                    total += 1;
                    let row = Customer {
                        user_id: user,
                        first_buy_us: i64::MAX,
                        last_buy_us: i64::MIN,
                        ..Customer::default()
                    };
                    candidates.push(row);
                }
            }
        }
    }
    for row in &mut candidates {
        if let Some(g) = gained.get(&row.user_id) {
            row.buys += g.buys;
            row.units += g.units;
            row.revenue_cents = row.revenue_cents.saturating_add(g.revenue_cents);
            row.first_buy_us = row.first_buy_us.min(g.first_us);
            row.last_buy_us = row.last_buy_us.max(g.last_us);
        }
    }
    // Refunds leave the order (it is of gross figures) as it is.
    for row in &mut candidates {
        row.refunded_units += refunds.iter().filter(|r| r.user_id == row.user_id).map(|r| r.units).sum::<i64>();
    }
    candidates.sort_by(|a, b| order.compare(a, b));
    let page = candidates
        .into_iter()
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(usize::try_from(limit).unwrap_or(0))
        .collect();
    Ok((page, total))
}
