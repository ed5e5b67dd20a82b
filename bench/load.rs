//! Bulk loader for the growth benchmark (bench/growth.sh): fills a store with N synthetic buys
//! through the same storage code the service uses (the log's `commit`), in transactions of 8192
//! buys, then builds the views from them as `buy-tracker rebuild-views` does (the time is in its
//! RESULT line).
//!
//! Run: `cargo run --release --example load -- sqlite:PATH N [DAYS] [SEED] [VIEWS_PER_BUY]`
//! (DAYS, default 7: the span the timestamps cover, ending now; SEED, default 42; VIEWS_PER_BUY,
//! default 0: page views recorded beside each buy, at its time.)
//!
//! The data is shaped like a real week of campaigns:
//! - timestamps cover the last 7 days (DAYS) up to now, in arrival order (buy sequence follows time, as
//!   with live traffic), with a day/night cycle and a little client-clock jitter;
//! - 200 promotions with Zipf (s = 1) popularity: the top one gets ~17% of the buys;
//! - 5000 products, Zipf (s = 1.1) within each promotion, each promotion favouring its own;
//! - user ids drawn uniformly from 1 million users;
//! - 30% of buys carry `unit_price_cents`; quantities mostly 1;
//! - 20% of buys take their time from an `x-client-time` header, the rest from the server clock;
//! - with VIEWS_PER_BUY = k, each buy comes with k views at its time: the first by its buyer of
//!   its promotion (so viewers convert), the others by users drawn as buyers are, of promotions
//!   drawn by the same popularity.
//!
//! Generation runs on its own thread, one batch ahead of the commits, so the figure printed at the
//! end (`RESULT ... buys_per_s=...`) is the store's rate, not the generator's.

use std::sync::mpsc::sync_channel;
use std::time::Instant;

use buy_tracker::domain::{Buy, BuyRecord, Quantity};
use buy_tracker::page_view::{PageView, PageViewRecord};
use buy_tracker::request_time::{TIME_HEADERS, TimestampSource};
use buy_tracker::store::{self, Facts, StoreUrl, Submission};

/// Buys per transaction.
const BATCH: usize = 8192;
const PROMOTIONS: usize = 200;
const PRODUCTS: usize = 5000;
const USERS: u64 = 1_000_000;
const US: i64 = 1_000_000;

/// SplitMix64: small, fast, deterministic for a seed (no extra dependency).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n).
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A Zipf distribution over ranks 0..n as a cumulative table.
struct Zipf(Vec<f64>);

impl Zipf {
    fn new(n: usize, s: f64) -> Zipf {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (1..=n)
            .map(|rank| {
                acc += 1.0 / (rank as f64).powf(s);
                acc
            })
            .collect();
        for c in &mut cdf {
            *c /= acc;
        }
        Zipf(cdf)
    }

    fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.0.partition_point(|&c| c < u).min(self.0.len() - 1)
    }
}

/// Maps the i-th of n buys to its time, so that buys arrive in order at a rate that follows a
/// day/night cycle (low at night, peak in the evening) over the `days` days before `end_us`.
struct Arrivals {
    /// Cumulative share of the buys at the end of each hour.
    cdf: Vec<f64>,
    start_s: i64,
}

impl Arrivals {
    fn new(end_us: i64, days: u32) -> Arrivals {
        let hours = days as usize * 24;
        let start_s = end_us / US - hours as i64 * 3600;
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (0..hours)
            .map(|h| {
                let hour_of_day = ((start_s / 3600 + h as i64) % 24) as f64;
                // 0.3 at 06:00, 1.7 at 18:00.
                acc += 1.0 - 0.7 * (2.0 * std::f64::consts::PI * (hour_of_day - 12.0) / 24.0).sin();
                acc
            })
            .collect();
        for c in &mut cdf {
            *c /= acc;
        }
        Arrivals { cdf, start_s }
    }

    /// The time (µs) by which a share `q` in [0, 1) of the buys has arrived.
    fn at(&self, q: f64) -> i64 {
        let h = self.cdf.partition_point(|&c| c <= q).min(self.cdf.len() - 1);
        let before = if h == 0 { 0.0 } else { self.cdf[h - 1] };
        let within = ((q - before) / (self.cdf[h] - before)).clamp(0.0, 1.0);
        (self.start_s + h as i64 * 3600) * US + (within * 3600.0 * US as f64) as i64
    }
}

struct Generator {
    rng: Rng,
    promotions: Zipf,
    products: Zipf,
    arrivals: Arrivals,
    total: u64,
}

impl Generator {
    /// `k` views at the time of `buy`: the first by its buyer in its promotion.
    fn views(&mut self, buy: &BuyRecord, k: u64, out: &mut Vec<PageViewRecord>) {
        for j in 0..k {
            let (user_id, promotion_id) = if j == 0 {
                (buy.buy.user_id, buy.buy.promotion_id)
            } else {
                let rank = self.promotions.sample(&mut self.rng);
                ((1 + self.rng.below(USERS)) as i64, (1 + (rank * 37 + 11) % PROMOTIONS) as i64)
            };
            out.push(PageViewRecord {
                view: PageView { user_id, promotion_id, product_id: Some(buy.buy.product_id) },
                ip_address: buy.ip_address.clone(),
                timestamp_us: buy.timestamp_us,
                received_at_us: buy.received_at_us,
                timestamp_source: buy.timestamp_source,
                idempotency_key: None,
            });
        }
    }

