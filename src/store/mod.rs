//! The storage interface: the few operations the service needs, behind one trait so that the
//! embedded SQLite store, the in-memory store and PostgreSQL are interchangeable.
//!
//! Calls are blocking: the single writer runs on its own thread and reads run on tokio's blocking
//! pool, so a slow disk never stalls the async workers.

pub mod log;
mod logged;
mod pool;
pub(crate) mod postgres;
pub(crate) mod sqlite;
mod tail_cache;
pub(crate) mod views;

use std::path::PathBuf;

use crate::domain::BuyRecord;
use crate::page_view::PageViewRecord;
use crate::refund::{RefundReceipt, RefundRecord, RefundRefusal};

/// Where the data lives, parsed from `--database-url` (`docs/reference.md` §1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `sqlite:PATH`: a durable file (WAL, `synchronous=FULL`).
    Sqlite(PathBuf),
    /// `memory:`: nothing kept after the process ends.
    Memory,
    /// `postgres://…`: the shared store, for several replicas.
    Postgres(String),
}

impl StoreUrl {
    /// Parse a database URL; the error is one line naming what is wrong.
    pub fn parse(url: &str) -> Result<StoreUrl, String> {
        let url = url.trim();
        if url == "memory:" || url == "memory://" {
            Ok(StoreUrl::Memory)
        } else if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            if path.is_empty() {
                Err("sqlite: needs a file path, as in sqlite:data/buy-tracker.db".into())
            } else {
                Ok(StoreUrl::Sqlite(PathBuf::from(path)))
            }
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(StoreUrl::Postgres(url.to_string()))
        } else {
            Err(format!("'{url}' is not a database URL: use sqlite:PATH, memory: or postgres://..."))
        }
    }
}

/// What kind of failure a [`StoreError`] is: it decides the fixed sentence a client is told (the
/// cause itself is only logged, since driver messages can carry SQL, table names or paths).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The store cannot be reached or refused the operation; retrying later may succeed.
    Unavailable,
    /// The disk under the store is full.
    DiskFull,
    /// Every read connection is busy.
    Busy,
    /// The connection failed after a commit was sent: it may have been recorded.
    OutcomeUnknown,
    /// The views did not reach the acknowledged facts in time (they are catching up).
    Behind,
}

/// A failure of the store, with its cause kept for the logs; the HTTP layer answers 503.
/// Cloneable, so that one failed commit can answer every request of its batch.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", kind.sentence())]
pub struct StoreError {
    kind: StoreErrorKind,
    #[source]
    cause: std::sync::Arc<dyn std::error::Error + Send + Sync>,
}

impl StoreErrorKind {
    /// What a client is told: a fixed sentence, never the cause.
    pub fn sentence(self) -> &'static str {
        match self {
            StoreErrorKind::Unavailable => "the store is unavailable; retry",
            StoreErrorKind::DiskFull => "the disk is full",
            StoreErrorKind::Busy => "the store is busy; retry",
            StoreErrorKind::Behind => "the analytics are catching up with the writes; retry",
            StoreErrorKind::OutcomeUnknown => {
                "the store did not confirm the write; it may have been recorded: retry with an Idempotency-Key"
            }
        }
    }
}

impl StoreError {
    /// A failure of `kind` caused by `cause` (an error, or a message).
    pub fn new(kind: StoreErrorKind, cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
        StoreError { kind, cause: std::sync::Arc::from(cause.into()) }
    }

    /// The store cannot be reached or refused the operation.
    pub fn unavailable(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
        Self::new(StoreErrorKind::Unavailable, cause)
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
}

impl From<rusqlite::Error> for StoreError {
    /// A SQLite failure: a full disk is told apart, everything else is "unavailable".
    fn from(e: rusqlite::Error) -> StoreError {
        let kind = match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => StoreErrorKind::DiskFull,
            _ => StoreErrorKind::Unavailable,
        };
        StoreError::new(kind, e)
    }
}

/// Why a store could not be opened: what was being opened, and the cause.
#[derive(Debug, thiserror::Error)]
#[error("cannot open {what}")]
pub struct OpenError {
    what: String,
    #[source]
    cause: Box<dyn std::error::Error + Send + Sync>,
}

impl OpenError {
    /// `what` (such as "SQLite store data/buys.db") could not be opened because of `cause`.
    pub fn new(what: impl Into<String>, cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> OpenError {
        OpenError { what: what.into(), cause: cause.into() }
    }
}

/// An Idempotency-Key claimed by a write, with the fingerprint of the request it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyClaim {
    /// The client's key (1–255 visible ASCII characters).
    pub key: String,
    /// SHA-256 of the request's canonical form (endpoint and buys).
    pub fingerprint: [u8; 32],
}

