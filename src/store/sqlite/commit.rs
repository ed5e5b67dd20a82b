//! The write transaction: the facts (buys, page views, refunds), their sequence numbers and the
//! idempotency keys, nothing else. Every analytic is a view of the facts, applied off this path
//! (`store::views`).

use rusqlite::{Connection, OptionalExtension, params};

use crate::refund::{RefundReceipt, RefundRecord, RefundRefusal, decide};
use crate::store::log::Position;
use crate::store::{Facts, IDEMPOTENCY_TTL_US, Outcome, Submission};

/// Apply `writes` inside the transaction open on `tx`, in order; returns one outcome per write
/// and the last number of each kind of fact once they are committed.
pub fn apply(tx: &Connection, writes: &[Submission], now_us: i64) -> rusqlite::Result<(Vec<Outcome>, Position)> {
    // Cached statements: a group commit runs these once each, thousands of times a second, and
    // parsing them again each time cost about as much as the inserts of a small batch.
    let mut seq: i64 = tx.prepare_cached("SELECT total FROM counter WHERE id = 1")?.query_row([], |r| r.get(0))?;
    let views_before: i64 =
        tx.prepare_cached("SELECT total FROM view_counter WHERE id = 1")?.query_row([], |r| r.get(0))?;
    let mut view_seq = views_before;
    let refunds_before: i64 =
        tx.prepare_cached("SELECT total FROM refund_counter WHERE id = 1")?.query_row([], |r| r.get(0))?;
    let mut refund_seq = refunds_before;
    let mut find_key = tx.prepare_cached(
        "SELECT fingerprint, last_seq, recorded FROM idempotency WHERE key = ?1 AND created_at_us >= ?2",
    )?;
    let mut claim_key = tx.prepare_cached(
        "INSERT INTO idempotency (key, fingerprint, last_seq, recorded, created_at_us) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint, last_seq = excluded.last_seq,
             recorded = excluded.recorded, created_at_us = excluded.created_at_us",
    )?;
    let mut units = 0;
    let mut outcomes = Vec::with_capacity(writes.len());
    for write in writes {
        if let Some(claim) = &write.idempotency {
            // An unexpired earlier use of the key decides: replay or refuse, record nothing.
            let earlier = find_key
                .query_row(params![claim.key, now_us - IDEMPOTENCY_TTL_US], |r| {
                    Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                })
                .optional()?;
            if let Some((fingerprint, last_seq, recorded)) = earlier {
                outcomes.push(match &write.facts {
                    _ if fingerprint != claim.fingerprint => Outcome::KeyMismatch,
                    Facts::Refund(_) => Outcome::Refunded { receipt: receipt(tx, last_seq)?, replayed: true },
                    _ => Outcome::Replayed { last_seq, recorded: recorded as usize },
                });
                continue;
            }
        }
        let last = match &write.facts {
            Facts::Buys(buys) => {
                units += insert_buys(tx, seq, buys)?;
                seq += buys.len() as i64;
                seq
            }
            Facts::Views(views) => {
                insert_views(tx, view_seq, views)?;
                view_seq += views.len() as i64;
                view_seq
            }
            Facts::Refund(record) => match refund(tx, refund_seq + 1, record)? {
                Ok(receipt) => {
                    refund_seq += 1;
                    if let Some(claim) = &write.idempotency {
                        claim_key.execute(params![claim.key, &claim.fingerprint[..], refund_seq, 1, now_us])?;
                    }
                    outcomes.push(Outcome::Refunded { receipt, replayed: false });
                    continue;
                }
                // Nothing recorded, and the key stays free: a retry is decided afresh.
                Err(refusal) => {
                    outcomes.push(Outcome::RefundRefused(refusal));
                    continue;
                }
            },
        };
        let recorded = write.facts.len();
        if let Some(claim) = &write.idempotency {
            claim_key.execute(params![claim.key, &claim.fingerprint[..], last, recorded as i64, now_us])?;
        }
        outcomes.push(Outcome::Recorded { last_seq: last, recorded });
    }
    tx.prepare_cached("UPDATE counter SET total = ?1, total_units = total_units + ?2 WHERE id = 1")?
        .execute([seq, units])?;
    if view_seq != views_before {
        tx.prepare_cached("UPDATE view_counter SET total = ?1 WHERE id = 1")?.execute([view_seq])?;
    }
    if refund_seq != refunds_before {
        tx.prepare_cached("UPDATE refund_counter SET total = ?1 WHERE id = 1")?.execute([refund_seq])?;
    }
    Ok((outcomes, Position { buys: seq, views: view_seq, refunds: refund_seq }))
}

