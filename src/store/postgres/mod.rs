//! The shared log: PostgreSQL, so that several replicas behind a load balancer act as one
//! service (`docs/reference.md` §7). The same facts and the same transaction as the SQLite log;
//! only the concurrency differs, since other processes write too (see `commit.rs` for how
//! sequence numbers and idempotency keys stay global). Each replica's views follow every
//! replica's facts by sequence number (`store::views`).
//!
//! Connections: the writer thread owns one connection (one transaction at a time, so one is all
//! it needs; two writer connections per process were measured slower, as they split the
//! batches), driven through `tokio-postgres` so that a commit's statements are pipelined (see
//! `commit.rs`); reads take one from a small pool of their own, opened on demand, at most
//! [`MAX_READERS`], with the blocking `postgres` crate, as the [`Log`] trait is blocking: the
//! writer is a dedicated thread and reads run on tokio's blocking pool. Both drive each
//! connection with a small runtime of its own, which must never run (nor be dropped) on an async
//! worker; hence the threads in [`PostgresStore::open`] and in `Drop`.
//!
//! Failures: a store that is down must answer quickly and never hang a request (`docs/reference.md` §6), so every
//! connection has a connect timeout, a statement timeout and TCP keepalives (all overridable in
//! the URL), the writer also gives up on a commit after 4 s whatever the server does, and a
//! connection that failed is dropped, not returned to the pool: when PostgreSQL comes back, the
//! next call opens a fresh one by itself (a read that meets a pooled connection killed by a
//! restart runs again on a fresh one; so does a commit, when it is known to have recorded
//! nothing). A commit whose outcome is unknown (the connection failed once COMMIT was sent) is
//! reported as an error, never as Ok, and never retried.

mod commit;
mod read;
mod schema;

use std::sync::Mutex;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, NoTls};

use commit::{CommitConnection, Failure};
use read::ReadConn;

use super::pool::Pool;
use super::{ExportFilter, ExportRow, OpenError, Outcome, StoreError, StoreErrorKind, Submission};
use crate::lock::lock;
use crate::store::log::{Fact, FactLog, Log, Position, RefundFact, Tail, ViewFact};

/// How long opening a connection may take before the call fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a statement may run (or wait for a lock) on the server: below the HTTP layer's 4 s.
const STATEMENT_TIMEOUT: &str = "3s";
/// A replica that stalls inside a transaction (paused, partitioned) would hold the counter row
/// and stop every other replica; PostgreSQL ends such a session after this long.
const IDLE_IN_TRANSACTION_TIMEOUT: &str = "5s";
/// Keepalives notice a dead server or network on an idle-looking socket within about 4 s...
const KEEPALIVES_IDLE: Duration = Duration::from_secs(2);
const KEEPALIVES_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVES_RETRIES: u32 = 2;
/// ...and this bounds how long sent data may stay unacknowledged (Linux `TCP_USER_TIMEOUT`).
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(4);
/// Read connections per process; the writer has one more. With PostgreSQL's default of 100
/// connections, that leaves room for five replicas.
pub const MAX_READERS: usize = 16;
/// Attempts at a commit that recorded nothing and failed with a transient error.
const COMMIT_ATTEMPTS: u32 = 3;

/// PostgreSQL as the shared [`Log`] of facts.
pub struct PostgresStore {
    /// For the writer (`tokio-postgres`).
    config: tokio_postgres::Config,
    /// The same, for readers (`postgres`).
    read_config: postgres::Config,
    /// Run on every new connection: the timeouts the URL did not set.
    session: String,
    /// The writer's connection; `None` until (re)opened by the next commit.
    writer: Mutex<Option<CommitConnection>>,
    readers: Pool<ReadConn>,
}

/// One line for an error: PostgreSQL's own message when the server sent one.
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("PostgreSQL {}: {}", db.code().code(), db.message()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("PostgreSQL: {e}: {cause}"),
            None => format!("PostgreSQL: {e}"),
        },
    }
}

/// A PostgreSQL failure as a store error: a full disk (SQLSTATE 53100) is told apart.
fn unavailable(e: &postgres::Error) -> StoreError {
    let kind =
        if e.code() == Some(&SqlState::DISK_FULL) { StoreErrorKind::DiskFull } else { StoreErrorKind::Unavailable };
    StoreError::new(kind, describe(e))
}

/// Whether the connection is unusable after `e` (closed, I/O failure, server shutting down); a
/// statement error such as a timeout leaves it usable.
fn is_broken(e: &postgres::Error, client_closed: bool) -> bool {
    if client_closed || e.is_closed() {
        return true;
    }
    match e.as_db_error() {
        None => true,
        Some(db) => {
            let code = db.code().code();
            code.starts_with("08") || code.starts_with("57P")
        }
    }
}

/// Errors after which the same transaction may succeed when run again.
fn is_retryable(e: &postgres::Error) -> bool {
    matches!(e.code(), Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED)
}

