//! Black-box tests of `docs/reference.md` §2 "A 200 means the buy is durable", on the real binary and a SQLite
//! file: acknowledged buys survive `kill -9` and graceful stops, and no sequence number is ever
//! handed out twice. Written for slow, shared machines: generous timeouts, no timing assertions.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::{Server, buy};
use serde_json::Value;

/// Per-request timeout: far above anything a healthy server needs, so only a hang reaches it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a graceful stop may take before the test calls it a hang.
const GRACEFUL_STOP: Duration = Duration::from_secs(15);
/// How long to wait for a flood to get going before signalling anyway.
const FLOOD_START_TIMEOUT: Duration = Duration::from_secs(60);

/// What the client saw for one `POST /buy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// 200 with this `buy_count`: acknowledged, so it must be durable.
    Acked(i64),
    /// Any other status.
    Status(u16),
    /// The connection failed or closed before a whole answer arrived (refused, reset, cut off).
    ConnectionError,
    /// No answer within [`REQUEST_TIMEOUT`].
    TimedOut,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().expect("client")
}

/// Post one buy and classify the answer.
async fn post_buy(client: &reqwest::Client, url: &str, n: usize) -> Outcome {
    let n = n as i64;
    let response = match client.post(url).json(&buy(n % 1000, n % 7, n % 13, 1 + n % 5)).send().await {
        Ok(response) => response,
        Err(e) if e.is_timeout() => return Outcome::TimedOut,
        Err(_) => return Outcome::ConnectionError,
    };
    let status = response.status().as_u16();
    if status != 200 {
        return Outcome::Status(status);
    }
    match response.json::<Value>().await {
        Ok(body) => {
            Outcome::Acked(body["buy_count"].as_i64().unwrap_or_else(|| panic!("200 without buy_count: {body}")))
        }
        // The status line arrived but not the body: the client never learnt its sequence number.
        Err(e) if e.is_timeout() => Outcome::TimedOut,
        Err(_) => Outcome::ConnectionError,
    }
}

/// Post up to `max` buys to `server` from `tasks` concurrent tasks. A task stops at its first
/// connection error (the server has gone away). `acks` counts the 200s as they arrive, so the
/// caller can signal the server while the flood is in flight.
async fn flood(url: String, max: usize, tasks: usize, acks: Arc<AtomicUsize>) -> Vec<Outcome> {
    let client = client();
    let next = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (client, url, next, acks) = (client.clone(), url.clone(), next.clone(), acks.clone());
        handles.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= max {
                    break;
                }
                let outcome = post_buy(&client, &url, n).await;
                seen.push(outcome);
                match outcome {
                    Outcome::Acked(_) => {
                        acks.fetch_add(1, Ordering::Relaxed);
                    }
                    Outcome::ConnectionError => break,
                    _ => {}
                }
            }
            seen
        }));
    }
    let mut outcomes = Vec::new();
    for handle in handles {
        outcomes.extend(handle.await.expect("flood task"));
    }
    outcomes
}

/// Start a flood of up to `max` buys from `tasks` tasks, wait until `threshold` of them were
/// acknowledged (or the flood ended, or a long while passed), send `signal` to the server while
/// the rest is in flight, and return every outcome of the flood.
async fn flood_and_signal(server: &Server, signal: &str, max: usize, tasks: usize, threshold: usize) -> Vec<Outcome> {
    let acks = Arc::new(AtomicUsize::new(0));
    let running = tokio::spawn(flood(server.url("/buy"), max, tasks, acks.clone()));
    let deadline = Instant::now() + FLOOD_START_TIMEOUT;
    while acks.load(Ordering::Relaxed) < threshold && !running.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    server.signal(signal);
    running.await.expect("flood")
}

/// The `buy_count`s acknowledged among `outcomes`.
fn acked(outcomes: &[Outcome]) -> Vec<i64> {
    outcomes.iter().filter_map(|o| if let Outcome::Acked(n) = o { Some(*n) } else { None }).collect()
}