/// The facts of one write, all of one kind: each kind has its own sequence numbers.
#[derive(Debug, Clone)]
pub enum Facts {
    /// Buys, in request order (numbered among buys).
    Buys(Vec<BuyRecord>),
    /// Page views, in request order (numbered among views).
    Views(Vec<PageViewRecord>),
    /// One refund (numbered among refunds), decided against its buy inside the transaction.
    Refund(RefundRecord),
}

impl Facts {
    /// How many facts.
    pub fn len(&self) -> usize {
        match self {
            Facts::Buys(buys) => buys.len(),
            Facts::Views(views) => views.len(),
            Facts::Refund(_) => 1,
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One request's worth of facts, to be recorded atomically (all or none).
#[derive(Debug, Clone)]
pub struct Submission {
    /// The facts, in request order.
    pub facts: Facts,
    /// The key this write claims, if the request carried one.
    pub idempotency: Option<IdempotencyClaim>,
}

#[cfg(test)]
impl Submission {
    /// The buys of a write of buys (tests).
    pub(crate) fn buys_mut(&mut self) -> &mut Vec<BuyRecord> {
        match &mut self.facts {
            Facts::Buys(buys) => buys,
            Facts::Views(_) | Facts::Refund(_) => panic!("not a write of buys"),
        }
    }
}

/// What happened to one [`Submission`] inside a committed transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Recorded; `last_seq` is the sequence number of its last fact (among facts of its kind).
    Recorded { last_seq: i64, recorded: usize },
    /// The key was already used with the same request within 24 hours: nothing recorded, here
    /// is what the first request was answered.
    Replayed { last_seq: i64, recorded: usize },
    /// The key was already used with a different request: nothing recorded.
    KeyMismatch,
    /// A refund was recorded (`replayed`: this is the answer an earlier request with the same
    /// Idempotency-Key got, and nothing was recorded now).
    Refunded { receipt: RefundReceipt, replayed: bool },
    /// A refund was refused: nothing recorded.
    RefundRefused(RefundRefusal),
}

impl Outcome {
    /// The last sequence number this write recorded, if it recorded any.
    pub fn recorded_up_to(&self) -> Option<i64> {
        match self {
            Outcome::Recorded { last_seq, recorded } if *recorded > 0 => Some(*last_seq),
            _ => None,
        }
    }
}

/// Counts over all buys or one promotion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Every buy in scope.
    pub total_buys: i64,
    /// Units over every buy in scope.
    pub total_units: i64,
    /// Buys whose timestamp is at or after the cutoff asked for.
    pub recent_buys: i64,
    /// Units of those buys.
    pub recent_units: i64,
}

/// One promotion in the ranking of `GET /promotions`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PromotionSummary {
    /// The promotion.
    pub promotion_id: i64,
    /// Its buys.
    pub total_buys: i64,
    /// Its units.
    pub total_units: i64,
    /// Its buys at or after the cutoff.
    pub recent_buys: i64,
    /// Sum of quantity × unit price over its priced buys.
    pub revenue_cents: i64,
    /// Its page views.
    pub views: i64,
    /// Distinct users among its viewers.
    pub unique_viewers: i64,
    /// Distinct users who viewed and bought in it.
    pub converted_viewers: i64,
    /// Cents given back by its refunds.
    pub refunded_cents: i64,
}

impl PromotionSummary {
    /// Revenue after refunds.
    pub fn net_revenue_cents(&self) -> i64 {
        self.revenue_cents.saturating_sub(self.refunded_cents)
    }

    /// `converted_viewers / unique_viewers`, or `None` without viewers.
    pub fn conversion_rate(&self) -> Option<f64> {
        (self.unique_viewers > 0).then(|| self.converted_viewers as f64 / self.unique_viewers as f64)
    }
}

/// What `GET /promotions` ranks by (`order_by`): always descending on all-time totals, ties by
/// promotion id ascending, nulls (a conversion rate without viewers) last.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PromotionOrder {
    /// Buys (the default).
    #[default]
    Buys,
    /// Units.
    Units,
    /// Gross revenue.
    Revenue,
    /// Revenue after refunds.
    NetRevenue,
    /// Page views.
    Views,
    /// Converted viewers over unique viewers.
    ConversionRate,
}