/// The URL's configuration plus our timeouts where it sets none. TLS is not built in: use a
/// local network or a TLS-terminating proxy such as pgbouncer.
fn configure(url: &str) -> Result<(tokio_postgres::Config, String), String> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e: postgres::Error| format!("invalid URL: {e}"))?;
    let given = |name: &str| url.contains(name);
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if !given("keepalives_idle") {
        config.keepalives_idle(KEEPALIVES_IDLE);
    }
    if config.get_keepalives_interval().is_none() {
        config.keepalives_interval(KEEPALIVES_INTERVAL);
    }
    if config.get_keepalives_retries().is_none() {
        config.keepalives_retries(KEEPALIVES_RETRIES);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("buy-tracker");
    }
    let options = config.get_options().unwrap_or_default();
    // "A 200 means on disk" must not depend on the server's defaults: a role or database set to
    // `synchronous_commit = off` would acknowledge commits before their WAL is flushed. Only
    // `off` is raised; `local`, `remote_write`, `remote_apply` already flush locally, and the
    // stronger ones are kept.
    let mut session = String::from(
        "SELECT set_config('synchronous_commit', 'on', false) WHERE current_setting('synchronous_commit') = 'off';",
    );
    if !options.contains("statement_timeout") {
        session.push_str(&format!("SET statement_timeout = '{STATEMENT_TIMEOUT}';"));
    }
    if !options.contains("idle_in_transaction_session_timeout") {
        session.push_str(&format!("SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION_TIMEOUT}';"));
    }
    Ok((config, session))
}

/// `config` with the server's notices logged at debug level. The blocking client logs them at
/// info by default, and the migrations' `CREATE … IF NOT EXISTS` made every start print
/// `relation "schema_version" already exists, skipping` among the service's own lines.
fn quiet_notices(mut config: postgres::Config) -> postgres::Config {
    config.notice_callback(|notice| {
        tracing::debug!(severity = notice.severity(), message = notice.message(), "PostgreSQL notice");
    });
    config
}

impl PostgresStore {
    /// Connect, bring the schema up to date (under an advisory lock, so replicas may start
    /// together), and prepare the writer's connection. The error is one line, without the URL
    /// (which may hold a password).
    pub fn open(url: &str) -> Result<PostgresStore, OpenError> {
        let what = "PostgreSQL store";
        let (config, session) = configure(url).map_err(|e| OpenError::new(what, e))?;
        let store = PostgresStore {
            read_config: quiet_notices(postgres::Config::from(config.clone())),
            config,
            session,
            writer: Mutex::new(None),
            readers: Pool::new(MAX_READERS, "PostgreSQL"),
        };
        // `open` may be called on an async worker, where the blocking client must not run.
        let writer = std::thread::scope(|scope| {
            scope
                .spawn(|| -> Result<CommitConnection, String> {
                    // Migrations get a connection of their own, closed afterwards, so that their
                    // session settings (a longer statement timeout) end with it.
                    let mut migrator = store.read_config.connect(NoTls).map_err(|e| describe(&e))?;
                    schema::migrate(&mut migrator)?;
                    drop(migrator);
                    store.connect_writer()
                })
                .join()
        })
        .map_err(|_| OpenError::new(what, "the connecting thread panicked"))?
        .map_err(|e| OpenError::new(what, e))?;
        *lock(&store.writer) = Some(writer);
        Ok(store)
    }

    /// A new read connection with the session settings applied.
    fn connect(&self) -> Result<Client, postgres::Error> {
        let mut client = self.read_config.connect(NoTls)?;
        client.batch_execute(&self.session)?;
        Ok(client)
    }

    #[cfg(test)]
    fn with_open_writer<T>(&self, f: impl FnOnce(&mut CommitConnection) -> T) -> T {
        let mut held = lock(&self.writer);
        let conn = held.get_or_insert_with(|| self.connect_writer().unwrap());
        f(conn)
    }

    fn connect_writer(&self) -> Result<CommitConnection, String> {
        CommitConnection::connect(&self.config, &self.session)
    }

    /// Run `f` on the writer's connection, opened if there is none. A connection that `f`
    /// reports broken is dropped; the next call opens a fresh one.
    fn with_writer<T>(
        &self,
        held: &mut Option<CommitConnection>,
        f: impl FnOnce(&mut CommitConnection) -> Result<T, Failure>,
    ) -> Result<T, (Failure, bool)> {
        let (mut conn, pooled) = match held.take().filter(|c| !c.is_closed()) {
            Some(conn) => (conn, true),
            None => match self.connect_writer() {
                Ok(conn) => (conn, false),
                Err(message) => {
                    return Err((Failure { message, unknown: false, retryable: false, broken: true }, false));
                }
            },
        };
        let result = f(&mut conn);
        if !matches!(&result, Err(failure) if failure.broken) {
            *held = Some(conn);
        }
        result.map_err(|failure| (failure, pooled))
    }

    /// A read connection and whether it was pooled (a pooled one may have gone stale).
    fn acquire(&self) -> Result<(ReadConn, bool), StoreError> {
        self.readers.acquire(|| self.connect().map(ReadConn::new).map_err(|e| unavailable(&e)))
    }

