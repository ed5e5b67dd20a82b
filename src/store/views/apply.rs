//! Applying facts to the views, in sequence order, one transaction per batch.
//!
//! Aggregates are summed in memory over the whole batch first, so each bucket, promotion and
//! product row is written once per batch however many buys touch it; only the buyer pairs are one
//! row per buy.

use rusqlite::{OptionalExtension, Transaction, params};

use std::collections::{BTreeMap, BTreeSet};

use crate::store::log::{Fact, RefundFact, ViewFact};
use crate::store::views::deltas::{Deltas, ViewDeltas};

/// Apply `facts` (numbered consecutively after the applied sequence number) inside `tx`;
/// returns the new applied sequence number.
pub fn apply(tx: &Transaction, facts: &[Fact]) -> rusqlite::Result<i64> {
    let applied: i64 = tx.query_row("SELECT seq FROM applied WHERE id = 1", [], |r| r.get(0))?;
    let mut deltas = Deltas::default();
    let mut last = applied;
    for fact in facts {
        // The log hands out every number once, in order: anything else is a bug upstream, and
        // applying it would count a buy twice or skip one.
        if fact.seq != last + 1 {
            return Err(rusqlite::Error::InvalidParameterName(format!(
                "fact {} follows {last}: the log must be applied in sequence order",
                fact.seq
            )));
        }
        last = fact.seq;
        deltas.add(&fact.buy, fact.timestamp_us);
    }
    flush(&mut deltas, tx)?;
    tx.execute("UPDATE applied SET seq = ?1, total_units = total_units + ?2 WHERE id = 1", [last, deltas.units])?;
    Ok(last)
}