/// A one-line account of `outcomes`, for the test's log.
fn summary(outcomes: &[Outcome]) -> String {
    let count = |f: fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
    format!(
        "{} requests: {} acknowledged, {} 503, {} other statuses, {} connection errors, {} timeouts",
        outcomes.len(),
        count(|o| matches!(o, Outcome::Acked(_))),
        count(|o| *o == Outcome::Status(503)),
        count(|o| matches!(o, Outcome::Status(s) if *s != 503)),
        count(|o| *o == Outcome::ConnectionError),
        count(|o| *o == Outcome::TimedOut),
    )
}

/// Wait (off the async workers) for the server to exit; returns its exit code.
async fn exit_code(server: Server, timeout: Duration) -> Option<i32> {
    tokio::task::spawn_blocking(move || server.wait(timeout)).await.expect("wait")
}

/// Start the binary on `db` (off the async workers, as it blocks until the address is logged).
async fn start(db: &Path) -> Server {
    let db = db.to_path_buf();
    tokio::task::spawn_blocking(move || Server::start(&db, &[])).await.expect("start")
}

/// `GET /stats` → `total_buys`.
async fn total_buys(server: &Server) -> i64 {
    let response = client().get(server.url("/stats")).send().await.expect("GET /stats answers");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("JSON stats");
    body["total_buys"].as_i64().unwrap_or_else(|| panic!("no total_buys in {body}"))
}

/// Add `counts` to `all`, failing if any was already handed out (here or before).
fn record_unique(all: &mut HashSet<i64>, counts: &[i64]) {
    for &n in counts {
        assert!(all.insert(n), "buy_count {n} was acknowledged twice");
    }
}

/// After a restart on the same file: the store holds at least every acknowledged buy, every
/// acknowledged `buy_count` lies within the total, and the next buy continues the sequence at
/// `total + 1` (no gap, no reuse). Returns the total and records the new buy's count.
async fn check_after_restart(server: &Server, all: &mut HashSet<i64>) -> i64 {
    let total = total_buys(server).await;
    assert!(total >= all.len() as i64, "{} buys were acknowledged but the store holds {total}", all.len());
    if let Some(&max) = all.iter().max() {
        assert!(max <= total, "buy_count {max} was acknowledged but the store holds {total}");
    }
    let next = post_buy(&client(), &server.url("/buy"), 0).await;
    assert_eq!(next, Outcome::Acked(total + 1), "the sequence does not continue after {total}");
    record_unique(all, &[total + 1]);
    total
}

/// `kill -9` loses no acknowledged buy: three times, 500 buys from 32 tasks are acknowledged, the
/// process is killed while a further flood is in flight, and after a restart on the same file every
/// acknowledged buy is there and the sequence continues without reuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_buys_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("buys.db");
    let mut all = HashSet::new();
    let mut server = start(&db).await;
    for cycle in 0..3 {
        let outcomes = flood(server.url("/buy"), 500, 32, Arc::new(AtomicUsize::new(0))).await;
        let before_kill = acked(&outcomes);
        assert!(!before_kill.is_empty(), "cycle {cycle}: no buy acknowledged: {outcomes:?}");
        record_unique(&mut all, &before_kill);

        let outcomes = flood_and_signal(&server, "KILL", usize::MAX, 32, 50).await;
        record_unique(&mut all, &acked(&outcomes));
        eprintln!("cycle {cycle}: {} acknowledged, then {}", before_kill.len(), summary(&outcomes));
        assert_eq!(exit_code(server, Duration::from_secs(60)).await, None, "cycle {cycle}: not killed by the signal");

        server = start(&db).await;
        check_after_restart(&server, &mut all).await;
    }
    server.signal("TERM");
    assert_eq!(exit_code(server, Duration::from_secs(60)).await, Some(0));
}