impl PromotionOrder {
    /// Every order with its name in the query, in the contract's order.
    pub const ALL: [(&'static str, PromotionOrder); 6] = [
        ("buys", PromotionOrder::Buys),
        ("units", PromotionOrder::Units),
        ("revenue", PromotionOrder::Revenue),
        ("net_revenue", PromotionOrder::NetRevenue),
        ("views", PromotionOrder::Views),
        ("conversion_rate", PromotionOrder::ConversionRate),
    ];

    /// The order a query value names (lower case only).
    pub fn parse(name: &str) -> Option<PromotionOrder> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, order)| *order)
    }

    /// Whether facts arriving can only move a promotion up in this order (never down): then a
    /// page is found among the views' first entries and the tail's promotions. A conversion
    /// rate can fall when new viewers arrive.
    pub fn only_grows(self) -> bool {
        // A conversion rate falls with new viewers, net revenue with refunds.
        !matches!(self, PromotionOrder::ConversionRate | PromotionOrder::NetRevenue)
    }

    /// `a` before `b` in this order (descending, nulls last, ties by id).
    pub fn compare(self, a: &PromotionSummary, b: &PromotionSummary) -> std::cmp::Ordering {
        let by = match self {
            PromotionOrder::Buys => b.total_buys.cmp(&a.total_buys),
            PromotionOrder::Units => b.total_units.cmp(&a.total_units),
            PromotionOrder::Revenue => b.revenue_cents.cmp(&a.revenue_cents),
            PromotionOrder::NetRevenue => b.net_revenue_cents().cmp(&a.net_revenue_cents()),
            PromotionOrder::Views => b.views.cmp(&a.views),
            // Compared exactly, as fractions: c1/v1 > c2/v2 ⇔ c1·v2 > c2·v1 (viewers > 0).
            PromotionOrder::ConversionRate => match (a.unique_viewers > 0, b.unique_viewers > 0) {
                (true, true) => {
                    let left = i128::from(a.converted_viewers) * i128::from(b.unique_viewers);
                    let right = i128::from(b.converted_viewers) * i128::from(a.unique_viewers);
                    right.cmp(&left)
                }
                (true, false) => std::cmp::Ordering::Less,
                (false, true) => std::cmp::Ordering::Greater,
                (false, false) => std::cmp::Ordering::Equal,
            },
        };
        by.then(a.promotion_id.cmp(&b.promotion_id))
    }
}

/// One buyer of a promotion, as `GET /promotions/{id}/customers` lists them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Customer {
    /// The buyer.
    pub user_id: i64,
    /// Their buys in the promotion.
    pub buys: i64,
    /// Their units (gross).
    pub units: i64,
    /// Quantity × unit price over their priced buys (gross).
    pub revenue_cents: i64,
    /// Units of theirs refunded (no refunds are recorded yet: 0).
    pub refunded_units: i64,
    /// Earliest buy timestamp, microseconds.
    pub first_buy_us: i64,
    /// Latest buy timestamp, microseconds.
    pub last_buy_us: i64,
}

/// What `GET /promotions/{id}/customers` ranks by (`order_by`): descending, ties by `user_id`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CustomerOrder {
    /// Revenue (the default).
    #[default]
    Revenue,
    /// Units.
    Units,
    /// Buys.
    Buys,
}

impl CustomerOrder {
    /// Every order with its name in the query.
    pub const ALL: [(&'static str, CustomerOrder); 3] =
        [("revenue", CustomerOrder::Revenue), ("units", CustomerOrder::Units), ("buys", CustomerOrder::Buys)];

    /// The order a query value names.
    pub fn parse(name: &str) -> Option<CustomerOrder> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, order)| *order)
    }

    /// `a` before `b` in this order.
    pub fn compare(self, a: &Customer, b: &Customer) -> std::cmp::Ordering {
        let by = match self {
            CustomerOrder::Revenue => b.revenue_cents.cmp(&a.revenue_cents),
            CustomerOrder::Units => b.units.cmp(&a.units),
            CustomerOrder::Buys => b.buys.cmp(&a.buys),
        };
        by.then(a.user_id.cmp(&b.user_id))
    }
}

/// One product of a promotion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProductCount {
    /// The product.
    pub product_id: i64,
    /// Its buys in the promotion.
    pub buys: i64,
    /// Its units in the promotion.
    pub units: i64,
}

/// Everything `GET /promotions/{id}/stats` reports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PromotionStats {
    /// Counts, total and recent.
    pub counts: Counts,
    /// Sum of quantity × unit price over priced buys.
    pub revenue_cents: i64,
    /// Distinct user ids that bought (exact).
    pub unique_buyers: i64,
    /// Earliest and latest buy `timestamp`, microseconds; `None` without buys.
    pub first_buy_us: Option<i64>,
    /// See `first_buy_us`.
    pub last_buy_us: Option<i64>,
    /// Top 10 products by units (ties by product id).
    pub top_products: Vec<ProductCount>,
    /// Page views of the promotion.
    pub views: i64,
    /// Distinct users among them (exact).
    pub unique_viewers: i64,
    /// Distinct users who both viewed and bought in the promotion, in either order (exact).
    pub converted_viewers: i64,
    /// Views whose timestamp is at or after the cutoff asked for.
    pub recent_views: i64,
    /// Buys that carry a price.
    pub priced_buys: i64,
    /// Distinct users with at least two buys in the promotion.
    pub repeat_buyers: i64,
    /// Distinct buyers whose first buy in any promotion (the lowest buy number) was here.
    pub new_customers: i64,
    /// Quantity × unit price over the priced buys at or after the cutoff (saturating).
    pub recent_revenue_cents: i64,
    /// The window of the same length before this one: timestamps in `previous_since..since`.
    pub previous: Window,
    /// Units given back by refunds of its buys.
    pub refunded_units: i64,
    /// Cents given back by them (saturating).
    pub refunded_cents: i64,
}

