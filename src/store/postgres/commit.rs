//! The write transaction: the facts (buys), their sequence numbers and the idempotency keys, with
//! the SQLite store's semantics, for several replicas writing at once. Nothing else: every
//! analytic is a view of the facts, which each replica applies from this shared log.
//!
//! # How sequence numbers are taken
//!
//! Sequence numbers must be unique and gap-free across replicas, so they come from one row,
//! `counter`, updated inside the transaction that records the buys: its row lock is held until
//! COMMIT, so no other replica can take numbers until this transaction's are committed (or rolled
//! back, which returns them). A PostgreSQL `SEQUENCE` would not do: it is not transactional, and a
//! rolled-back transaction would leave a gap.
//!
//! The counter is taken **last**: everything that does not need a sequence number (claiming the
//! idempotency keys) runs first; then one statement ([`NUMBER_BUYS`]) takes the block `total − n + 1 ..= total` with `UPDATE counter …
//! RETURNING total`, inserts the buys numbered from it and fills in the keys' `last_seq`, then
//! COMMIT. The buys are inserted after the counter rather than with placeholders rewritten later,
//! which would write every buy twice. While the counter is held, the server runs the rest of that
//! one statement and the COMMIT, and nothing else.
//!
//! # One round trip
//!
//! All those statements are *pipelined*: sent together on the connection and answered together,
//! so a commit costs one round trip (two when the batch carries idempotency keys, whose claims
//! decide which buys are recorded). This matters twice: the writer thread waits for its commit,
//! so its round trips bound throughput; and the counter row is held from [`NUMBER_BUYS`] to
//! COMMIT, so no client round trip happens while another replica waits for it. The `postgres`
//! crate used for reads has no pipelining, so the writer drives `tokio-postgres` itself, on a
//! small runtime of its own (see [`CommitConnection`]).
//!
//! # When is a commit known?
//!
//! The commit succeeded only when every statement and the COMMIT answered without error. If a
//! statement failed with an error *from the server*, the transaction was aborted there and the
//! pipelined COMMIT became a ROLLBACK: nothing was recorded, and the commit may be retried. Any
//! other failure (connection lost, no answer in time) leaves the outcome unknown: pipelined, the
//! COMMIT may have been executed before the connection died. That is reported as an error (the
//! writer answers 503) and never retried, since the buys may be recorded already; a client that
//! retries with an Idempotency-Key gets the original answer or a fresh recording, never both.
//!
//! # Idempotency across replicas
//!
//! Each key of the batch is claimed with `INSERT … ON CONFLICT DO NOTHING RETURNING key`: the
//! primary key makes exactly one transaction win. A replica that races on a key still being
//! committed elsewhere waits for that transaction (PostgreSQL waits on a conflicting uncommitted
//! insert), then finds the committed row and replays it. Expired keys (older than 24 hours) are
//! deleted first, so they can be claimed again, as SQLite overwrites them.
//!
//! # Batching
//!
//! The buys get one statement per commit, their columns passed as arrays and expanded with
//! `UNNEST`, whatever the batch size.
//!
//! Portability: `UNNEST` of several arrays, `ON CONFLICT`, `UPDATE … FROM` and an `INSERT …
//! RETURNING` inside `WITH` are understood by PostgreSQL, Citus, CockroachDB and YugabyteDB. Under their
//! SERIALIZABLE isolation a conflicting transaction fails with SQLSTATE 40001 instead of waiting;
//! that is a server error, so the commit is retried.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures_util::join;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Statement};

use super::{describe, is_broken, is_retryable};
use crate::domain::BuyRecord;
use crate::page_view::PageViewRecord;
use crate::refund::{RefundReceipt, RefundRecord, RefundRefusal, decide};
use crate::store::{Facts, IDEMPOTENCY_TTL_US, Outcome, Submission};

/// Longest a commit may wait for PostgreSQL's answers before it is abandoned as unknown. This
/// also covers a server that accepts data but never answers (a frozen process), which neither
/// `statement_timeout` nor TCP keepalives notice.
const COMMIT_DEADLINE: Duration = Duration::from_secs(4);
/// A connection idle for longer than this is checked with an empty query before a commit, so a
/// connection that died while idle (PostgreSQL restarted) is replaced before anything is sent,
/// rather than making the commit's outcome unknown.
pub(super) const CHECK_AFTER_IDLE: Duration = Duration::from_secs(1);
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

const DELETE_EXPIRED_KEYS: &str = "DELETE FROM idempotency WHERE key = ANY(CAST($1 AS TEXT[])) AND created_at_us < $2";

/// `last_seq` is a placeholder, filled in by [`NUMBER_BUYS`] once the counter is taken.
const CLAIM_KEYS: &str = "
    INSERT INTO idempotency (key, fingerprint, last_seq, recorded, created_at_us)
    SELECT k, f, 0, n, $4
    FROM UNNEST(CAST($1 AS TEXT[]), CAST($2 AS BYTEA[]), CAST($3 AS BIGINT[])) AS c (k, f, n)
    ORDER BY k
    ON CONFLICT (key) DO NOTHING
    RETURNING key";

const FIND_KEYS: &str =
    "SELECT key, fingerprint, last_seq, recorded FROM idempotency WHERE key = ANY(CAST($1 AS TEXT[]))";