    fn record(&mut self, i: u64) -> BuyRecord {
        let rng = &mut self.rng;
        // Promotion ids 1..=200, popularity rank scrambled so id 1 is not the top one.
        let rank = self.promotions.sample(rng);
        let promotion_id = 1 + (rank * 37 + 11) % PROMOTIONS;
        // Each promotion has its own favourite products.
        let product_id = 1 + (promotion_id * 131 + self.products.sample(rng)) % PRODUCTS;
        let user_id = 1 + rng.below(USERS);
        let quantity = match rng.below(100) {
            0..70 => 1,
            70..90 => 2,
            90..97 => 3,
            _ => 4 + rng.below(7),
        };
        // A fixed list price per product, 1.99 to 501.98.
        let price = (rng.below(10) < 3).then(|| 199 + (product_id as u64 * 7919) % 50_000);
        let received_at_us = self.arrivals.at(i as f64 / self.total as f64) + rng.below(1000) as i64;
        let (timestamp_us, timestamp_source) = if rng.below(10) < 2 {
            // Client clocks: up to 2 s behind the server.
            (received_at_us - rng.below(2 * US as u64) as i64, TimestampSource::Header(TIME_HEADERS[1]))
        } else {
            (received_at_us, TimestampSource::Server)
        };
        let buy = Buy {
            user_id: user_id as i64,
            promotion_id: promotion_id as i64,
            product_id: product_id as i64,
            quantity: Quantity::new(quantity as i64).expect("generated quantities are valid"),
            unit_price_cents: price.map(|p| p as i64),
        };
        let ip = user_id as u32;
        BuyRecord {
            buy,
            ip_address: format!("10.{}.{}.{}", (ip >> 16) & 0xff, (ip >> 8) & 0xff, ip & 0xff),
            timestamp_us,
            received_at_us,
            timestamp_source,
            idempotency_key: None,
        }
    }
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: load sqlite:PATH N [DAYS] [SEED] [VIEWS_PER_BUY]";
    let url = args.first().ok_or(usage)?;
    let n: u64 = args.get(1).and_then(|n| n.replace('_', "").parse().ok()).ok_or(usage)?;
    let days: u32 = args.get(2).map_or(Ok(7), |d| d.parse()).ok().filter(|&d| d >= 1).ok_or(usage)?;
    let seed: u64 = args.get(3).map_or(Ok(42), |s| s.parse()).map_err(|_| usage)?;
    let views_per_buy: u64 = args.get(4).map_or(Ok(0), |s| s.parse()).map_err(|_| usage)?;
    // The facts alone, as fast as the log takes them; the views are built once at the end, with
    // `rebuild-views`' code, so the service starts on views that hold every buy.
    let url = StoreUrl::parse(url)?;
    let store = store::open_log(&url).map_err(|e| buy_tracker::telemetry::error_chain(&e))?;

    let end_us = chrono::Utc::now().timestamp_micros();
    let mut generator = Generator {
        rng: Rng(seed),
        promotions: Zipf::new(PROMOTIONS, 1.0),
        products: Zipf::new(PRODUCTS, 1.1),
        arrivals: Arrivals::new(end_us, days),
        total: n,
    };
    let (tx, rx) = sync_channel::<(Vec<BuyRecord>, Vec<PageViewRecord>)>(2);
    let producer = std::thread::spawn(move || {
        let mut i = 0;
        while i < n {
            let size = BATCH.min((n - i) as usize);
            let batch: Vec<BuyRecord> = (i..i + size as u64).map(|k| generator.record(k)).collect();
            let mut views = Vec::with_capacity(size * views_per_buy as usize);
            for buy in &batch {
                generator.views(buy, views_per_buy, &mut views);
            }
            i += size as u64;
            if tx.send((batch, views)).is_err() {
                return;
            }
        }
    });

    let started = Instant::now();
    let mut loaded = 0u64;
    let mut last_report = Instant::now();
    let mut window = (Instant::now(), 0u64);
    let mut commit_s = 0.0;
    let mut viewed = 0u64;
    for (buys, views) in rx {
        let size = buys.len() as u64;
        viewed += views.len() as u64;
        let t = Instant::now();
        let mut writes = vec![Submission { facts: Facts::Buys(buys), idempotency: None }];
        if !views.is_empty() {
            writes.push(Submission { facts: Facts::Views(views), idempotency: None });
        }
        store
            .commit(&writes, chrono::Utc::now().timestamp_micros())
            .map_err(|e| format!("commit failed after {loaded} buys: {e}"))?;
        commit_s += t.elapsed().as_secs_f64();
        loaded += size;
        if last_report.elapsed().as_secs() >= 10 {
            let rate = (loaded - window.1) as f64 / window.0.elapsed().as_secs_f64();
            eprintln!("  {loaded} buys, {:.0} s, {rate:.0} buys/s over the last 10 s", started.elapsed().as_secs_f64());
            last_report = Instant::now();
            window = (Instant::now(), loaded);
        }
    }
    producer.join().map_err(|_| "the generator thread panicked")?;
    let seconds = started.elapsed().as_secs_f64();
    // Close the store as the service does on shutdown: the checkpointer thread notices within
    // 250 ms and closes the last connection, which checkpoints and removes the WAL, so the server
    // starts on a clean file.
    drop(store);
    std::thread::sleep(std::time::Duration::from_millis(400));
    let rebuilding = Instant::now();
    let applied = store::rebuild_views(&url, None).map_err(|e| buy_tracker::telemetry::error_chain(&e))?;
    let rebuild_s = rebuilding.elapsed().as_secs_f64();
    println!(
        "RESULT buys={loaded} page_views={viewed} seconds={seconds:.2} buys_per_s={:.0} commit_seconds={commit_s:.2} \
         views_rebuilt={applied} rebuild_seconds={rebuild_s:.2}",
        loaded as f64 / seconds
    );
    Ok(())
}