    /// Run `f` on a read connection. A pooled connection that turns out broken (PostgreSQL was
    /// restarted since it was last used) is dropped with every other idle one, which are as
    /// stale, and `f` runs once more on a fresh connection: reads are safe to repeat.
    fn read<T>(&self, mut f: impl FnMut(&mut ReadConn) -> Result<T, postgres::Error>) -> Result<T, StoreError> {
        let (mut conn, mut pooled) = self.acquire()?;
        loop {
            match f(&mut conn) {
                Ok(value) => {
                    self.readers.give_back(conn);
                    return Ok(value);
                }
                Err(e) if is_broken(&e, conn.client.is_closed()) => {
                    drop(conn);
                    self.readers.closed(1);
                    if !pooled {
                        return Err(unavailable(&e));
                    }
                    tracing::warn!(error = %describe(&e), "PostgreSQL read connection lost; reconnecting");
                    drop(self.readers.take_idle());
                    (conn, pooled) = self.acquire()?;
                }
                Err(e) => {
                    self.readers.give_back(conn);
                    return Err(unavailable(&e));
                }
            }
        }
    }
}

impl Log for PostgresStore {
    fn commit(&self, writes: &[Submission], now_us: i64) -> Result<Vec<Outcome>, StoreError> {
        let mut held = lock(&self.writer);
        let mut attempt = 1;
        loop {
            let (failure, pooled) = match self.with_writer(&mut held, |conn| conn.transact(writes, now_us)) {
                Ok(outcomes) => return Ok(outcomes),
                Err(failed) => failed,
            };
            // Only a transaction known to have recorded nothing runs again: after a serialization
            // failure or deadlock, or on a fresh connection when the pooled one had died.
            let again =
                !failure.unknown && failure.retryable && (pooled || !failure.broken) && attempt < COMMIT_ATTEMPTS;
            if !again {
                // A commit whose outcome is unknown may have recorded its buys: its requests are
                // told to retry with their Idempotency-Key, which is never counted twice.
                let kind = if failure.unknown { StoreErrorKind::OutcomeUnknown } else { StoreErrorKind::Unavailable };
                return Err(StoreError::new(kind, failure.message));
            }
            tracing::warn!(error = %failure.message, attempt, "PostgreSQL commit recorded nothing; retrying");
            attempt += 1;
        }
    }

    fn export_page(
        &self,
        filter: &ExportFilter,
        after: i64,
        up_to: i64,
        limit: usize,
    ) -> Result<Vec<ExportRow>, StoreError> {
        self.read(|conn| read::export_page(conn, filter, after, up_to, limit))
    }

    fn prune_idempotency(&self, before_us: i64, limit: usize) -> Result<usize, StoreError> {
        // Chunks keep each statement short; other replicas may prune the same keys meanwhile,
        // which only makes a chunk smaller.
        let mut held = lock(&self.writer);
        self.with_writer(&mut held, |conn| conn.prune(before_us, limit as i64))
            .map_err(|(failure, _)| StoreError::unavailable(failure.message))
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.read(read::ping)
    }
}

impl FactLog for PostgresStore {
    fn tail(&self, after: i64, since_us: i64, promotion_id: Option<i64>) -> Result<Tail, StoreError> {
        self.read(|conn| read::tail(conn, after, since_us, promotion_id))
    }

    fn store_id(&self) -> Result<String, StoreError> {
        self.read(read::store_id)
    }

    /// The shared counter: every replica's facts up to it are committed and visible.
    fn last_seq(&self) -> Result<i64, StoreError> {
        self.read(read::last_seq)
    }

    fn facts_in(&self, after: i64, up_to: i64, promotion_id: Option<i64>) -> Result<Vec<Fact>, StoreError> {
        self.read(|conn| read::facts_in(conn, after, up_to, promotion_id))
    }

    fn facts_after(&self, after: i64, limit: usize) -> Result<Vec<Fact>, StoreError> {
        self.read(|conn| read::facts_after(conn, after, limit))
    }

    fn between(
        &self,
        from_us: i64,
        to_us: i64,
        promotion_id: Option<i64>,
        up_to: i64,
    ) -> Result<crate::store::log::Slice, StoreError> {
        self.read(|conn| read::between(conn, from_us, to_us, promotion_id, up_to))
    }

    fn between_by_promotion(&self, from_us: i64, to_us: i64, up_to: i64) -> Result<Vec<(i64, i64, i64)>, StoreError> {
        self.read(|conn| read::between_by_promotion(conn, from_us, to_us, up_to))
    }

    fn last_view_seq(&self) -> Result<i64, StoreError> {
        Ok(self.position()?.views)
    }

    fn last_refund_seq(&self) -> Result<i64, StoreError> {
        Ok(self.position()?.refunds)
    }

    /// Every shared counter, in one round trip.
    fn position(&self) -> Result<Position, StoreError> {
        self.read(read::position)
    }