/// Takes the block of sequence numbers (see the module comment), inserts the buys numbered from
/// it and gives the claimed keys their last sequence number, in one statement, so the counter row
/// is held for this statement and the COMMIT only. Buy number `r` (1-based in the batch of $1)
/// gets `total - $1 + r`; a key ($14) whose write's last buy is `rel_last` ($15) gets
/// `total - $1 + rel_last`. Returns the counter's new total.
const NUMBER_BUYS: &str = "
    WITH taken AS (
        UPDATE counter SET total = total + $1, total_units = total_units + $2 WHERE id = 1 RETURNING total),
    inserted AS (
        INSERT INTO buys (buy_count, user_id, promotion_id, product_id, product_quantity, unit_price_cents,
                          ip_address, timestamp_us, received_at_us, timestamp_source, idempotency_key)
        SELECT t.total - $1 + b.r, b.user_id, b.promotion_id, b.product_id, b.quantity, b.price,
               b.ip, b.stamp, b.received, b.source, b.key
        FROM taken AS t,
             UNNEST(CAST($3 AS BIGINT[]), CAST($4 AS BIGINT[]), CAST($5 AS BIGINT[]), CAST($6 AS BIGINT[]),
                    CAST($7 AS BIGINT[]), CAST($8 AS BIGINT[]), CAST($9 AS TEXT[]), CAST($10 AS BIGINT[]),
                    CAST($11 AS BIGINT[]), CAST($12 AS TEXT[]), CAST($13 AS TEXT[]))
                 AS b (r, user_id, promotion_id, product_id, quantity, price, ip, stamp, received, source, key)),
    filled AS (
        UPDATE idempotency SET last_seq = t.total - $1 + f.rel_last
        FROM taken AS t, UNNEST(CAST($14 AS TEXT[]), CAST($15 AS BIGINT[])) AS f (key, rel_last)
        WHERE idempotency.key = f.key)
    SELECT total FROM taken";

/// As [`NUMBER_BUYS`], for page views and their own counter: view number `r` (1-based in the
/// batch of $1) gets `total - $1 + r`; a key ($11) whose write's last view is `rel_last` ($12)
/// gets `total - $1 + rel_last`. In a batch with both, the buys' counter is always taken first,
/// so replicas take the two rows in one order and never deadlock.
const NUMBER_VIEWS: &str = "
    WITH taken AS (UPDATE view_counter SET total = total + $1 WHERE id = 1 RETURNING total),
    inserted AS (
        INSERT INTO views (view_count, user_id, promotion_id, product_id, ip_address, timestamp_us,
                           received_at_us, timestamp_source, idempotency_key)
        SELECT t.total - $1 + v.r, v.user_id, v.promotion_id, v.product_id, v.ip, v.stamp, v.received, v.source, v.key
        FROM taken AS t,
             UNNEST(CAST($2 AS BIGINT[]), CAST($3 AS BIGINT[]), CAST($4 AS BIGINT[]), CAST($5 AS BIGINT[]),
                    CAST($6 AS TEXT[]), CAST($7 AS BIGINT[]), CAST($8 AS BIGINT[]), CAST($9 AS TEXT[]),
                    CAST($10 AS TEXT[]))
                 AS v (r, user_id, promotion_id, product_id, ip, stamp, received, source, key)),
    filled AS (
        UPDATE idempotency SET last_seq = t.total - $1 + f.rel_last
        FROM taken AS t, UNNEST(CAST($11 AS TEXT[]), CAST($12 AS BIGINT[])) AS f (key, rel_last)
        WHERE idempotency.key = f.key)
    SELECT total FROM taken";

/// As [`NUMBER_VIEWS`], for refunds and their counter, taken after the other two. Refund `r`
/// gets `total - $1 + r`; a key ($14) whose refund is `rel_last` ($15) gets `total - $1 + rel_last`.
const NUMBER_REFUNDS: &str = "
    WITH taken AS (UPDATE refund_counter SET total = total + $1 WHERE id = 1 RETURNING total),
    inserted AS (
        INSERT INTO refunds (refund_count, buy_count, user_id, promotion_id, product_id, refunded_units,
                             refunded_cents, remaining_units, ip_address, timestamp_us, received_at_us,
                             timestamp_source, idempotency_key)
        SELECT t.total - $1 + f.r, f.buy_count, f.user_id, f.promotion_id, f.product_id, f.units, f.cents,
               f.remaining, f.ip, f.stamp, f.received, f.source, f.key
        FROM taken AS t,
             UNNEST(CAST($2 AS BIGINT[]), CAST($3 AS BIGINT[]), CAST($4 AS BIGINT[]), CAST($5 AS BIGINT[]),
                    CAST($6 AS BIGINT[]), CAST($7 AS BIGINT[]), CAST($8 AS BIGINT[]), CAST($9 AS BIGINT[]),
                    CAST($10 AS TEXT[]), CAST($11 AS BIGINT[]), CAST($12 AS BIGINT[]), CAST($13 AS TEXT[]),
                    CAST($16 AS TEXT[]))
                 AS f (r, buy_count, user_id, promotion_id, product_id, units, cents, remaining, ip, stamp,
                       received, source, key)),
    filled AS (
        UPDATE idempotency SET last_seq = t.total - $1 + f.rel_last
        FROM taken AS t, UNNEST(CAST($14 AS TEXT[]), CAST($15 AS BIGINT[])) AS f (key, rel_last)
        WHERE idempotency.key = f.key)
    SELECT total FROM taken";