/// Buys, units, revenue and views with timestamps in one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Window {
    /// Buys.
    pub buys: i64,
    /// Their units.
    pub units: i64,
    /// Quantity × unit price over the priced ones (saturating).
    pub revenue_cents: i64,
    /// Page views.
    pub views: i64,
}

impl Window {
    /// What is in this window and not in `inner`, a window that ends where this one does and
    /// starts later.
    pub fn minus(self, inner: Window) -> Window {
        Window {
            buys: self.buys - inner.buys,
            units: self.units - inner.units,
            revenue_cents: self.revenue_cents.saturating_sub(inner.revenue_cents),
            views: self.views - inner.views,
        }
    }
}

/// Buys and units in one time bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Bucket start, seconds since the epoch.
    pub start_s: i64,
    /// Buys in it.
    pub buys: i64,
    /// Units in it.
    pub units: i64,
    /// Page views in it.
    pub views: i64,
    /// Quantity × unit price over its priced buys (saturating).
    pub revenue_cents: i64,
}

/// Which kind of fact `GET /export` streams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ExportKind {
    /// Buys (the default).
    #[default]
    Buys,
    /// Page views.
    Views,
    /// Refunds.
    Refunds,
}

/// Which facts `GET /export` selects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportFilter {
    /// The kind of fact; `after` and `up_to` of a page are numbers among this kind.
    pub kind: ExportKind,
    /// Only this promotion.
    pub promotion_id: Option<i64>,
    /// `timestamp >= since` (microseconds).
    pub since_us: Option<i64>,
    /// `timestamp < until` (microseconds).
    pub until_us: Option<i64>,
}

/// One exported fact, with every stored field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportRow {
    /// A buy.
    Buy(BuyRow),
    /// A page view.
    View(ViewRow),
    /// A refund.
    Refund(RefundRow),
}

/// Every stored field of one page view, as exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewRow {
    /// Its number among views.
    pub view_count: i64,
    /// See [`crate::page_view::PageView`].
    pub user_id: i64,
    /// See [`crate::page_view::PageView`].
    pub promotion_id: i64,
    /// See [`crate::page_view::PageView`].
    pub product_id: Option<i64>,
    /// Client IP.
    pub ip_address: String,
    /// Request generation time, microseconds.
    pub timestamp_us: i64,
    /// Server receive time, microseconds.
    pub received_at_us: i64,
    /// Header the timestamp came from, or `server`.
    pub timestamp_source: String,
}

/// Every stored field of one refund, as exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRow {
    /// Its number among refunds.
    pub refund_count: i64,
    /// The buy refunded.
    pub buy_count: i64,
    /// The buy's user.
    pub user_id: i64,
    /// The buy's promotion.
    pub promotion_id: i64,
    /// The buy's product.
    pub product_id: i64,
    /// Units given back.
    pub refunded_units: i64,
    /// Their price.
    pub refunded_cents: i64,
    /// Client IP.
    pub ip_address: String,
    /// Request generation time, microseconds.
    pub timestamp_us: i64,
    /// Server receive time, microseconds.
    pub received_at_us: i64,
    /// Header the timestamp came from, or `server`.
    pub timestamp_source: String,
}

/// Every stored field of one buy, as exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuyRow {
    /// The sequence number.
    pub buy_count: i64,
    /// See [`crate::domain::Buy`].
    pub user_id: i64,
    /// See [`crate::domain::Buy`].
    pub promotion_id: i64,
    /// See [`crate::domain::Buy`].
    pub product_id: i64,
    /// See [`crate::domain::Buy`].
    pub product_quantity: i64,
    /// See [`crate::domain::Buy`].
    pub unit_price_cents: Option<i64>,
    /// Client IP.
    pub ip_address: String,
    /// Request generation time, microseconds.
    pub timestamp_us: i64,
    /// Server receive time, microseconds.
    pub received_at_us: i64,
    /// Header the timestamp came from, or `server`.
    pub timestamp_source: String,
}