/// Write one batch's aggregate changes, counting which buyers are new to their promotion, which
/// reach a second buy there, and which are new customers.
fn flush(deltas: &mut Deltas, tx: &Transaction) -> rusqlite::Result<()> {
    // A probe, then a plain insert or update: an upsert with RETURNING made SQLite keep a
    // statement journal (every page it touched copied first), which was most of the stage's cost.
    let mut known = tx.prepare_cached("SELECT buys FROM promotion_buyers WHERE user_id = ?1 AND promotion_id = ?2")?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO promotion_buyers (user_id, promotion_id, buys, units, revenue_cents, first_buy_us, last_buy_us)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let mut update = tx.prepare_cached(
        "UPDATE promotion_buyers SET
                 buys = buys + ?3,
                 units = units + ?4,
                 revenue_cents = CASE WHEN revenue_cents > 9223372036854775807 - ?5
                     THEN 9223372036854775807 ELSE revenue_cents + ?5 END,
                 first_buy_us = min(first_buy_us, ?6),
                 last_buy_us = max(last_buy_us, ?7)
             WHERE user_id = ?1 AND promotion_id = ?2",
    )?;
    // Customers first: a user whose customer row this batch creates has no buy applied before
    // it, so none of their buyer pairs needs a probe (with a new user per buy, that halves the
    // statements a buy costs the stage).
    let mut customer =
        tx.prepare_cached("INSERT INTO customers (user_id, first_promotion) VALUES (?1, ?2) ON CONFLICT DO NOTHING")?;
    let mut first_timers = BTreeSet::new();
    for (&user_id, &promotion_id) in &deltas.first_buys {
        if customer.execute(params![user_id, promotion_id])? == 1 {
            first_timers.insert(user_id);
            if let Some(p) = deltas.promotions.get_mut(&promotion_id) {
                p.new_customers += 1;
            }
        }
    }
    // Only a promotion somebody has viewed can convert a viewer: the others skip the probe.
    let mut viewers_of = tx.prepare_cached("SELECT unique_viewers FROM promotion_totals WHERE promotion_id = ?1")?;
    let mut has_viewers = BTreeSet::new();
    for &promotion_id in deltas.promotions.keys() {
        let viewers: i64 = viewers_of.query_row([promotion_id], |r| r.get(0)).optional()?.unwrap_or(0);
        if viewers > 0 {
            has_viewers.insert(promotion_id);
        }
    }
    let mut viewed = tx.prepare_cached("SELECT 1 FROM promotion_viewers WHERE user_id = ?1 AND promotion_id = ?2")?;
    // In the table's key order (user first), so consecutive writes land on the same pages.
    for (&(user_id, promotion_id), b) in &deltas.buyers {
        let row = params![user_id, promotion_id, b.buys, b.units, b.revenue_cents, b.first_us, b.last_us];
        let before: i64 = if first_timers.contains(&user_id) {
            0
        } else {
            known.query_row(params![user_id, promotion_id], |r| r.get(0)).optional()?.unwrap_or(0)
        };
        if before == 0 {
            insert.execute(row)?;
        } else {
            update.execute(row)?;
        }
        let after = before + b.buys;
        let Some(p) = deltas.promotions.get_mut(&promotion_id) else { continue };
        if before == 0 {
            p.new_buyers += 1;
            // A viewer who buys for the first time converts (a buyer who views later is
            // counted when the view is applied).
            if has_viewers.contains(&promotion_id) && viewed.exists(params![user_id, promotion_id])? {
                p.converted += 1;
            }
        }
        p.repeat_buyers += i64::from(before < 2 && after >= 2);
    }
    let mut rollup = tx.prepare_cached(
        "INSERT INTO rollup (granularity_s, bucket_s, buys, units, revenue_cents) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (granularity_s, bucket_s)
             DO UPDATE SET buys = buys + excluded.buys, units = units + excluded.units,
                 revenue_cents = CASE WHEN revenue_cents > 9223372036854775807 - excluded.revenue_cents THEN 9223372036854775807 ELSE revenue_cents + excluded.revenue_cents END",
    )?;
    for ((g, bucket), t) in &deltas.rollup {
        rollup.execute(params![g, bucket, t.buys, t.units, t.revenue_cents])?;
    }
    let mut promotion_rollup = tx.prepare_cached(
        "INSERT INTO promotion_rollup (promotion_id, granularity_s, bucket_s, buys, units, revenue_cents)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (granularity_s, bucket_s, promotion_id)
             DO UPDATE SET buys = buys + excluded.buys, units = units + excluded.units,
                 revenue_cents = CASE WHEN revenue_cents > 9223372036854775807 - excluded.revenue_cents THEN 9223372036854775807 ELSE revenue_cents + excluded.revenue_cents END",
    )?;
    for ((promotion_id, g, bucket), t) in &deltas.promotion_rollup {
        promotion_rollup.execute(params![promotion_id, g, bucket, t.buys, t.units, t.revenue_cents])?;
    }
    let mut totals = tx.prepare_cached(
        "INSERT INTO promotion_totals
                 (promotion_id, total_buys, total_units, revenue_cents, unique_buyers, first_buy_us, last_buy_us,
                  converted_viewers, priced_buys, repeat_buyers, new_customers)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (promotion_id) DO UPDATE SET
                 total_buys = total_buys + excluded.total_buys,
                 total_units = total_units + excluded.total_units,
                 revenue_cents = CASE WHEN revenue_cents > 9223372036854775807 - excluded.revenue_cents
                     THEN 9223372036854775807 ELSE revenue_cents + excluded.revenue_cents END,
                 unique_buyers = unique_buyers + excluded.unique_buyers,
                 first_buy_us = min(coalesce(first_buy_us, excluded.first_buy_us), excluded.first_buy_us),
                 last_buy_us = max(coalesce(last_buy_us, excluded.last_buy_us), excluded.last_buy_us),
                 converted_viewers = converted_viewers + excluded.converted_viewers,
                 priced_buys = priced_buys + excluded.priced_buys,
                 repeat_buyers = repeat_buyers + excluded.repeat_buyers,
                 new_customers = new_customers + excluded.new_customers",
    )?;
    for (promotion_id, p) in &deltas.promotions {
        totals.execute(params![
            promotion_id,
            p.tally.buys,
            p.tally.units,
            p.revenue_cents,
            p.new_buyers,
            p.first_us,
            p.last_us,
            p.converted,
            p.priced_buys,
            p.repeat_buyers,
            p.new_customers
        ])?;
    }
    let mut products = tx.prepare_cached(
        "INSERT INTO promotion_products (promotion_id, product_id, buys, units) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (promotion_id, product_id)
             DO UPDATE SET buys = buys + excluded.buys, units = units + excluded.units",
    )?;
    for ((promotion_id, product_id), t) in &deltas.products {
        products.execute(params![promotion_id, product_id, t.buys, t.units])?;
    }
    Ok(())
}