/// Locks the buys a batch refunds, in buy order (so replicas refunding the same buys wait for
/// each other instead of deadlocking), and reads them. Taken before any counter.
const LOCK_BUYS: &str = "
    SELECT buy_count, user_id, promotion_id, product_id, product_quantity, unit_price_cents FROM buys
    WHERE buy_count = ANY(CAST($1 AS BIGINT[])) ORDER BY buy_count FOR UPDATE";

/// The units left of each locked buy after its last refund. Run after [`LOCK_BUYS`], so (read
/// committed) it sees every refund committed by whoever held a lock before.
const REMAINING: &str = "
    SELECT DISTINCT ON (buy_count) buy_count, remaining_units FROM refunds
    WHERE buy_count = ANY(CAST($1 AS BIGINT[])) ORDER BY buy_count, refund_count DESC";

/// The answers of earlier refunds, to replay them.
const RECEIPTS: &str = "
    SELECT refund_count, buy_count, refunded_units, remaining_units, refunded_cents FROM refunds
    WHERE refund_count = ANY(CAST($1 AS BIGINT[]))";

/// Frees keys claimed in this transaction by refunds that were refused (nothing recorded).
const RELEASE_KEYS: &str = "DELETE FROM idempotency WHERE key = ANY(CAST($1 AS TEXT[]))";

/// Deletes one chunk of expired keys.
const PRUNE_KEYS: &str = "
    DELETE FROM idempotency WHERE key IN (SELECT key FROM idempotency WHERE created_at_us < $1 LIMIT $2)";

/// Every statement of the write path, prepared once per connection.
fn write_statements() -> [&'static str; 11] {
    [
        DELETE_EXPIRED_KEYS,
        CLAIM_KEYS,
        FIND_KEYS,
        NUMBER_BUYS,
        NUMBER_VIEWS,
        NUMBER_REFUNDS,
        LOCK_BUYS,
        REMAINING,
        RECEIPTS,
        RELEASE_KEYS,
        PRUNE_KEYS,
    ]
}

/// Why a commit (or a prune) did not succeed, and what may follow.
#[derive(Debug)]
pub struct Failure {
    /// One line for the log and the 503.
    pub message: String,
    /// COMMIT may have been executed: the buys may or may not be recorded.
    pub unknown: bool,
    /// Nothing was recorded and running the same transaction again may succeed (a serialization
    /// failure, a deadlock, a key deleted meanwhile, a connection found dead before sending).
    pub retryable: bool,
    /// The connection is unusable and must be replaced.
    pub broken: bool,
}

impl Failure {
    /// A failure from PostgreSQL or the connection, nothing committed.
    fn not_committed(e: &tokio_postgres::Error, client: &Client) -> Failure {
        let broken = is_broken(e, client.is_closed());
        Failure { message: describe(e), unknown: false, retryable: is_retryable(e) || broken, broken }
    }
}

/// The writer's connection: a `tokio-postgres` client driven by a single-threaded runtime of its
/// own, which runs only inside the writer thread's calls (`block_on`), like the `postgres`
/// crate's clients. It must not be dropped on an async worker (the store's `Drop` sees to it).
pub struct CommitConnection {
    runtime: tokio::runtime::Runtime,
    client: Client,
    statements: Statements,
    last_used: Instant,
}