/// How long an Idempotency-Key is remembered (`docs/reference.md` §2).
pub const IDEMPOTENCY_TTL_US: i64 = 24 * 3600 * 1_000_000;

/// How long second and minute rollups are kept. Reads use them only at the edges of a window
/// reaching at most 336 hours back (a promotion's previous window of `timeframe_hours` ≤ 168
/// starts twice as far back), so an hour beyond that is never read again; hour rollups are kept
/// for ever.
pub const ROLLUP_KEEP_S: i64 = 337 * 3600;

/// How `GET /stats/timing` lays instants out in cells: the local hours of a time zone (a weekday
/// and an hour), so that every instant of one local hour has the same cell.
pub trait TimingGrid: Sync {
    /// The number of cells.
    fn cells(&self) -> usize;
    /// The cell of the instant `us` (microseconds since the epoch); `cells()` or more for none.
    fn cell_of(&self, us: i64) -> usize;
    /// The zone's offset from UTC in seconds (east positive), when it is the same at every
    /// instant of the UTC hour that starts at `hour_s` (seconds); `None` when it changes inside
    /// it. A whole number of hours makes the UTC hour one local hour, read as one hourly bucket;
    /// otherwise the hour's minutes fall in two local hours, summed by the database.
    fn offset_over_hour(&self, hour_s: i64) -> Option<i64>;
}

/// The operations the service needs from a store.
pub trait Store: Send + Sync + 'static {
    /// Record `writes` in one transaction, assigning consecutive sequence numbers in order.
    /// Returns one outcome per write. When this returns `Ok`, everything is durable.
    fn commit(&self, writes: &[Submission], now_us: i64) -> Result<Vec<Outcome>, StoreError>;

    /// Totals and the buys with `timestamp >= since_us`, over all buys or one promotion, exactly,
    /// without scanning the buys (rollups maintained with the inserts).
    fn counts(&self, since_us: i64, promotion_id: Option<i64>) -> Result<Counts, StoreError>;

    /// Promotions ranked by `order`, one page, and the number of promotions (with a buy or a view).
    fn promotions(
        &self,
        since_us: i64,
        order: PromotionOrder,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<PromotionSummary>, i64), StoreError>;

    /// One promotion's analytics (zeros for a promotion without buys), with the window
    /// `since_us..` and the previous one, `previous_since_us..since_us`.
    fn promotion_stats(&self, promotion_id: i64, windows: (i64, i64)) -> Result<PromotionStats, StoreError>;

    /// Page views with `timestamp >= since_us`, over all or one promotion.
    fn recent_views(&self, since_us: i64, promotion_id: Option<i64>) -> Result<i64, StoreError>;

    /// Buys and units with `timestamp >= since_us` (the edge of a window's recent counts), over
    /// all buys or one promotion, summed into the cells of `grid` (`0..grid.cells()`).
    fn timing(
        &self,
        since_us: i64,
        promotion_id: Option<i64>,
        grid: &dyn TimingGrid,
    ) -> Result<Vec<(i64, i64)>, StoreError>;

    /// One page of a promotion's buyers ranked by `order`, and the number of its buyers.
    fn customers(
        &self,
        promotion_id: i64,
        order: CustomerOrder,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<Customer>, i64), StoreError>;

    /// Non-empty buckets of `granularity_s` seconds (60 or 3600) starting in `from_s..=to_s`,
    /// oldest first.
    fn timeseries(
        &self,
        granularity_s: i64,
        from_s: i64,
        to_s: i64,
        promotion_id: Option<i64>,
    ) -> Result<Vec<Bucket>, StoreError>;

    /// Up to `limit` selected facts of the filter's kind numbered in `after + 1 ..= up_to`, in
    /// sequence order (export
    /// pages through with this, so memory stays flat and no snapshot is held for long).
    fn export_page(
        &self,
        filter: &ExportFilter,
        after: i64,
        up_to: i64,
        limit: usize,
    ) -> Result<Vec<ExportRow>, StoreError>;

    /// Forget at most `limit` Idempotency-Keys older than `before_us`, oldest first; returns how
    /// many. Bounded, because it runs on the writer between commits: a backlog (after a long
    /// outage) is worked off a slice per call rather than in one statement that stalls commits.
    fn prune_idempotency(&self, before_us: i64, limit: usize) -> Result<usize, StoreError>;

    /// The last number committed of each kind of fact: where an export ends, so that it needs
    /// neither the views nor their barrier (a stream of facts is read from the log alone).
    fn position(&self) -> Result<log::Position, StoreError>;

    /// How many reads the store serves at once (its read connections): more at once would only
    /// wait for one.
    fn read_connections(&self) -> usize {
        8
    }

    /// Check that the store answers (for `/health`).
    fn ping(&self) -> Result<(), StoreError>;
}