    fn refunds_in(
        &self,
        after: i64,
        up_to: i64,
        promotion_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<RefundFact>, StoreError> {
        self.read(|conn| read::refunds_in(conn, after, up_to, promotion_id, limit))
    }

    fn views_after(&self, after: i64, limit: usize) -> Result<Vec<ViewFact>, StoreError> {
        self.read(|conn| read::views_after(conn, after, limit))
    }

    fn views_in(&self, after: i64, up_to: i64, promotion_id: Option<i64>) -> Result<Vec<ViewFact>, StoreError> {
        self.read(|conn| read::views_in(conn, after, up_to, promotion_id))
    }

    fn views_between(
        &self,
        from_us: i64,
        to_us: i64,
        promotion_id: Option<i64>,
        up_to: i64,
    ) -> Result<i64, StoreError> {
        self.read(|conn| read::views_between(conn, from_us, to_us, promotion_id, up_to))
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        let writer = lock(&self.writer).take();
        let idle = self.readers.take_idle();
        if writer.is_none() && idle.is_empty() {
            return;
        }
        // Closing a connection runs its runtime, which panics on an async worker, where the last
        // reference to the store may well be dropped: close them on a thread of their own.
        let closing = std::thread::Builder::new().name("postgres-close".into()).spawn(move || drop((writer, idle)));
        if let Err(e) = closing {
            tracing::warn!(error = %e, "could not start a thread to close PostgreSQL connections");
        }
    }
}

/// Store-level tests against a real server: they need `BUY_TRACKER_TEST_POSTGRES_URL` (and are
/// skipped without it). The main one runs the same writes through this log and the SQLite log,
/// each with views following it, and requires identical outcomes and identical answers to every
/// read.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::BuyRecord;
    use crate::request_time::TimestampSource;
    use crate::store::logged::LoggedStore;
    use crate::store::sqlite::SqliteStore;
    use crate::store::views::Views;
    use crate::store::views::deltas::US;
    use crate::store::{Facts, PromotionOrder};
    use crate::store::{IDEMPOTENCY_TTL_US, IdempotencyClaim, Store};
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    /// A fresh database, dropped at the end of the test.
    struct TestDatabase {
        server: String,
        name: String,
        url: String,
    }

    impl TestDatabase {
        fn create() -> Option<TestDatabase> {
            let Ok(server) = std::env::var("BUY_TRACKER_TEST_POSTGRES_URL") else {
                if std::env::var("BUY_TRACKER_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
                    panic!("BUY_TRACKER_REQUIRE_POSTGRES=1 but BUY_TRACKER_TEST_POSTGRES_URL is not set");
                }
                println!("SKIP postgres: set BUY_TRACKER_TEST_POSTGRES_URL");
                return None;
            };
            let name = format!("bt_test_{}", uuid::Uuid::new_v4().simple());
            let mut client = Client::connect(&server, NoTls).expect("test server");
            client.batch_execute(&format!("CREATE DATABASE {name}")).expect("CREATE DATABASE");
            let (base, query) = server.split_once('?').map_or((server.as_str(), ""), |(b, q)| (b, q));
            let authority_end = base.find("://").map_or(0, |i| i + 3);
            let base = base[authority_end..].find('/').map_or(base, |i| &base[..authority_end + i]);
            let url = if query.is_empty() { format!("{base}/{name}") } else { format!("{base}/{name}?{query}") };
            Some(TestDatabase { server, name, url })
        }
    }

    impl Drop for TestDatabase {
        fn drop(&mut self) {
            if let Ok(mut client) = Client::connect(&self.server, NoTls) {
                let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
            }
        }
    }

    /// A test record whose other stored fields vary too (both stores must store them alike).
    fn record(user: i64, promotion: i64, product: i64, quantity: i64, price: Option<i64>, at_us: i64) -> BuyRecord {
        let mut record = BuyRecord::test(user, promotion, product, quantity, price, at_us);
        record.ip_address = format!("10.0.0.{}", user % 250);
        record.received_at_us = at_us + 7;
        if user % 2 == 1 {
            record.timestamp_source = TimestampSource::Header("x-timestamp");
        }
        record
    }

    fn keyed(mut buys: Vec<BuyRecord>, key: &str, fingerprint: u8) -> Submission {
        for buy in &mut buys {
            buy.idempotency_key = Some(key.to_string());
        }
        Submission {
            facts: Facts::Buys(buys),
            idempotency: Some(IdempotencyClaim { key: key.to_string(), fingerprint: [fingerprint; 32] }),
        }
    }

    /// Batches mixing plain writes, new keys, keys repeated inside a batch (same and other
    /// body), keys from an earlier batch, and an expired key.
    fn batches(base: i64) -> Vec<(Vec<Submission>, i64)> {
        let mut out = Vec::new();
        let mut i = 0i64;
        for batch in 0..12i64 {
            let mut writes = Vec::new();
            for w in 0..25i64 {
                i += 1;
                let at = base + (i * 37_123_457) % (5 * 3600 * US) + i;
                let buys: Vec<BuyRecord> = (0..1 + i % 3)
                    .map(|j| {
                        record(i % 40 + j, i % 6, (i + j) % 13, 1 + (i + j) % 4, (i % 5 != 0).then_some(100 + i), at)
                    })
                    .collect();
                writes.push(match w % 5 {
                    0 => keyed(buys, &format!("k{batch}-{w}"), 1),
                    1 => keyed(buys, &format!("k{batch}-{}", w - 1), 1), // same key, same body: replay
                    2 => keyed(buys, &format!("k{batch}-{}", w - 2), 2), // same key, other body: refused
                    3 if batch > 0 => keyed(buys, &format!("k{}-0", batch - 1), 1), // earlier batch
                    _ => Submission { facts: Facts::Buys(buys), idempotency: None },
                });
            }
            out.push((writes, base + batch * US));
        }
        // The first batch's keys, a day later: expired, so recorded again.
        let late = base + IDEMPOTENCY_TTL_US + 3600 * US;
        out.push((vec![keyed(vec![record(1, 1, 1, 1, None, late)], "k0-0", 9)], late));
        out
    }