/// Apply `views` (numbered consecutively after the applied view number) inside `tx`, after
/// the batch's buys; returns the new applied view number.
pub fn apply_views(tx: &Transaction, views: &[ViewFact]) -> rusqlite::Result<i64> {
    let applied: i64 = tx.query_row("SELECT views_seq FROM applied WHERE id = 1", [], |r| r.get(0))?;
    let mut deltas = ViewDeltas::default();
    let mut last = applied;
    for fact in views {
        if fact.seq != last + 1 {
            return Err(rusqlite::Error::InvalidParameterName(format!(
                "view {} follows {last}: the log must be applied in sequence order",
                fact.seq
            )));
        }
        last = fact.seq;
        deltas.add(&fact.view, fact.timestamp_us);
    }
    let mut new_viewer = tx.prepare_cached(
        "INSERT INTO promotion_viewers (user_id, promotion_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
    )?;
    let mut bought = tx.prepare_cached("SELECT 1 FROM promotion_buyers WHERE user_id = ?1 AND promotion_id = ?2")?;
    let viewers: Vec<(i64, i64)> = deltas.viewers.iter().copied().collect();
    for (user_id, promotion_id) in viewers {
        if new_viewer.execute(params![user_id, promotion_id])? == 1
            && let Some(p) = deltas.promotions.get_mut(&promotion_id)
        {
            p.new_viewers += 1;
            if bought.exists(params![user_id, promotion_id])? {
                p.converted += 1;
            }
        }
    }
    let mut rollup = tx.prepare_cached(
        "INSERT INTO promotion_view_rollup (promotion_id, granularity_s, bucket_s, views) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (granularity_s, bucket_s, promotion_id) DO UPDATE SET views = views + excluded.views",
    )?;
    for ((promotion_id, g, bucket), views) in &deltas.rollup {
        rollup.execute(params![promotion_id, g, bucket, views])?;
    }
    let mut all = tx.prepare_cached(
        "INSERT INTO view_rollup (granularity_s, bucket_s, views) VALUES (?1, ?2, ?3)
             ON CONFLICT (granularity_s, bucket_s) DO UPDATE SET views = views + excluded.views",
    )?;
    for ((g, bucket), views) in &deltas.all_rollup {
        all.execute(params![g, bucket, views])?;
    }
    let mut totals = tx.prepare_cached(
        "INSERT INTO promotion_totals (promotion_id, views, unique_viewers, converted_viewers) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (promotion_id) DO UPDATE SET
                 views = views + excluded.views,
                 unique_viewers = unique_viewers + excluded.unique_viewers,
                 converted_viewers = converted_viewers + excluded.converted_viewers,
                 priced_buys = priced_buys + excluded.priced_buys,
                 repeat_buyers = repeat_buyers + excluded.repeat_buyers,
                 new_customers = new_customers + excluded.new_customers",
    )?;
    for (promotion_id, p) in &deltas.promotions {
        totals.execute(params![promotion_id, p.views, p.new_viewers, p.converted])?;
    }
    tx.execute("UPDATE applied SET views_seq = ?1 WHERE id = 1", [last])?;
    Ok(last)
}

/// Apply `refunds` (numbered consecutively after the applied refund number, each of a buy
/// already applied) inside `tx`; returns the new applied refund number. Refunds change only the
/// refunded figures: buys, units and revenue stay gross.
pub fn apply_refunds(tx: &Transaction, refunds: &[RefundFact]) -> rusqlite::Result<i64> {
    let applied: i64 = tx.query_row("SELECT refunds_seq FROM applied WHERE id = 1", [], |r| r.get(0))?;
    let mut last = applied;
    let mut promotions: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    let mut buyers: BTreeMap<(i64, i64), i64> = BTreeMap::new();
    for refund in refunds {
        if refund.seq != last + 1 {
            return Err(rusqlite::Error::InvalidParameterName(format!(
                "refund {} follows {last}: the log must be applied in sequence order",
                refund.seq
            )));
        }
        last = refund.seq;
        let p = promotions.entry(refund.promotion_id).or_default();
        p.0 += refund.units;
        p.1 = p.1.saturating_add(refund.cents);
        *buyers.entry((refund.user_id, refund.promotion_id)).or_default() += refund.units;
    }
    let mut totals = tx.prepare_cached(
        "UPDATE promotion_totals SET refunded_units = refunded_units + ?2,
             refunded_cents = CASE WHEN refunded_cents > 9223372036854775807 - ?3
                 THEN 9223372036854775807 ELSE refunded_cents + ?3 END
         WHERE promotion_id = ?1",
    )?;
    for (promotion_id, (units, cents)) in promotions {
        totals.execute(params![promotion_id, units, cents])?;
    }
    let mut buyer = tx.prepare_cached(
        "UPDATE promotion_buyers SET refunded_units = refunded_units + ?3 WHERE user_id = ?1 AND promotion_id = ?2",
    )?;
    for ((user_id, promotion_id), units) in buyers {
        buyer.execute(params![user_id, promotion_id, units])?;
    }
    tx.execute("UPDATE applied SET refunds_seq = ?1 WHERE id = 1", [last])?;
    Ok(last)
}