/// The write path's prepared statements on one connection.
pub struct Statements(HashMap<&'static str, Statement>);

impl Statements {
    fn get(&self, sql: &'static str) -> &Statement {
        // Every statement used here is in write_statements(), prepared with the connection.
        &self.0[sql]
    }
}

impl CommitConnection {
    /// Connect, apply the session settings and prepare every statement.
    pub fn connect(config: &tokio_postgres::Config, session: &str) -> Result<CommitConnection, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the PostgreSQL writer's runtime: {e}"))?;
        let connecting = async {
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "PostgreSQL writer connection ended");
                }
            });
            client.batch_execute(session).await?;
            let mut statements = HashMap::new();
            for sql in write_statements() {
                statements.insert(sql, client.prepare(sql).await?);
            }
            Ok((client, Statements(statements)))
        };
        // `connect_timeout` bounds the TCP connection only; a server that accepts but never
        // answers the start-up would otherwise hold the writer.
        let (client, statements) = runtime
            .block_on(async { tokio::time::timeout(COMMIT_DEADLINE, connecting).await })
            .map_err(|_| format!("PostgreSQL did not answer the connection within {COMMIT_DEADLINE:?}"))?
            .map_err(|e: tokio_postgres::Error| describe(&e))?;
        Ok(CommitConnection { runtime, client, statements, last_used: Instant::now() })
    }

    /// The value of the session setting `name` (tests).
    #[cfg(test)]
    pub fn setting(&mut self, name: &str) -> String {
        let client = &self.client;
        self.runtime.block_on(async { client.query_one("SELECT current_setting($1)", &[&name]).await.unwrap().get(0) })
    }

    /// Whether the connection is known to be closed.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Record `writes` in one transaction; see the module comment for what an error means.
    pub fn transact(&mut self, writes: &[Submission], now_us: i64) -> Result<Vec<Outcome>, Failure> {
        self.check_if_idle()?;
        let (client, st) = (&self.client, &self.statements);
        let result = self.runtime.block_on(async {
            tokio::time::timeout(COMMIT_DEADLINE, run_transaction(client, st, writes, now_us)).await.unwrap_or_else(
                |_| {
                    Err(Failure {
                        message: format!("PostgreSQL did not answer within {COMMIT_DEADLINE:?}"),
                        unknown: true,
                        retryable: false,
                        broken: true,
                    })
                },
            )
        });
        self.last_used = Instant::now();
        result
    }

    /// Delete keys created before `before_us`, in chunks so no statement runs long.
    pub fn prune(&mut self, before_us: i64, limit: i64) -> Result<usize, Failure> {
        self.check_if_idle()?;
        let (client, statement) = (&self.client, self.statements.get(PRUNE_KEYS));
        let result = self.runtime.block_on(async {
            match tokio::time::timeout(COMMIT_DEADLINE, client.execute(statement, &[&before_us, &limit])).await {
                Ok(Ok(n)) => Ok(n as usize),
                Ok(Err(e)) => Err(Failure::not_committed(&e, client)),
                Err(_) => {
                    let message = "PostgreSQL did not answer in time".to_string();
                    Err(Failure { message, unknown: true, retryable: false, broken: true })
                }
            }
        });
        self.last_used = Instant::now();
        result
    }

    /// After a pause, make sure the connection still answers before sending anything that
    /// matters: a failure here is known to have recorded nothing.
    fn check_if_idle(&mut self) -> Result<(), Failure> {
        if self.last_used.elapsed() < CHECK_AFTER_IDLE {
            return Ok(());
        }
        let client = &self.client;
        // The timer must be created inside the runtime (this thread is not a tokio thread).
        let answered =
            self.runtime.block_on(async { tokio::time::timeout(CHECK_TIMEOUT, client.simple_query("")).await });
        let message = match answered {
            Ok(Ok(_)) => {
                self.last_used = Instant::now();
                return Ok(());
            }
            Ok(Err(e)) => describe(&e),
            Err(_) => format!("PostgreSQL did not answer within {CHECK_TIMEOUT:?}"),
        };
        Err(Failure { message, unknown: false, retryable: true, broken: true })
    }
}

/// `N` BIGINT columns gathered row by row, passed as `N` array parameters.
struct Columns<const N: usize>([Vec<i64>; N]);

impl<const N: usize> Default for Columns<N> {
    fn default() -> Self {
        Columns(std::array::from_fn(|_| Vec::new()))
    }
}

impl<const N: usize> Columns<N> {
    fn push(&mut self, row: [i64; N]) {
        for (column, value) in self.0.iter_mut().zip(row) {
            column.push(value);
        }
    }
}

/// Every parameter of the statements that record the buys, gathered before anything is sent.
struct Recording<'a> {
    n: i64,
    units: i64,
    /// Relative number (1..=n), user, promotion, product, quantity.
    ids: Columns<5>,
    prices: Vec<Option<i64>>,
    ips: Vec<&'a str>,
    times: Columns<2>,
    sources: Vec<&'a str>,
    keys: Vec<Option<&'a str>>,
}

impl<'a> Recording<'a> {
    fn new(recorded: &[&'a BuyRecord]) -> Recording<'a> {
        let n = recorded.len();
        let mut r = Recording {
            n: n as i64,
            units: 0,
            ids: Columns::default(),
            prices: Vec::with_capacity(n),
            ips: Vec::with_capacity(n),
            times: Columns::default(),
            sources: Vec::with_capacity(n),
            keys: Vec::with_capacity(n),
        };
        for (i, record) in recorded.iter().enumerate() {
            let b = &record.buy;
            r.units += b.quantity.get();
            r.ids.push([i as i64 + 1, b.user_id, b.promotion_id, b.product_id, b.quantity.get()]);
            r.prices.push(b.unit_price_cents);
            r.ips.push(record.ip_address.as_str());
            r.times.push([record.timestamp_us, record.received_at_us]);
            r.sources.push(record.timestamp_source.as_str());
            r.keys.push(record.idempotency_key.as_deref());
        }
        r
    }
}

/// What the batch knows about one idempotency key while deciding each write's outcome.
enum KeyState<'a> {
    /// An unexpired earlier request, committed before this transaction: replay or refuse.
    Stored { fingerprint: Vec<u8>, last_seq: i64, recorded: i64 },
    /// Claimed by this transaction, for the first write of the batch carrying it.
    Claimed,
    /// Recorded by an earlier write of this batch.
    Used { fingerprint: &'a [u8; 32], kind: Kind, rel_last: i64, recorded: usize },
}

/// Which counter numbers a write's facts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Buys = 0,
    Views = 1,
    Refunds = 2,
}

/// An outcome whose sequence numbers are relative to the block (of its kind) not yet taken.
enum Pending {
    Recorded {
        kind: Kind,
        rel_last: i64,
        recorded: usize,
    },
    Replayed {
        kind: Kind,
        rel_last: i64,
        recorded: usize,
    },
    /// A refund granted in this batch, numbered `rel` among its refunds.
    Refunded {
        rel: i64,
        replayed: bool,
    },
    Final(Outcome),
}

/// One refund granted in this batch, with what its row copies from the buy.
struct GrantedRefund<'a> {
    record: &'a RefundRecord,
    user_id: i64,
    promotion_id: i64,
    product_id: i64,
    units: i64,
    cents: i64,
    remaining: i64,
}