/// Where the views of a SQLite store live: beside it, `data/buys.db` → `data/buys.views.db`.
pub fn views_path(facts: &std::path::Path) -> PathBuf {
    let stem = facts.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "buy-tracker".into());
    facts.with_file_name(format!("{stem}.views.db"))
}

/// The log of facts of the store at `url`, without views (the bulk loader writes through it).
pub fn open_log(url: &StoreUrl) -> Result<std::sync::Arc<dyn log::Log>, OpenError> {
    Ok(match url {
        StoreUrl::Sqlite(path) => std::sync::Arc::new(sqlite::SqliteStore::open_file(path)?),
        StoreUrl::Memory => std::sync::Arc::new(sqlite::SqliteStore::open_memory()?),
        StoreUrl::Postgres(url) => std::sync::Arc::new(postgres::PostgresStore::open(url)?),
    })
}

/// Where the views of the store at `url` live with `--views-path` `given`: there if given,
/// else beside a SQLite file, else (memory, PostgreSQL) in a temporary file.
fn views_at(url: &StoreUrl, given: Option<&std::path::Path>) -> Option<PathBuf> {
    match (given, url) {
        (Some(path), _) => Some(path.to_path_buf()),
        (None, StoreUrl::Sqlite(path)) => Some(views_path(path)),
        (None, _) => None,
    }
}

/// Delete the views of the store at `url` (at `--views-path` `given`, or beside a SQLite file)
/// and build them again from its whole log; returns how many facts were applied. The views are
/// locked while the service uses them, so this refuses to run beside it.
pub fn rebuild_views(url: &StoreUrl, given: Option<&std::path::Path>) -> Result<usize, OpenError> {
    let Some(views) = views_at(url, given) else {
        return Err(OpenError::new(
            "views",
            "these views live in a temporary file and are rebuilt at every start: give --views-path to keep them",
        ));
    };
    let lock = views::lock_views(&views)?;
    for file in [
        views.clone(),
        PathBuf::from(format!("{}-wal", views.display())),
        PathBuf::from(format!("{}-shm", views.display())),
    ] {
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(OpenError::new(format!("views {}", file.display()), e)),
        }
    }
    let log = open_log(url)?;
    let (fresh, deferred) = views::Views::open_for_rebuild(&views, lock)?;
    let what = || format!("views {}", views.display());
    // On a thread of its own: PostgreSQL's blocking client must not run on an async worker.
    let built = std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<usize, StoreError> {
                fresh.adopt(&log.store_id()?, log.position()?)?;
                let applied = fresh.catch_up(&*log)?;
                fresh.finish_rebuild(&deferred)?;
                Ok(applied)
            })
            .join()
    });
    built.map_err(|_| OpenError::new(what(), "the rebuilding thread panicked"))?.map_err(|e| OpenError::new(what(), e))
}

/// Open the store a URL names: its log of facts, and the views that follow it (at
/// `--views-path` `views` if given, else beside a SQLite file; a PostgreSQL replica without one
/// keeps them in a temporary file and builds them from the shared log at start).
pub fn open(url: &StoreUrl, views: Option<&std::path::Path>) -> Result<std::sync::Arc<dyn Store>, OpenError> {
    let log = open_log(url)?;
    let views = views::Views::open(views_at(url, views).as_deref())?;
    Ok(std::sync::Arc::new(logged::LoggedStore::start(log, views)?))
}

/// Every answer a read can ask for is the same in `a` as in `b`.
/// That is the counts since each of `cutoffs` (overall and of each of `promotions`), the
/// promotion page and each promotion's stats since each cutoff (with the previous window of the
/// same length, as at `now_us`), and the minute and hour series (`minutes` and `hours`: first
/// and last bucket start, in seconds), overall and per promotion.
#[cfg(test)]
pub(crate) fn assert_same_answers(
    a: &dyn Store,
    b: &dyn Store,
    (cutoffs, now_us): (&[i64], i64),
    promotions: &[i64],
    minutes: (i64, i64),
    hours: (i64, i64),
) {
    let each = || std::iter::once(None).chain(promotions.iter().copied().map(Some));
    for &since in cutoffs {
        for p in each() {
            assert_eq!(a.counts(since, p).unwrap(), b.counts(since, p).unwrap(), "since {since}, promotion {p:?}");
        }
        for (_, order) in PromotionOrder::ALL {
            let (left, right) =
                (a.promotions(since, order, 10, 0).unwrap(), b.promotions(since, order, 10, 0).unwrap());
            assert_eq!(left, right, "since {since}, {order:?}");
        }
        let windows = (since, since.min(since.saturating_mul(2).saturating_sub(now_us)));
        for &p in promotions {
            let (left, right) = (a.promotion_stats(p, windows).unwrap(), b.promotion_stats(p, windows).unwrap());
            assert_eq!(left, right, "since {since}");
        }
    }
    for (g, (from, to)) in [(60, minutes), (3600, hours)] {
        for p in each() {
            assert_eq!(a.timeseries(g, from, to, p).unwrap(), b.timeseries(g, from, to, p).unwrap(), "{g} s, {p:?}");
        }
    }
}