/// SIGTERM in the middle of a flood of 2000 buys from 64 tasks is a graceful stop: the process
/// exits 0 within 15 s, every request gets a 200, a 503 or a connection error (nothing else, no
/// hang), and after a restart every 200 is in the store and no buy is there that was not
/// answered (at most the 200s plus the 503s, whose outcome is unknown).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_a_flood_keeps_every_acknowledged_buy() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("buys.db");
    let server = start(&db).await;
    let acks = Arc::new(AtomicUsize::new(0));
    let running = tokio::spawn(flood(server.url("/buy"), 2000, 64, acks.clone()));
    let deadline = Instant::now() + FLOOD_START_TIMEOUT;
    while acks.load(Ordering::Relaxed) < 500 && !running.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.signal("TERM");
    // The flood keeps going while the server drains and exits.
    assert_eq!(exit_code(server, GRACEFUL_STOP).await, Some(0), "SIGTERM did not stop the service cleanly");
    let outcomes = running.await.expect("flood");
    eprintln!("flood around SIGTERM: {}", summary(&outcomes));

    let unexpected: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| !matches!(o, Outcome::Acked(_) | Outcome::Status(503) | Outcome::ConnectionError))
        .collect();
    assert!(unexpected.is_empty(), "answers other than 200, 503 or a closed connection: {unexpected:?}");
    let counts = acked(&outcomes);
    let unavailable = outcomes.iter().filter(|o| **o == Outcome::Status(503)).count() as i64;
    let mut all = HashSet::new();
    record_unique(&mut all, &counts);

    let server = start(&db).await;
    let total = check_after_restart(&server, &mut all).await;
    assert!(
        total <= counts.len() as i64 + unavailable,
        "{total} buys stored but only {} answered 200 and {unavailable} 503: a received request went unanswered",
        counts.len()
    );
    server.signal("TERM");
    assert_eq!(exit_code(server, GRACEFUL_STOP).await, Some(0));
}

/// No sequence number is handed out twice and no acknowledged buy is lost across restarts of
/// either kind: 25 cycles (20 `kill -9`, 5 SIGTERM) during a flood; after each restart the store
/// opens clean and holds every acknowledged buy, and every `buy_count` acknowledged over all of
/// them is distinct and within the final total.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn buy_counts_are_unique_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("buys.db");
    let mut all = HashSet::new();
    let mut server = start(&db).await;
    let signals = (0..25).map(|i| if i % 5 == 4 { "TERM" } else { "KILL" });
    for (cycle, signal) in signals.enumerate() {
        let outcomes = flood_and_signal(&server, signal, usize::MAX, 16, 100).await;
        let counts = acked(&outcomes);
        eprintln!("cycle {cycle}, {signal}: {}", summary(&outcomes));
        assert!(!counts.is_empty(), "cycle {cycle}: no buy acknowledged before {signal}: {outcomes:?}");
        record_unique(&mut all, &counts);
        let expected = if signal == "KILL" { None } else { Some(0) };
        assert_eq!(exit_code(server, Duration::from_secs(60)).await, expected, "cycle {cycle}: exit after {signal}");
        server = start(&db).await;
        check_after_restart(&server, &mut all).await;
    }
    let total = total_buys(&server).await;
    assert!(all.iter().all(|&n| (1..=total).contains(&n)), "a buy_count lies outside 1..={total}");
    // Every acknowledged buy is in the store, row by row.
    let export = client().get(server.url("/export?format=csv")).send().await.unwrap().text().await.unwrap();
    let stored: HashSet<i64> = export.lines().skip(1).map(|l| l.split(',').next().unwrap().parse().unwrap()).collect();
    assert_eq!(stored.len() as i64, total, "the export holds every buy once");
    let lost = all.iter().filter(|n| !stored.contains(n)).count();
    assert_eq!(lost, 0, "acknowledged buys missing from the store");
    eprintln!("25 restarts (20 kill -9): {} acknowledged buys, {lost} lost, store total {total}", all.len());
    server.signal("TERM");
    assert_eq!(exit_code(server, Duration::from_secs(60)).await, Some(0));
}