/// What the batch knows of the buys it refunds: read under their row locks.
#[derive(Default)]
struct RefundLedger {
    /// Buy number → (user, promotion, product, price).
    buys: HashMap<i64, (i64, i64, i64, Option<i64>)>,
    /// Buy number → units not refunded yet (updated as the batch grants refunds).
    remaining: HashMap<i64, i64>,
    /// Earlier refunds' answers, by refund number (for replays).
    receipts: HashMap<i64, RefundReceipt>,
}

impl RefundLedger {
    /// Grant or refuse `record` against what is left of its buy.
    fn decide<'a>(&mut self, record: &'a RefundRecord) -> Result<GrantedRefund<'a>, RefundRefusal> {
        let buy_count = record.refund.buy_count;
        let (Some(&(user_id, promotion_id, product_id, price)), Some(remaining)) =
            (self.buys.get(&buy_count), self.remaining.get_mut(&buy_count))
        else {
            return Err(RefundRefusal::UnknownBuy);
        };
        let (units, cents) = decide(record.refund.units, *remaining, price)?;
        *remaining -= units;
        Ok(GrantedRefund { record, user_id, promotion_id, product_id, units, cents, remaining: *remaining })
    }
}

/// Run one transaction: claim keys (first round trip, only with keys), lock and read the buys of
/// any refunds (one more), decide outcomes, then record everything and COMMIT (one pipelined
/// round trip).
async fn run_transaction(
    client: &Client,
    st: &Statements,
    writes: &[Submission],
    now_us: i64,
) -> Result<Vec<Outcome>, Failure> {
    let mut keys = HashMap::new();
    let mut began = writes.iter().any(|w| w.idempotency.is_some());
    if began {
        keys = claim_keys(client, st, writes, now_us).await?;
    }
    let mut ledger = RefundLedger::default();
    if writes.iter().any(|w| matches!(w.facts, Facts::Refund(_))) {
        ledger = read_refunded_buys(client, st, writes, &keys, began).await?;
        began = true;
    }

    // Decide every outcome, numbering recorded buys, views and refunds 1, 2, … within the batch.
    let mut rel = [0i64; 3];
    let mut pending = Vec::with_capacity(writes.len());
    let mut recorded = Vec::new();
    let mut recorded_views = Vec::new();
    let mut granted = Vec::new();
    let mut filled: [Vec<(&str, i64)>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut released = Vec::new();
    for write in writes {
        let kind = match write.facts {
            Facts::Buys(_) => Kind::Buys,
            Facts::Views(_) => Kind::Views,
            Facts::Refund(_) => Kind::Refunds,
        };
        let n = write.facts.len();
        // A refund is decided before its key is used: a refused one records nothing.
        let refund = match &write.facts {
            Facts::Refund(record) => Some(record),
            _ => None,
        };
        let mut claimed = None;
        if let Some(claim) = &write.idempotency {
            match keys.get_mut(claim.key.as_str()) {
                Some(KeyState::Stored { fingerprint, last_seq, recorded }) => {
                    pending.push(Pending::Final(match ledger.receipts.get(last_seq) {
                        _ if fingerprint[..] != claim.fingerprint[..] => Outcome::KeyMismatch,
                        Some(&receipt) if kind == Kind::Refunds => Outcome::Refunded { receipt, replayed: true },
                        _ => Outcome::Replayed { last_seq: *last_seq, recorded: *recorded as usize },
                    }));
                    continue;
                }
                Some(KeyState::Used { fingerprint, kind: used, rel_last, recorded }) => {
                    pending.push(match () {
                        _ if **fingerprint != claim.fingerprint => Pending::Final(Outcome::KeyMismatch),
                        _ if *used == Kind::Refunds => Pending::Refunded { rel: *rel_last, replayed: true },
                        _ => Pending::Replayed { kind: *used, rel_last: *rel_last, recorded: *recorded },
                    });
                    continue;
                }
                Some(KeyState::Claimed) => claimed = Some(claim),
                // claim_keys gives every key of the batch a state.
                None => {
                    let _ = client.batch_execute("ROLLBACK").await;
                    return Err(Failure {
                        message: format!("idempotency key '{}' changed during the commit", claim.key),
                        unknown: false,
                        retryable: true,
                        broken: false,
                    });
                }
            }
        }
        if let Some(record) = refund {
            match ledger.decide(record) {
                Ok(refund) => granted.push(refund),
                Err(refusal) => {
                    // The key was claimed for it: free it again, so a retry is decided afresh.
                    released.extend(claimed.map(|c| c.key.as_str()));
                    pending.push(Pending::Final(Outcome::RefundRefused(refusal)));
                    continue;
                }
            }
        }
        let rel_last = rel[kind as usize] + n as i64;
        if let Some(claim) = claimed {
            let state = keys.get_mut(claim.key.as_str()).expect("claimed above");
            *state = KeyState::Used { fingerprint: &claim.fingerprint, kind, rel_last, recorded: n };
            filled[kind as usize].push((claim.key.as_str(), rel_last));
        }
        rel[kind as usize] = rel_last;
        match &write.facts {
            Facts::Buys(buys) => recorded.extend(buys),
            Facts::Views(views) => recorded_views.extend(views),
            Facts::Refund(_) => {}
        }
        pending.push(match kind {
            Kind::Refunds => Pending::Refunded { rel: rel_last, replayed: false },
            _ => Pending::Recorded { kind, rel_last, recorded: n },
        });
    }

    let facts = (&recorded[..], &recorded_views[..], &granted[..]);
    let [buys_total, views_total, refunds_total] =
        number_and_commit(client, st, facts, (&filled, &released), began).await?;
    let base = [
        buys_total.map_or(0, |total| total - recorded.len() as i64),
        views_total.map_or(0, |total| total - recorded_views.len() as i64),
        refunds_total.map_or(0, |total| total - granted.len() as i64),
    ];
    Ok(pending
        .into_iter()
        .map(|p| match p {
            Pending::Recorded { kind, rel_last, recorded } => {
                Outcome::Recorded { last_seq: base[kind as usize] + rel_last, recorded }
            }
            Pending::Replayed { kind, rel_last, recorded } => {
                Outcome::Replayed { last_seq: base[kind as usize] + rel_last, recorded }
            }
            Pending::Refunded { rel, replayed } => {
                let g = &granted[rel as usize - 1];
                let receipt = RefundReceipt {
                    refund_count: base[Kind::Refunds as usize] + rel,
                    buy_count: g.record.refund.buy_count,
                    refunded_units: g.units,
                    remaining_units: g.remaining,
                    refunded_cents: g.cents,
                };
                Outcome::Refunded { receipt, replayed }
            }
            Pending::Final(outcome) => outcome,
        })
        .collect())
}

/// Lock the buys the batch's refunds name and read them, what is left of each, and the answers
/// of the refunds its keys replay, in one pipelined round trip (beginning the transaction too
/// unless `began`). Rolls back on failure.
async fn read_refunded_buys(
    client: &Client,
    st: &Statements,
    writes: &[Submission],
    keys: &HashMap<&str, KeyState<'_>>,
    began: bool,
) -> Result<RefundLedger, Failure> {
    let mut buy_counts: Vec<i64> = Vec::new();
    let mut replayed: Vec<i64> = Vec::new();
    for write in writes {
        if let Facts::Refund(record) = &write.facts {
            buy_counts.push(record.refund.buy_count);
            let stored = write.idempotency.as_ref().and_then(|c| keys.get(c.key.as_str()));
            if let Some(KeyState::Stored { last_seq, .. }) = stored {
                replayed.push(*last_seq);
            }
        }
    }
    buy_counts.sort_unstable();
    buy_counts.dedup();
    let (buys_param, replayed_param): ([&(dyn ToSql + Sync); 1], [&(dyn ToSql + Sync); 1]) =
        ([&buy_counts], [&replayed]);
    let (begin, locked, remaining, receipts) = join!(
        async { if began { Ok(()) } else { client.batch_execute("BEGIN").await } },
        client.query(st.get(LOCK_BUYS), &buys_param),
        client.query(st.get(REMAINING), &buys_param),
        client.query(st.get(RECEIPTS), &replayed_param),
    );
    let read = || -> Result<RefundLedger, tokio_postgres::Error> {
        begin?;
        let mut ledger = RefundLedger::default();
        for row in locked? {
            let buy_count: i64 = row.try_get(0)?;
            let ids = (row.try_get(1)?, row.try_get(2)?, row.try_get(3)?, row.try_get(5)?);
            ledger.buys.insert(buy_count, ids);
            ledger.remaining.insert(buy_count, row.try_get(4)?);
        }
        for row in remaining? {
            ledger.remaining.insert(row.try_get(0)?, row.try_get(1)?);
        }
        for row in receipts? {
            let receipt = RefundReceipt {
                refund_count: row.try_get(0)?,
                buy_count: row.try_get(1)?,
                refunded_units: row.try_get(2)?,
                remaining_units: row.try_get(3)?,
                refunded_cents: row.try_get(4)?,
            };
            ledger.receipts.insert(receipt.refund_count, receipt);
        }
        Ok(ledger)
    };
    match read() {
        Ok(ledger) => Ok(ledger),
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(Failure::not_committed(&e, client))
        }
    }
}

