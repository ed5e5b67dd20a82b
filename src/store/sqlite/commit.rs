//! The write transaction: the facts (buys and page views), their sequence numbers and the
//! idempotency keys, nothing else. Every analytic is a view of the facts, applied off this path
//! (`store::views`).

use rusqlite::{Connection, OptionalExtension, params};

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
                outcomes.push(if fingerprint == claim.fingerprint {
                    Outcome::Replayed { last_seq, recorded: recorded as usize }
                } else {
                    Outcome::KeyMismatch
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
    Ok((outcomes, Position { buys: seq, views: view_seq }))
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