    /// Batches of buys mostly in time order from `base`, one in five late by up to two hours, a
    /// batch spanning seconds, minutes and hours, 4 promotions; returns them and the last time.
    fn late_and_out_of_order(seed: u64, base: i64, batches: usize) -> (Vec<Vec<Submission>>, i64) {
        let mut state = seed;
        let mut next = |n: u64| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % n
        };
        let mut clock = base;
        let out = (0..batches)
            .map(|_| {
                (0..1 + next(30))
                    .map(|_| {
                        clock += next(40_000) as i64 * 1000; // 0–40 s on
                        let mut at = clock;
                        if next(5) == 0 {
                            at -= next(2 * 3600) as i64 * US + next(US as u64) as i64;
                        }
                        let (user, promotion, product) = (next(100) as i64, next(4) as i64, next(5) as i64);
                        let price = (user % 3 != 0).then_some(user * 10);
                        let buys = vec![record(user, promotion, product, 1 + next(3) as i64, price, at)];
                        Submission { facts: Facts::Buys(buys), idempotency: None }
                    })
                    .collect()
            })
            .collect();
        (out, clock)
    }

    /// `log` with views (in a temporary file) following it.
    fn with_views(log: impl Log) -> LoggedStore {
        LoggedStore::start(Arc::new(log), Views::open(None).unwrap()).unwrap()
    }

    /// A PostgreSQL log on a fresh database and an empty SQLite log to compare it with, each with
    /// views following it (`None` when no server is configured: the test is skipped). Keep the
    /// database until the end.
    fn beside_sqlite() -> Option<(TestDatabase, LoggedStore, LoggedStore)> {
        let database = TestDatabase::create()?;
        let pg = with_views(PostgresStore::open(&database.url).unwrap());
        Some((database, pg, with_views(SqliteStore::open_memory().unwrap())))
    }

    /// Every window, promotion page, promotion's stats and series from `base - 3 h` to `to_us`
    /// answers in `pg` as in `sqlite`.
    fn assert_same_windows(pg: &dyn Store, sqlite: &dyn Store, base: i64, to_us: i64) {
        let span = (to_us - base + 3 * 3600 * US) as u64;
        let cutoffs: Vec<i64> = (0..300u64).map(|i| base - 3 * 3600 * US + (i * 7_919_007_331 % span) as i64).collect();
        let (from, to) = (base / US - 3 * 3600, to_us / US);
        let series = |g: i64| (from - from.rem_euclid(g), to - to.rem_euclid(g));
        crate::store::assert_same_answers(pg, sqlite, (&cutoffs, to_us), &[0, 1, 2, 3], series(60), series(3600));
    }

    /// Late and out-of-order buys, in batches across seconds, minutes and hours: every window of
    /// the views over the PostgreSQL log (whose edges read its timestamp index) answers as over
    /// the SQLite log.
    #[test]
    fn late_and_out_of_order_buys_answer_as_the_sqlite_store() {
        let Some((_database, pg, sqlite)) = beside_sqlite() else { return };
        let base = 1_750_000_000 * US;
        let (batches, last) = late_and_out_of_order(12_345, base, 150);
        let stamps: Vec<i64> = batches
            .iter()
            .flatten()
            .map(|w| match &w.facts {
                Facts::Buys(b) => b[0].timestamp_us,
                Facts::Views(_) | Facts::Refund(_) => unreachable!(),
            })
            .collect();
        let out_of_order = stamps.windows(2).filter(|pair| pair[1] < pair[0]).count();
        assert!(out_of_order > 200, "{out_of_order} buys out of order");
        assert!(last - base > 10 * 3600 * US, "the buys span more than ten hours");
        for writes in &batches {
            assert_eq!(pg.commit(writes, last).unwrap(), sqlite.commit(writes, last).unwrap());
        }
        assert_same_windows(&pg, &sqlite, base, last);
    }

    /// Two replicas of one database take turns committing buys and views (in mixed
    /// transactions): each one's funnel (views, unique and converted viewers, recent views) equals
    /// a recount from every replica's facts.
    #[test]
    fn the_funnel_of_two_replicas_matches_a_recount() {
        let Some(database) = TestDatabase::create() else { return };
        let one = with_views(PostgresStore::open(&database.url).unwrap());
        let two = with_views(PostgresStore::open(&database.url).unwrap());
        let settle = || {
            one.barrier().unwrap();
            two.barrier().unwrap();
        };
        crate::store::assert_funnel_matches_a_recount(&[&one, &two], &settle, 1_750_000_000 * US);
    }

    /// Two replicas commit at once, late and out-of-order buys into the same promotions: the
    /// views of the shared log count every buy once, as SQLite does with all their buys.
    #[test]
    fn two_writers_at_once_count_every_buy_once() {
        let Some(database) = TestDatabase::create() else { return };
        let base = 1_750_000_000 * US;
        let stores = [PostgresStore::open(&database.url).unwrap(), PostgresStore::open(&database.url).unwrap()];
        let work: Vec<_> = [1u64, 2].map(|seed| late_and_out_of_order(seed, base, 150)).into();
        std::thread::scope(|scope| {
            for (store, (batches, last)) in stores.iter().zip(&work) {
                scope.spawn(move || {
                    for writes in batches {
                        store.commit(writes, *last).unwrap();
                    }
                });
            }
        });
        // The reference gets the same buys in the shared log's order: which buy of a customer
        // came first (new customers) depends on how the two writers interleaved.
        let sqlite = with_views(SqliteStore::open_memory().unwrap());
        let last = work.iter().map(|(_, last)| *last).max().unwrap();
        let shared = stores[0].facts_after(0, 1_000_000).unwrap();
        assert_eq!(shared.len(), work.iter().map(|(b, _)| b.iter().flatten().count()).sum::<usize>());
        for chunk in shared.chunks(40) {
            let buys = chunk
                .iter()
                .map(|f| {
                    let mut r = record(0, 0, 0, 1, None, f.timestamp_us);
                    r.buy = f.buy.clone();
                    r
                })
                .collect();
            sqlite.commit(&[Submission { facts: Facts::Buys(buys), idempotency: None }], last).unwrap();
        }
        let pg = with_views(PostgresStore::open(&database.url).unwrap());
        assert_same_windows(&pg, &sqlite, base, last);
    }

    /// The writer checks a connection that has been idle before committing on it; that check
    /// runs on the writer's own runtime (it once panicked, outside any runtime).
    #[test]
    fn commits_after_the_writer_connection_was_idle() {
        let Some(database) = TestDatabase::create() else { return };
        let pg = PostgresStore::open(&database.url).unwrap();
        let write =
            || Submission { facts: Facts::Buys(vec![record(1, 2, 3, 1, None, 1_750_000_000 * US)]), idempotency: None };
        assert_eq!(pg.commit(&[write()], 0).unwrap(), vec![Outcome::Recorded { last_seq: 1, recorded: 1 }]);
        std::thread::sleep(commit::CHECK_AFTER_IDLE + Duration::from_millis(200));
        assert_eq!(pg.commit(&[write()], 0).unwrap(), vec![Outcome::Recorded { last_seq: 2, recorded: 1 }]);
        std::thread::sleep(commit::CHECK_AFTER_IDLE + Duration::from_millis(200));
        assert_eq!(pg.prune_idempotency(0, 10_000).unwrap(), 0);
    }

    #[test]
    fn answers_exactly_as_the_sqlite_store() {
        let Some((_database, pg, sqlite)) = beside_sqlite() else { return };
        let base = 1_750_000_000 * US;
        let mut seen = Vec::new();
        for (writes, now) in batches(base) {
            let outcomes = pg.commit(&writes, now).unwrap();
            assert_eq!(outcomes, sqlite.commit(&writes, now).unwrap());
            seen.extend(outcomes);
        }
        // Every kind of outcome was exercised, and the expired key was recorded anew.
        assert!(seen.iter().any(|o| matches!(o, Outcome::Replayed { .. })));
        assert!(seen.contains(&Outcome::KeyMismatch));
        assert!(matches!(seen.last(), Some(Outcome::Recorded { recorded: 1, .. })));
        let mut cutoffs: Vec<i64> = (0..200).map(|i| base + i * 91_234_567 % (6 * 3600 * US)).collect();
        cutoffs.extend([base - 1, base, base + 60 * US, base + 3600 * US, base + 10 * 3600 * US, i64::MIN / 2]);
        for &cutoff in &cutoffs {
            assert_eq!(pg.counts(cutoff, None).unwrap(), sqlite.counts(cutoff, None).unwrap(), "cutoff {cutoff}");
            for p in [0, 3, 5, 77] {
                assert_eq!(pg.counts(cutoff, Some(p)).unwrap(), sqlite.counts(cutoff, Some(p)).unwrap());
            }
        }
        for &cutoff in cutoffs.iter().step_by(20) {
            for (limit, offset) in [(50, 0), (2, 1), (1000, 5), (3, 100)] {
                assert_eq!(
                    pg.promotions(cutoff, PromotionOrder::Buys, limit, offset).unwrap(),
                    sqlite.promotions(cutoff, PromotionOrder::Buys, limit, offset).unwrap()
                );
            }
            for p in [0, 1, 2, 3, 4, 5, 77] {
                let windows = (cutoff, cutoff - 3600 * US);
                assert_eq!(pg.promotion_stats(p, windows).unwrap(), sqlite.promotion_stats(p, windows).unwrap());
            }
        }
        let (from, to) = (base / US - 3600, base / US + 7 * 3600);
        for g in [60, 3600] {
            for p in [None, Some(2), Some(77)] {
                assert_eq!(pg.timeseries(g, from, to, p).unwrap(), sqlite.timeseries(g, from, to, p).unwrap());
            }
        }
        let total = sqlite.counts(0, None).unwrap().total_buys;
        let filters = [
            ExportFilter::default(),
            ExportFilter {
                promotion_id: Some(4),
                since_us: Some(base + 3600 * US),
                until_us: None,
                ..ExportFilter::default()
            },
            ExportFilter {
                promotion_id: None,
                since_us: None,
                until_us: Some(base + 2 * 3600 * US),
                ..ExportFilter::default()
            },
        ];
        for filter in &filters {
            for (after, limit) in [(0, 1000), (10, 7), (total - 3, 100)] {
                assert_eq!(
                    pg.export_page(filter, after, total, limit).unwrap(),
                    sqlite.export_page(filter, after, total, limit).unwrap()
                );
            }
        }
        assert_eq!(
            pg.prune_idempotency(base + 5 * US, 10_000).unwrap(),
            sqlite.prune_idempotency(base + 5 * US, 10_000).unwrap()
        );
        pg.ping().unwrap();
    }

    #[test]
    fn sequence_numbers_continue_across_reopen_and_migrations_run_once() {
        let Some(database) = TestDatabase::create() else { return };
        let one =
            Submission { facts: Facts::Buys(vec![record(1, 2, 3, 1, None, 1_750_000_000 * US); 3]), idempotency: None };
        {
            let store = PostgresStore::open(&database.url).unwrap();
            let outcomes = store.commit(std::slice::from_ref(&one), 0).unwrap();
            assert_eq!(outcomes, vec![Outcome::Recorded { last_seq: 3, recorded: 3 }]);
        }
        let store = PostgresStore::open(&database.url).unwrap();
        assert_eq!(store.commit(&[one], 0).unwrap(), vec![Outcome::Recorded { last_seq: 6, recorded: 3 }]);
        assert_eq!(store.last_seq().unwrap(), 6);
        let mut client = Client::connect(&database.url, NoTls).unwrap();
        let versions: i64 = client.query_one("SELECT count(*) FROM schema_version", &[]).unwrap().get(0);
        assert_eq!(versions, schema::MIGRATIONS.len() as i64);
    }

    /// A store written by schema version 1 (aggregates in the write transaction) upgrades to the
    /// log: its buys stay, the aggregate tables go, and views built from the buys answer for the
    /// old buys and the new ones alike.
    #[test]
    fn a_version_1_store_upgrades_to_the_log_of_facts() {
        let Some(database) = TestDatabase::create() else { return };
        let at = 1_750_000_000 * US;
        let (second, minute, hour) = (at / US, at / US / 60 * 60, at / US / 3600 * 3600);
        let mut client = Client::connect(&database.url, NoTls).unwrap();
        client.batch_execute(schema::MIGRATIONS[0]).unwrap();
        client
            .batch_execute(&format!(
                "CREATE TABLE schema_version (version INTEGER PRIMARY KEY); INSERT INTO schema_version VALUES (1);
                 INSERT INTO buys VALUES (1, 5, 2, 3, 4, 100, '10.0.0.1', {at}, {at}, 'server', NULL);
                 UPDATE counter SET total = 1, total_units = 4;
                 INSERT INTO rollup VALUES (1, {second}, 1, 4), (60, {minute}, 1, 4), (3600, {hour}, 1, 4);
                 INSERT INTO promotion_rollup VALUES (2, 1, {second}, 1, 4), (2, 60, {minute}, 1, 4), (2, 3600, {hour}, 1, 4);
                 INSERT INTO promotion_totals VALUES (2, 1, 4, 400, 1, {at}, {at});
                 INSERT INTO promotion_products VALUES (2, 3, 1, 4);
                 INSERT INTO promotion_buyers VALUES (2, 5);"
            ))
            .unwrap();
        let store = with_views(PostgresStore::open(&database.url).unwrap());
        let left: i64 = client
            .query_one("SELECT count(*) FROM information_schema.tables WHERE table_name LIKE 'promotion%' OR table_name = 'rollup'", &[])
            .unwrap()
            .get(0);
        assert_eq!(left, 0, "the aggregate tables are gone");
        let write = Submission { facts: Facts::Buys(vec![record(6, 2, 3, 2, Some(50), at + 1)]), idempotency: None };
        assert_eq!(store.commit(&[write], at).unwrap(), vec![Outcome::Recorded { last_seq: 2, recorded: 1 }]);
        let stats = store.promotion_stats(2, (at - 10 * US, at - 20 * US)).unwrap();
        assert_eq!((stats.counts.total_buys, stats.counts.total_units), (2, 6));
        assert_eq!((stats.counts.recent_buys, stats.counts.recent_units), (2, 6));
        assert_eq!((stats.revenue_cents, stats.unique_buyers), (500, 2));
        assert_eq!((stats.first_buy_us, stats.last_buy_us), (Some(at), Some(at + 1)));
        assert_eq!(stats.top_products, vec![crate::store::ProductCount { product_id: 3, buys: 2, units: 6 }]);
        let series = store.timeseries(60, minute, minute, None).unwrap();
        assert_eq!((series.len(), series[0].buys, series[0].units), (1, 2, 6));
        assert_eq!(store.promotions(at - 10 * US, PromotionOrder::Buys, 10, 0).unwrap().1, 1);
        // The buyer of the old buy is known to the views: buying again is not a new buyer.
        let again = Submission { facts: Facts::Buys(vec![record(5, 2, 3, 1, None, at + 2)]), idempotency: None };
        store.commit(&[again], at).unwrap();
        assert_eq!(store.promotion_stats(2, (at - 10 * US, at - 20 * US)).unwrap().unique_buyers, 2);
    }

    #[test]
    fn a_schema_newer_than_the_build_is_refused() {
        let Some(database) = TestDatabase::create() else { return };
        drop(PostgresStore::open(&database.url).unwrap());
        let mut client = Client::connect(&database.url, NoTls).unwrap();
        let newer = schema::MIGRATIONS.len() as i32 + 1;
        client.execute("INSERT INTO schema_version (version) VALUES ($1)", &[&newer]).unwrap();
        let error = crate::telemetry::error_chain(&PostgresStore::open(&database.url).err().unwrap());
        assert!(error.contains(&format!("schema is version {newer}, newer than this build")), "{error}");
    }

    /// Facts become visible in sequence order: with two writers (replicas) committing at once, a
    /// reader tailing the log never sees a buy before every buy numbered below it. (The counter
    /// row is taken last and held to COMMIT, so a later block commits after an earlier one.)
    /// Views rely on this to apply a gap-free prefix of the log.
    #[test]
    fn facts_become_visible_in_sequence_order() {
        let Some(db) = TestDatabase::create() else { return };
        let stores: Vec<Arc<PostgresStore>> = (0..2).map(|_| Arc::new(PostgresStore::open(&db.url).unwrap())).collect();
        let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let writers: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(w, store)| {
                let (store, writing) = (store.clone(), writing.clone());
                std::thread::spawn(move || {
                    let mut i = 0;
                    while writing.load(Ordering::Relaxed) && i < 1_500 {
                        let buys = (0..1 + i % 4)
                            .map(|j| record(w as i64 * 10_000 + i + j, 1, 1, 1, None, 1_750_000_000 * US))
                            .collect();
                        store.commit(&[Submission { facts: Facts::Buys(buys), idempotency: None }], 0).unwrap();
                        i += 1;
                    }
                })
            })
            .collect();
        let reader = PostgresStore::open(&db.url).unwrap();
        let (mut applied, mut reads) = (0, 0);
        while writers.iter().any(|w| !w.is_finished()) || applied < reader.last_seq().unwrap() {
            let facts = reader.facts_after(applied, 500).unwrap();
            for fact in &facts {
                assert_eq!(fact.seq, applied + 1, "a gap after {applied}: fact {} visible first", fact.seq);
                applied = fact.seq;
            }
            reads += 1;
        }
        writing.store(false, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(applied, reader.last_seq().unwrap());
        assert!(reads > 10, "the reader tailed the log while it grew ({reads} reads)");
    }

    /// Expired keys are deleted a bounded slice per call (a backlog never stalls a commit long).
    #[test]
    fn expired_keys_are_pruned_in_bounded_slices() {
        let Some(db) = TestDatabase::create() else { return };
        let store = PostgresStore::open(&db.url).unwrap();
        let now = 1_750_000_000 * US;
        let old: Vec<Submission> =
            (0..2_500).map(|i| keyed(vec![record(i, 1, 1, 1, None, now)], &format!("k{i}"), 0)).collect();
        store.commit(&old, now).unwrap();
        store.commit(&[keyed(vec![record(1, 1, 1, 1, None, now)], "fresh", 0)], now + 2 * IDEMPOTENCY_TTL_US).unwrap();
        let before = now + IDEMPOTENCY_TTL_US;
        let slices: Vec<usize> = (0..4).map(|_| store.prune_idempotency(before, 1_000).unwrap()).collect();
        assert_eq!(slices, vec![1_000, 1_000, 500, 0]);
    }

    /// A database whose default is `synchronous_commit = off` still gets commits flushed before
    /// they are acknowledged: the writer's session sets it back to `on`.
    #[test]
    fn commits_are_durable_whatever_the_database_default() {
        let Some(db) = TestDatabase::create() else { return };
        let mut client = Client::connect(&db.server, NoTls).unwrap();
        client.batch_execute(&format!("ALTER DATABASE {} SET synchronous_commit = off", db.name)).unwrap();
        drop(client);
        let store = PostgresStore::open(&db.url).unwrap();
        assert_eq!(store.with_open_writer(|conn| conn.setting("synchronous_commit")), "on");
        let mut plain = Client::connect(&db.url, NoTls).unwrap();
        let default: String = plain.query_one("SHOW synchronous_commit", &[]).unwrap().get(0);
        assert_eq!(default, "off", "the database default is off, as the test set it");
    }

    #[test]
    fn an_unreachable_server_fails_quickly() {
        // Nothing listens on port 1: refused at once, whatever the machine.
        let started = Instant::now();
        let error =
            crate::telemetry::error_chain(&PostgresStore::open("postgres://postgres@127.0.0.1:1/none").err().unwrap());
        assert!(error.starts_with("cannot open PostgreSQL store:"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(PostgresStore::open("postgres://host:notaport/db").is_err());
    }

    #[test]
    fn timeouts_are_set_unless_the_url_sets_them() {
        let (config, session) = configure("postgres://u@h/db").unwrap();
        assert_eq!(config.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        assert_eq!(config.get_tcp_user_timeout(), Some(&TCP_USER_TIMEOUT));
        assert!(session.contains("statement_timeout = '3s'"));
        let (config, session) =
            configure("postgres://u@h/db?connect_timeout=9&options=-c%20statement_timeout%3D1s").unwrap();
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(9)));
        assert!(!session.contains("statement_timeout = "), "{session}");
    }
}