/// BEGIN, then claim the batch's keys and read back those already used elsewhere, in one
/// pipelined round trip. Leaves the transaction open on success; rolls it back on failure.
async fn claim_keys<'a>(
    client: &Client,
    st: &Statements,
    writes: &'a [Submission],
    now_us: i64,
) -> Result<HashMap<&'a str, KeyState<'a>>, Failure> {
    // The first write carrying each key is the one that may claim it.
    let mut first: BTreeMap<&str, &Submission> = BTreeMap::new();
    for write in writes {
        if let Some(claim) = &write.idempotency {
            first.entry(claim.key.as_str()).or_insert(write);
        }
    }
    let keys: Vec<&str> = first.keys().copied().collect();
    let fingerprints: Vec<&[u8]> =
        first.values().filter_map(|w| w.idempotency.as_ref()).map(|c| &c.fingerprint[..]).collect();
    let counts: Vec<i64> = first.values().map(|w| w.facts.len() as i64).collect();
    let expired_before = now_us - IDEMPOTENCY_TTL_US;
    let delete_params: [&(dyn ToSql + Sync); 2] = [&keys, &expired_before];
    let claim_params: [&(dyn ToSql + Sync); 4] = [&keys, &fingerprints, &counts, &now_us];
    let find_params: [&(dyn ToSql + Sync); 1] = [&keys];
    // Pipelined, in this order (see `record`).
    let (begin, deleted, claimed, found) = join!(
        client.batch_execute("BEGIN"),
        client.execute(st.get(DELETE_EXPIRED_KEYS), &delete_params),
        client.query(st.get(CLAIM_KEYS), &claim_params),
        client.query(st.get(FIND_KEYS), &find_params),
    );
    let rows = begin.and(deleted).and(claimed).and_then(|claimed| Ok((claimed, found?)));
    let (claimed, found) = match rows {
        Ok(rows) => rows,
        Err(e) => {
            // Nothing was committed: the transaction is open (or the connection gone).
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(Failure::not_committed(&e, client));
        }
    };
    let read = || -> Result<HashMap<&'a str, KeyState<'a>>, tokio_postgres::Error> {
        let mut states = HashMap::new();
        for row in &claimed {
            let key: &str = row.try_get(0)?;
            if let Some((&k, _)) = first.get_key_value(key) {
                states.insert(k, KeyState::Claimed);
            }
        }
        // FIND ran after CLAIM, so it also returns the rows just claimed: those stay Claimed.
        for row in &found {
            let key: &str = row.try_get(0)?;
            if let Some((&k, _)) = first.get_key_value(key) {
                if states.contains_key(k) {
                    continue;
                }
                let (fingerprint, last_seq, recorded) = (row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
                states.insert(k, KeyState::Stored { fingerprint, last_seq, recorded });
            }
        }
        Ok(states)
    };
    match read() {
        Ok(states) => Ok(states),
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(Failure::not_committed(&e, client))
        }
    }
}