/// Buckets deleted per statement, and statements per table and granularity per call, so that
/// a backlog (views rebuilt from an old log) is worked off a slice at a time between batches.
const PRUNE_STEP_S: i64 = 600;
const PRUNE_STEPS: usize = 10;

/// Forget the second and minute buckets older than `before_s`, which no read
/// can reach any more (see `ROLLUP_KEEP_S`), a bounded slice per call; returns the rows deleted.
pub fn prune(tx: &Transaction, before_s: i64) -> rusqlite::Result<usize> {
    let mut deleted = 0;
    for table in ["rollup", "promotion_rollup", "promotion_view_rollup", "view_rollup"] {
        for granularity in [1i64, 60] {
            deleted += prune_buckets(tx, table, granularity, before_s)?;
        }
    }
    Ok(deleted)
}

/// Delete `table`'s rows of `granularity` with buckets before `before_s`, oldest first, in at
/// most [`PRUNE_STEPS`] ranges of the primary key of [`PRUNE_STEP_S`] buckets each.
fn prune_buckets(tx: &Transaction, table: &str, granularity: i64, before_s: i64) -> rusqlite::Result<usize> {
    let oldest = format!("SELECT min(bucket_s) FROM {table} WHERE granularity_s = ?1");
    let delete = format!("DELETE FROM {table} WHERE granularity_s = ?1 AND bucket_s < ?2");
    let mut deleted = 0;
    for _ in 0..PRUNE_STEPS {
        // The oldest bucket each time rather than a step from the last: a stray old timestamp
        // must not make the steps crawl through empty years.
        let Some(oldest) = tx.prepare_cached(&oldest)?.query_row([granularity], |r| r.get::<_, Option<i64>>(0))? else {
            break;
        };
        if oldest >= before_s {
            break;
        }
        let upto = before_s.min(oldest.saturating_add(granularity * PRUNE_STEP_S));
        deleted += tx.prepare_cached(&delete)?.execute([granularity, upto])?;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::*;
    use crate::domain::{Buy, Quantity};
    use crate::page_view::PageView;

    fn buy(seq: i64, user_id: i64, promotion_id: i64) -> Fact {
        let buy = Buy { user_id, promotion_id, product_id: 1, quantity: Quantity::ONE, unit_price_cents: None };
        Fact { seq, buy, timestamp_us: 1_000_000 * seq }
    }

    fn view(seq: i64, user_id: i64, promotion_id: i64) -> ViewFact {
        ViewFact { seq, view: PageView { user_id, promotion_id, product_id: None }, timestamp_us: 1_000_000 * seq }
    }

    /// (unique buyers, repeat buyers, new customers, converted viewers) of `promotion_id`.
    fn counts(conn: &Connection, promotion_id: i64) -> (i64, i64, i64, i64) {
        conn.query_row(
            "SELECT unique_buyers, repeat_buyers, new_customers, converted_viewers FROM promotion_totals
             WHERE promotion_id = ?1",
            [promotion_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap()
    }

    /// The stage probes only returning customers and promotions somebody viewed: the counts of
    /// first-time customers, returning ones and viewers across batches are still exact.
    #[test]
    fn buyer_counts_are_exact_across_batches() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::store::views::schema::prepare(&mut conn).unwrap();
        let tx = conn.transaction().unwrap();
        apply(&tx, &[buy(1, 1, 10)]).unwrap();
        apply_views(&tx, &[view(1, 2, 20), view(2, 4, 10)]).unwrap();
        tx.commit().unwrap();
        let tx = conn.transaction().unwrap();
        // User 1 returns to 10 (a repeat) and comes to 20 (a new buyer there, not a new
        // customer); user 3 is new and buys twice in 10; user 2 viewed 20 and converts; user 4
        // viewed 10 and converts there.
        apply(&tx, &[buy(2, 1, 10), buy(3, 1, 20), buy(4, 3, 10), buy(5, 3, 10), buy(6, 2, 20), buy(7, 4, 10)])
            .unwrap();
        tx.commit().unwrap();
        assert_eq!(counts(&conn, 10), (3, 2, 3, 1));
        assert_eq!(counts(&conn, 20), (2, 0, 1, 1));
    }
}