/// Prune `pruned` with `prune` (called until it deletes nothing) as at `now_us`, then require
/// every answer a read can ask for to equal `kept`'s (the same writes, nothing pruned).
#[cfg(test)]
pub(crate) fn assert_pruning_changes_no_answer(
    pruned: &dyn Store,
    prune: &mut dyn FnMut() -> usize,
    kept: &dyn Store,
    now_us: i64,
    cutoffs: &[i64],
) {
    use views::deltas::US;
    let mut deleted = 0;
    while let n @ 1.. = prune() {
        deleted += n;
    }
    assert!(deleted > 3000, "old second and minute rows were deleted ({deleted})");
    let hours = |h: i64| h * 3600 * US;
    let edges = [now_us - hours(168), now_us - hours(168) + 1, now_us - hours(168) + 59 * US + 7, now_us - 1];
    let since: Vec<i64> = (0..=168).map(|h| now_us - hours(h)).chain(edges).chain(cutoffs.iter().copied()).collect();
    let (from, to) = ((now_us - hours(168)) / US / 60 * 60, now_us / US / 60 * 60);
    assert_same_answers(pruned, kept, (&since, now_us), &[0, 1, 2], (from, to), (0, to));
}

/// Commit a generated history of buys, views and refunds through `stores` in turn (replicas of
/// one log, or one store), with late and out-of-order timestamps and views before and after
/// buys, and after every few commits require each store's funnel and customer fields of every
/// promotion (views, viewers, converted, recent views, buyers, repeat buyers, new customers,
/// priced buys, revenue, the previous window, refunded units and cents) to equal a recount from
/// the facts committed so far. Every other check first calls `settle`, which should
/// let the views apply everything (so both the views and the log's tail are checked).
#[cfg(test)]
pub(crate) fn assert_funnel_matches_a_recount(stores: &[&dyn Store], settle: &dyn Fn(), now_us: i64) {
    use std::collections::BTreeSet;

    use crate::page_view::PageViewRecord;
    use crate::refund::RefundRecord;
    use views::deltas::US;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self, n: u64) -> i64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n) as i64
        }
        /// Most facts within the last two hours, some late (up to a day old).
        fn at(&mut self, now_us: i64) -> i64 {
            let late = if self.next(5) == 0 { self.next(86_400) * 1_000_000 } else { 0 };
            now_us - self.next(7_200) * 1_000_000 - self.next(1_000_000) - late
        }
    }
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    // (user, promotion, timestamp) of every view and (with the price) buy committed, in
    // sequence order.
    let mut buys: Vec<(i64, i64, i64, Option<i64>)> = Vec::new();
    let mut views: Vec<(i64, i64, i64)> = Vec::new();
    // Units refunded of each buy (by position in `buys`), and the refunds expected to be refused.
    let mut refunded: Vec<i64> = Vec::new();
    for round in 0..40 {
        let mut writes = Vec::new();
        let mut refusals = Vec::new();
        for _ in 0..1 + rng.next(6) {
            if !buys.is_empty() && rng.next(4) == 0 {
                // A buy committed in an earlier round (so it is in the log before the refund).
                let index = rng.next(refunded.len().max(1) as u64) as usize;
                if index < refunded.len() {
                    let units = (rng.next(2) == 0).then_some(1);
                    let left = 1 - refunded[index];
                    let granted = match units {
                        Some(u) if u <= left => u,
                        None if left > 0 => left,
                        _ => 0,
                    };
                    refunded[index] += granted;
                    refusals.push((writes.len(), granted == 0));
                    let record = RefundRecord::test(index as i64 + 1, units, rng.at(now_us));
                    writes.push(Submission { facts: Facts::Refund(record), idempotency: None });
                    continue;
                }
            }
            let n = 1 + rng.next(4);
            let (user, promotion) = (rng.next(30), rng.next(4));
            if rng.next(2) == 0 {
                let records: Vec<_> = (0..n)
                    .map(|k| {
                        let t = rng.at(now_us);
                        let price = (k % 2 == 0).then_some(100 + user);
                        buys.push((user + k, promotion, t, price));
                        BuyRecord::test(user + k, promotion, 1, 1, price, t)
                    })
                    .collect();
                writes.push(Submission { facts: Facts::Buys(records), idempotency: None });
            } else {
                let records: Vec<_> = (0..n)
                    .map(|k| {
                        let t = rng.at(now_us);
                        views.push((user + k, promotion, t));
                        PageViewRecord::test(user + k, promotion, t)
                    })
                    .collect();
                writes.push(Submission { facts: Facts::Views(records), idempotency: None });
            }
        }
        let outcomes = stores[round % stores.len()].commit(&writes, now_us).unwrap();
        for (i, refused) in refusals {
            assert_eq!(matches!(outcomes[i], Outcome::RefundRefused(_)), refused, "round {round}: {:?}", outcomes[i]);
        }
        refunded.resize(buys.len(), 0);
        if round % 5 != 4 {
            continue;
        }
        if round % 10 == 9 {
            settle();
        }
        for p in 0..5 {
            let buyers: BTreeSet<i64> = buys.iter().filter(|b| b.1 == p).map(|b| b.0).collect();
            let viewers: BTreeSet<i64> = views.iter().filter(|v| v.1 == p).map(|v| v.0).collect();
            let repeat = buyers.iter().filter(|&&u| buys.iter().filter(|b| b.1 == p && b.0 == u).count() >= 2).count();
            let first_here = |u: &&i64| buys.iter().find(|b| b.0 == **u).is_some_and(|b| b.1 == p);
            let new_customers = buyers.iter().filter(first_here).count();
            let priced: Vec<i64> = buys.iter().filter(|b| b.1 == p).filter_map(|b| b.3).collect();
            let customers = (repeat as i64, new_customers as i64, priced.len() as i64, priced.iter().sum::<i64>());
            // Every buy is of one unit: a refunded buy gives back its price.
            let refunds: Vec<&(i64, i64, i64, Option<i64>)> =
                buys.iter().zip(&refunded).filter(|(b, r)| b.1 == p && **r > 0).map(|(b, _)| b).collect();
            let refunds = (refunds.len() as i64, refunds.iter().filter_map(|b| b.3).sum::<i64>());
            for since in [0, now_us - 3_600 * US, now_us - 1_800 * US + 1] {
                let expected = (
                    views.iter().filter(|v| v.1 == p).count() as i64,
                    viewers.len() as i64,
                    viewers.intersection(&buyers).count() as i64,
                    views.iter().filter(|v| v.1 == p && v.2 >= since).count() as i64,
                    buyers.len() as i64,
                );
                let previous_since = since - (now_us - since);
                let before: Vec<_> =
                    buys.iter().filter(|b| b.1 == p && (previous_since..since).contains(&b.2)).collect();
                let previous = Window {
                    buys: before.len() as i64,
                    units: before.len() as i64,
                    revenue_cents: before.iter().filter_map(|b| b.3).sum(),
                    views: views.iter().filter(|v| v.1 == p && (previous_since..since).contains(&v.2)).count() as i64,
                };
                let recent_revenue: i64 = buys.iter().filter(|b| b.1 == p && b.2 >= since).filter_map(|b| b.3).sum();
                for store in stores {
                    let s = store.promotion_stats(p, (since, previous_since)).unwrap();
                    assert_eq!(
                        (s.previous, s.recent_revenue_cents),
                        (previous, recent_revenue),
                        "round {round}, promotion {p}, since {since}: previous window, recent revenue"
                    );
                    let got = (s.views, s.unique_viewers, s.converted_viewers, s.recent_views, s.unique_buyers);
                    assert_eq!(got, expected, "round {round}, promotion {p}, since {since}");
                    let got = (s.repeat_buyers, s.new_customers, s.priced_buys, s.revenue_cents);
                    assert_eq!(got, customers, "round {round}, promotion {p}: repeat, new, priced, revenue");
                    let got = (s.refunded_units, s.refunded_cents);
                    assert_eq!(got, refunds, "round {round}, promotion {p}: refunded units and cents");
                }
            }
        }
    }
    assert!(views.len() > 100 && buys.len() > 100, "{} views, {} buys", views.len(), buys.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        assert_eq!(StoreUrl::parse("memory:"), Ok(StoreUrl::Memory));
        assert_eq!(StoreUrl::parse("sqlite:data/x.db"), Ok(StoreUrl::Sqlite("data/x.db".into())));
        assert_eq!(StoreUrl::parse("sqlite:///tmp/x.db"), Ok(StoreUrl::Sqlite("/tmp/x.db".into())));
        assert!(matches!(StoreUrl::parse("postgres://u@h/db"), Ok(StoreUrl::Postgres(_))));
        assert!(StoreUrl::parse("sqlite:").is_err());
        assert!(StoreUrl::parse("mysql://x").is_err());
        assert!(StoreUrl::parse("").is_err());
    }
}