/// Record the buys and views (if any), fill in the claimed keys and COMMIT, in one pipelined
/// round trip (beginning the transaction too unless `began`). Returns each counter's new total
/// when facts of its kind were recorded or keys filled.
async fn number_and_commit(
    client: &Client,
    st: &Statements,
    (recorded, recorded_views, granted): (&[&BuyRecord], &[&PageViewRecord], &[GrantedRefund<'_>]),
    ([filled, filled_views, filled_refunds], released): (&KeyFills<'_>, &[&str]),
    began: bool,
) -> Result<[Option<i64>; 3], Failure> {
    let r = Recording::new(recorded);
    let some = r.n > 0;
    let (filled_keys, filled_rel): (Vec<&str>, Vec<i64>) = filled.iter().copied().unzip();
    let v = ViewRecording::new(recorded_views);
    let some_views = v.n > 0;
    let (view_keys, view_rel): (Vec<&str>, Vec<i64>) = filled_views.iter().copied().unzip();
    let [v_rel, v_users, v_promotions, v_stamps, v_received] = &v.ids.0;
    let view_numbering: [&(dyn ToSql + Sync); 12] = [
        &v.n,
        v_rel,
        v_users,
        v_promotions,
        &v.products,
        &v.ips,
        v_stamps,
        v_received,
        &v.sources,
        &v.keys,
        &view_keys,
        &view_rel,
    ];
    let [rel, users, promotions, products, quantities] = &r.ids.0;
    let [stamps, received] = &r.times.0;
    let numbering: [&(dyn ToSql + Sync); 15] = [
        &r.n,
        &r.units,
        rel,
        users,
        promotions,
        products,
        quantities,
        &r.prices,
        &r.ips,
        stamps,
        received,
        &r.sources,
        &r.keys,
        &filled_keys,
        &filled_rel,
    ];

    let f = RefundRecording::new(granted);
    let (refund_keys, refund_rel): (Vec<&str>, Vec<i64>) = filled_refunds.iter().copied().unzip();
    let [f_rel, f_buys, f_users, f_promotions, f_products, f_units, f_cents, f_remaining, f_stamps, f_received] =
        &f.ids.0;
    let refund_numbering: [&(dyn ToSql + Sync); 16] = [
        &f.n,
        f_rel,
        f_buys,
        f_users,
        f_promotions,
        f_products,
        f_units,
        f_cents,
        f_remaining,
        &f.ips,
        f_stamps,
        f_received,
        &f.sources,
        &refund_keys,
        &refund_rel,
        &f.keys,
    ];
    let released: Vec<&str> = released.to_vec();

    // Each future sends its statement when first polled, and `join!` polls them in this order:
    // the statements reach the server in this order, without waiting for each other's answers.
    let (begin, freed, total, views_total, refunds_total, commit) = join!(
        async { if began { Ok(()) } else { client.batch_execute("BEGIN").await } },
        async { if released.is_empty() { Ok(0) } else { client.execute(st.get(RELEASE_KEYS), &[&released]).await } },
        async {
            if some || !filled.is_empty() {
                client.query_one(st.get(NUMBER_BUYS), &numbering).await.map(Some)
            } else {
                Ok(None)
            }
        },
        async {
            if some_views || !filled_views.is_empty() {
                client.query_one(st.get(NUMBER_VIEWS), &view_numbering).await.map(Some)
            } else {
                Ok(None)
            }
        },
        async {
            if f.n > 0 { client.query_one(st.get(NUMBER_REFUNDS), &refund_numbering).await.map(Some) } else { Ok(None) }
        },
        client.batch_execute("COMMIT"),
    );

    // The first failure in pipeline order decides (later statements only report the aborted
    // transaction or the same lost connection).
    let (total, total_error) = match total {
        Ok(row) => (row, None),
        Err(e) => (None, Some(e)),
    };
    let (views_total, views_error) = match views_total {
        Ok(row) => (row, None),
        Err(e) => (None, Some(e)),
    };
    let (refunds_total, refunds_error) = match refunds_total {
        Ok(row) => (row, None),
        Err(e) => (None, Some(e)),
    };
    let statements = [begin.err(), freed.err(), total_error, views_error, refunds_error];
    if let Some(e) = statements.iter().flatten().next() {
        return Err(if e.as_db_error().is_some() {
            // The server refused a statement, so the transaction was aborted and the pipelined
            // COMMIT rolled it back: nothing is recorded, and the connection is idle again.
            Failure::not_committed(e, client)
        } else {
            // The connection failed mid-pipeline: the COMMIT may have run before it did.
            let message = format!("the outcome of the commit is unknown: {}", describe(e));
            Failure { message, unknown: true, retryable: false, broken: true }
        });
    }
    if let Err(e) = commit {
        // A COMMIT refused by the server (a serialization failure on distributed databases) did
        // not commit; a connection lost while waiting for its answer leaves the outcome unknown.
        return Err(if e.as_db_error().is_some() {
            Failure::not_committed(&e, client)
        } else {
            let message = format!("the outcome of the commit is unknown: {}", describe(&e));
            Failure { message, unknown: true, retryable: false, broken: true }
        });
    }
    let read = |row: Option<tokio_postgres::Row>| match row {
        Some(row) => row.try_get(0).map(Some).map_err(|e| Failure {
            // Committed, but the answer cannot be read: the numbers handed out are unknown.
            message: format!("the commit succeeded but its sequence number could not be read: {}", describe(&e)),
            unknown: true,
            retryable: false,
            broken: false,
        }),
        None => Ok(None),
    };
    Ok([read(total)?, read(views_total)?, read(refunds_total)?])
}

/// Per kind of fact, the keys claimed by this batch's writes and each write's last relative number.
type KeyFills<'a> = [Vec<(&'a str, i64)>; 3];

/// Every parameter of the statement that records the refunds, gathered before anything is sent.
struct RefundRecording<'a> {
    n: i64,
    /// Relative number (1..=n), buy, user, promotion, product, units, cents, remaining units,
    /// timestamp, receive time.
    ids: Columns<10>,
    ips: Vec<&'a str>,
    sources: Vec<&'a str>,
    keys: Vec<Option<&'a str>>,
}