/// Every analytic a read can ask for, minus what moves with the clock (uptime, current time).
async fn analytics(server: &Server) -> Value {
    let client = client();
    let get = |path: String| {
        let request = client.get(server.url(&path)).send();
        async move {
            let response = request.await.expect("the server answers");
            assert_eq!(response.status(), 200, "{path}");
            let mut body: Value = response.json().await.expect("json");
            for moving in ["uptime_seconds", "uptime_formatted", "current_time"] {
                body.as_object_mut().map(|o| o.remove(moving));
            }
            body
        }
    };
    let mut all = serde_json::Map::new();
    all.insert("stats".into(), get("/stats?timeframe_hours=168".into()).await);
    all.insert("promotions".into(), get("/promotions?limit=1000&timeframe_hours=168".into()).await);
    for p in 0..7 {
        all.insert(format!("promotion {p}"), get(format!("/promotions/{p}/stats?timeframe_hours=168")).await);
        let series = get(format!("/stats/timeseries?bucket=hour&timeframe_hours=168&promotion_id={p}")).await;
        // Only the buckets that hold buys: the window's first bucket moves with the clock.
        let busy: Vec<&Value> = series["points"].as_array().unwrap().iter().filter(|b| b["buys"] != 0).collect();
        all.insert(format!("series {p}"), serde_json::json!(busy));
        // The customer rankings: the rebuild creates their indexes after filling the table.
        for order in ["revenue", "units", "buys"] {
            let page = get(format!("/promotions/{p}/customers?order_by={order}&limit=1000")).await;
            all.insert(format!("customers {p} by {order}"), page);
        }
    }
    Value::Object(all)
}

/// The views through `kill -9` under load: after each crash the views resume from their
/// checkpoint and catch up with the log; at the end every analytic equals that of views rebuilt
/// from the facts alone (`buy-tracker rebuild-views`), and counts every acknowledged buy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_after_kill_9_loops_equal_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("buys.db");
    let mut acknowledged = 0;
    for cycle in 0..5 {
        let server = Server::start(&db, &[]);
        let outcomes = flood_and_signal(&server, "KILL", 4_000, 16, 200).await;
        acknowledged += acked(&outcomes).len();
        assert_eq!(server.wait(GRACEFUL_STOP), None, "cycle {cycle}: killed");
    }
    let server = Server::start(&db, &[]);
    let before = analytics(&server).await;
    let total = before["stats"]["total_buys"].as_i64().unwrap();
    assert!(total as usize >= acknowledged, "{total} recorded, {acknowledged} acknowledged");
    let beside = std::process::Command::new(crate::common::binary())
        .args(["rebuild-views", "--database-url"])
        .arg(format!("sqlite:{}", db.display()))
        .output()
        .expect("rebuild-views runs");
    assert!(!beside.status.success(), "a rebuild beside the running service is refused");
    assert!(String::from_utf8_lossy(&beside.stderr).contains("another buy-tracker process uses these views"));
    server.signal("TERM");
    assert_eq!(server.wait(GRACEFUL_STOP), Some(0));
    let rebuilt = std::process::Command::new(crate::common::binary())
        .args(["rebuild-views", "--database-url"])
        .arg(format!("sqlite:{}", db.display()))
        .output()
        .expect("rebuild-views runs");
    assert!(rebuilt.status.success(), "{}", String::from_utf8_lossy(&rebuilt.stderr));
    let said = String::from_utf8_lossy(&rebuilt.stdout);
    assert!(said.contains(&format!("from {total} facts")), "{said}");
    let server = Server::start(&db, &[]);
    assert_eq!(analytics(&server).await, before, "views kept through 5 kill -9 equal views rebuilt from the facts");
    eprintln!("5 kill -9 cycles: {acknowledged} acknowledged, {total} recorded; {}", said.trim());
}
