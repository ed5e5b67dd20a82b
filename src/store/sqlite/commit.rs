//! The write transaction: the facts (buys), their sequence numbers and the idempotency keys,
//! nothing else. Every analytic is a view of the facts, applied off this path (`store::views`).

use rusqlite::{Connection, OptionalExtension, params};

use crate::store::{IDEMPOTENCY_TTL_US, Outcome, Submission};

/// Apply `writes` inside the transaction open on `tx`, in order, and return one outcome per write.
pub fn apply(tx: &Connection, writes: &[Submission], now_us: i64) -> rusqlite::Result<Vec<Outcome>> {
    // Cached statements: a group commit runs these once each, thousands of times a second, and
    // parsing them again each time cost about as much as the inserts of a small batch.
    let mut seq: i64 = tx.prepare_cached("SELECT total FROM counter WHERE id = 1")?.query_row([], |r| r.get(0))?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO buys (buy_count, user_id, promotion_id, product_id, product_quantity,
            unit_price_cents, ip_address, timestamp_us, received_at_us, timestamp_source, idempotency_key)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?;
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
        for record in &write.buys {
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
        if let Some(claim) = &write.idempotency {
            claim_key.execute(params![claim.key, &claim.fingerprint[..], seq, write.buys.len() as i64, now_us])?;
        }
        outcomes.push(Outcome::Recorded { last_seq: seq, recorded: write.buys.len() });
    }
    tx.prepare_cached("UPDATE counter SET total = ?1, total_units = total_units + ?2 WHERE id = 1")?
        .execute([seq, units])?;
    Ok(outcomes)
}