impl<'a> RefundRecording<'a> {
    fn new(granted: &[GrantedRefund<'a>]) -> RefundRecording<'a> {
        let mut r = RefundRecording {
            n: granted.len() as i64,
            ids: Columns::default(),
            ips: Vec::new(),
            sources: Vec::new(),
            keys: Vec::new(),
        };
        for (i, g) in granted.iter().enumerate() {
            let record = g.record;
            r.ids.push([
                i as i64 + 1,
                record.refund.buy_count,
                g.user_id,
                g.promotion_id,
                g.product_id,
                g.units,
                g.cents,
                g.remaining,
                record.timestamp_us,
                record.received_at_us,
            ]);
            r.ips.push(record.ip_address.as_str());
            r.sources.push(record.timestamp_source.as_str());
            r.keys.push(record.idempotency_key.as_deref());
        }
        r
    }
}

/// Every parameter of the statement that records the views, gathered before anything is sent.
struct ViewRecording<'a> {
    n: i64,
    /// Relative number (1..=n), user, promotion, timestamp, receive time.
    ids: Columns<5>,
    products: Vec<Option<i64>>,
    ips: Vec<&'a str>,
    sources: Vec<&'a str>,
    keys: Vec<Option<&'a str>>,
}

impl<'a> ViewRecording<'a> {
    fn new(recorded: &[&'a PageViewRecord]) -> ViewRecording<'a> {
        let n = recorded.len();
        let mut r = ViewRecording {
            n: n as i64,
            ids: Columns::default(),
            products: Vec::with_capacity(n),
            ips: Vec::with_capacity(n),
            sources: Vec::with_capacity(n),
            keys: Vec::with_capacity(n),
        };
        for (i, record) in recorded.iter().enumerate() {
            let v = &record.view;
            r.ids.push([i as i64 + 1, v.user_id, v.promotion_id, record.timestamp_us, record.received_at_us]);
            r.products.push(v.product_id);
            r.ips.push(record.ip_address.as_str());
            r.sources.push(record.timestamp_source.as_str());
            r.keys.push(record.idempotency_key.as_deref());
        }
        r
    }
}