/// Decide `record` against its buy as this transaction sees it (buys and refunds committed
/// before, and those of this batch so far) and, if it is granted, insert it numbered `number`.
fn refund(
    tx: &Connection,
    number: i64,
    record: &RefundRecord,
) -> rusqlite::Result<Result<RefundReceipt, RefundRefusal>> {
    let buy_count = record.refund.buy_count;
    let buy = tx
        .prepare_cached(
            "SELECT user_id, promotion_id, product_id, product_quantity, unit_price_cents FROM buys WHERE buy_count = ?1",
        )?
        .query_row([buy_count], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?, r.get(4)?))
        })
        .optional()?;
    let Some((user_id, promotion_id, product_id, quantity, price)) = buy else {
        return Ok(Err(RefundRefusal::UnknownBuy));
    };
    let remaining: i64 = tx
        .prepare_cached("SELECT remaining_units FROM refunds WHERE buy_count = ?1 ORDER BY refund_count DESC LIMIT 1")?
        .query_row([buy_count], |r| r.get(0))
        .optional()?
        .unwrap_or(quantity);
    let (units, cents) = match decide(record.refund.units, remaining, price) {
        Ok(granted) => granted,
        Err(refusal) => return Ok(Err(refusal)),
    };
    tx.prepare_cached(
        "INSERT INTO refunds (refund_count, buy_count, user_id, promotion_id, product_id, refunded_units,
            refunded_cents, remaining_units, ip_address, timestamp_us, received_at_us, timestamp_source, idempotency_key)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        number,
        buy_count,
        user_id,
        promotion_id,
        product_id,
        units,
        cents,
        remaining - units,
        record.ip_address,
        record.timestamp_us,
        record.received_at_us,
        record.timestamp_source.as_str(),
        record.idempotency_key,
    ])?;
    Ok(Ok(RefundReceipt {
        refund_count: number,
        buy_count,
        refunded_units: units,
        remaining_units: remaining - units,
        refunded_cents: cents,
    }))
}

/// The answer refund `number` got, to replay it.
fn receipt(tx: &Connection, number: i64) -> rusqlite::Result<RefundReceipt> {
    tx.prepare_cached(
        "SELECT buy_count, refunded_units, remaining_units, refunded_cents FROM refunds WHERE refund_count = ?1",
    )?
    .query_row([number], |r| {
        Ok(RefundReceipt {
            refund_count: number,
            buy_count: r.get(0)?,
            refunded_units: r.get(1)?,
            remaining_units: r.get(2)?,
            refunded_cents: r.get(3)?,
        })
    })
}

/// Insert `buys` numbered after `seq`; returns their units.
fn insert_buys(tx: &Connection, mut seq: i64, buys: &[crate::domain::BuyRecord]) -> rusqlite::Result<i64> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO buys (buy_count, user_id, promotion_id, product_id, product_quantity,
            unit_price_cents, ip_address, timestamp_us, received_at_us, timestamp_source, idempotency_key)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?;
    let mut units = 0;
    for record in buys {
        seq += 1;
        let buy = &record.buy;
        insert.execute(params![
            seq,
            buy.user_id,
            buy.promotion_id,
            buy.product_id,
            buy.quantity.get(),
            buy.unit_price_cents,
            record.ip_address,
            record.timestamp_us,
            record.received_at_us,
            record.timestamp_source.as_str(),
            record.idempotency_key,
        ])?;
        units += buy.quantity.get();
    }
    Ok(units)
}

/// Insert `views` numbered after `seq`.
fn insert_views(tx: &Connection, mut seq: i64, views: &[crate::page_view::PageViewRecord]) -> rusqlite::Result<()> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO views (view_count, user_id, promotion_id, product_id, ip_address, timestamp_us,
            received_at_us, timestamp_source, idempotency_key)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for record in views {
        seq += 1;
        let view = &record.view;
        insert.execute(params![
            seq,
            view.user_id,
            view.promotion_id,
            view.product_id,
            record.ip_address,
            record.timestamp_us,
            record.received_at_us,
            record.timestamp_source.as_str(),
            record.idempotency_key,
        ])?;
    }
    Ok(())
}
