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

/// Deletes one chunk of expired keys.
const PRUNE_KEYS: &str = "
    DELETE FROM idempotency WHERE key IN (SELECT key FROM idempotency WHERE created_at_us < $1 LIMIT $2)";

/// Every statement of the write path, prepared once per connection.
fn write_statements() -> [&'static str; 6] {
    [DELETE_EXPIRED_KEYS, CLAIM_KEYS, FIND_KEYS, NUMBER_BUYS, NUMBER_VIEWS, PRUNE_KEYS]
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
#[derive(Clone, Copy)]
enum Kind {
    Buys = 0,
    Views = 1,
}

/// An outcome whose sequence numbers are relative to the block (of its kind) not yet taken.
enum Pending {
    Recorded { kind: Kind, rel_last: i64, recorded: usize },
    Replayed { kind: Kind, rel_last: i64, recorded: usize },
    Final(Outcome),
}

/// Run one transaction: claim keys (first round trip, only with keys), decide outcomes, then
/// record everything and COMMIT (one pipelined round trip).
async fn run_transaction(
    client: &Client,
    st: &Statements,
    writes: &[Submission],
    now_us: i64,
) -> Result<Vec<Outcome>, Failure> {
    let mut keys = HashMap::new();
    let began = writes.iter().any(|w| w.idempotency.is_some());
    if began {
        keys = claim_keys(client, st, writes, now_us).await?;
    }

    // Decide every outcome, numbering recorded buys (and views) 1, 2, … within the batch.
    let mut rel = [0i64; 2];
    let mut pending = Vec::with_capacity(writes.len());
    let mut recorded = Vec::new();
    let mut recorded_views = Vec::new();
    let mut filled: [Vec<(&str, i64)>; 2] = [Vec::new(), Vec::new()];
    for write in writes {
        let kind = match write.facts {
            Facts::Buys(_) => Kind::Buys,
            Facts::Views(_) => Kind::Views,
        };
        let n = write.facts.len();
        if let Some(claim) = &write.idempotency {
            match keys.get_mut(claim.key.as_str()) {
                Some(KeyState::Stored { fingerprint, last_seq, recorded }) => {
                    pending.push(Pending::Final(if fingerprint[..] == claim.fingerprint[..] {
                        Outcome::Replayed { last_seq: *last_seq, recorded: *recorded as usize }
                    } else {
                        Outcome::KeyMismatch
                    }));
                    continue;
                }
                Some(KeyState::Used { fingerprint, kind, rel_last, recorded }) => {
                    pending.push(if **fingerprint == claim.fingerprint {
                        Pending::Replayed { kind: *kind, rel_last: *rel_last, recorded: *recorded }
                    } else {
                        Pending::Final(Outcome::KeyMismatch)
                    });
                    continue;
                }
                Some(state @ KeyState::Claimed) => {
                    let rel_last = rel[kind as usize] + n as i64;
                    *state = KeyState::Used { fingerprint: &claim.fingerprint, kind, rel_last, recorded: n };
                    filled[kind as usize].push((claim.key.as_str(), rel_last));
                }
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
        rel[kind as usize] += n as i64;
        match &write.facts {
            Facts::Buys(buys) => recorded.extend(buys),
            Facts::Views(views) => recorded_views.extend(views),
        }
        pending.push(Pending::Recorded { kind, rel_last: rel[kind as usize], recorded: n });
    }

    let [buys_total, views_total] = number_and_commit(client, st, (&recorded, &recorded_views), &filled, began).await?;
    let base = [
        buys_total.map_or(0, |total| total - recorded.len() as i64),
        views_total.map_or(0, |total| total - recorded_views.len() as i64),
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
            Pending::Final(outcome) => outcome,
        })
        .collect())
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
    (recorded, recorded_views): (&[&BuyRecord], &[&PageViewRecord]),
    [filled, filled_views]: &[Vec<(&str, i64)>; 2],
    began: bool,
) -> Result<[Option<i64>; 2], Failure> {
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

    // Each future sends its statement when first polled, and `join!` polls them in this order:
    // the statements reach the server in this order, without waiting for each other's answers.
    let (begin, total, views_total, commit) = join!(
        async { if began { Ok(()) } else { client.batch_execute("BEGIN").await } },
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
    let statements = [begin.err(), total_error, views_error];
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
    Ok([read(total)?, read(views_total)?])
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
