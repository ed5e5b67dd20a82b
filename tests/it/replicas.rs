//! Several replicas of the real binary on one PostgreSQL database act as one service (`docs/reference.md` §7):
//! one count, unique gap-free sequence numbers, global idempotency; and a PostgreSQL outage gives
//! quick errors, after which the service recovers by itself.
//!
//! Each test creates its own database on the server named by `BUY_TRACKER_TEST_POSTGRES_URL` and
//! is skipped (with a SKIP line) without it; see `common/postgres_db.rs`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::postgres_db::{TestDatabase, server_or_skip};
use crate::common::{Server, Starting, buy, concurrent_buys};
use serde_json::{Value, json};

/// Start `n` replicas of the binary on `database_url` all at once (so their migrations race, as
/// replicas started together by an orchestrator do), and wait until each listens.
fn start_replicas(database_url: &str, n: usize) -> Vec<Server> {
    start_replicas_with(database_url, n, &[])
}

/// As [`start_replicas`], with `extra` arguments.
fn start_replicas_with(database_url: &str, n: usize, extra: &[&str]) -> Vec<Server> {
    let starting: Vec<Starting> = (0..n).map(|_| Starting::spawn(database_url, extra)).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    starting.into_iter().map(|replica| replica.listening(deadline)).collect()
}

/// The base URLs of `servers` (a `Server` holds its log receiver, which cannot cross tasks).
fn bases(servers: &[Server]) -> Arc<Vec<String>> {
    Arc::new(servers.iter().map(|s| s.url("")).collect())
}

async fn post_buy(client: &reqwest::Client, base: &str, body: &Value, key: Option<&str>) -> reqwest::Response {
    let mut request = client.post(format!("{base}/buy")).json(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    request.send().await.expect("request")
}

async fn get_json(client: &reqwest::Client, base: &str, path: &str) -> Value {
    client.get(format!("{base}{path}")).send().await.expect("request").json().await.expect("json")
}

/// Concurrent buys spread over three replicas: every one acknowledged, an exact total seen by
/// every replica, and sequence numbers 1..=n, each once. Each replica's views follow every
/// replica's facts in the shared log, and its reads wait for the shared counter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_tailing_the_shared_log_share_one_gap_free_sequence() {
    let Some(server) = server_or_skip() else { return };
    let database = TestDatabase::create(&server);
    let servers = start_replicas(&database.url, 3);
    let replicas = bases(&servers);
    let client = reqwest::Client::new();
    let n: i64 = 1500;
    let counts = concurrent_buys(&client, &replicas, n, 96).await;
    assert_eq!(counts, (1..=n).collect::<Vec<_>>(), "sequence numbers are unique and gap-free");
    let units: i64 = (0..n).map(|i| 1 + i % 3).sum();
    for replica in replicas.iter() {
        let stats = get_json(&client, replica, "/stats").await;
        assert_eq!(stats["total_buys"], n);
        assert_eq!(stats["n_recent_buys"], n);
        let promotions = get_json(&client, replica, "/promotions").await;
        assert_eq!(promotions["total"], 7);
        let buys: i64 =
            promotions["promotions"].as_array().unwrap().iter().map(|p| p["total_buys"].as_i64().unwrap()).sum();
        let promotion_units: i64 =
            promotions["promotions"].as_array().unwrap().iter().map(|p| p["total_units"].as_i64().unwrap()).sum();
        assert_eq!((buys, promotion_units), (n, units));
    }
    // Each replica's views applied every replica's facts.
    for p in 0..7 {
        let of_p: Vec<i64> = (0..n).filter(|i| i % 7 == p).collect();
        let stats = get_json(&client, &replicas[p as usize % 3], &format!("/promotions/{p}/stats")).await;
        assert_eq!(stats["total_buys"], of_p.len());
        assert_eq!(stats["n_recent_buys"], of_p.len());
        assert_eq!(stats["unique_buyers"], of_p.len(), "every buyer of promotion {p} is distinct");
        assert_eq!(stats["total_units"], of_p.iter().map(|i| 1 + i % 3).sum::<i64>());
        let top = stats["top_products"].as_array().unwrap();
        for product in top {
            let id = product["product_id"].as_i64().unwrap();
            let expected = of_p.iter().filter(|i| *i % 11 == id).count();
            assert_eq!(product["buys"], expected, "promotion {p}, product {id}");
        }
    }
    let series = get_json(&client, &replicas[1], "/stats/timeseries?bucket=minute&timeframe_hours=1").await;
    let in_series: i64 = series["points"].as_array().unwrap().iter().map(|b| b["buys"].as_i64().unwrap()).sum();
    assert_eq!(in_series, n);
    // The export of any replica lists every buy once, in sequence order.
    let csv = client.get(format!("{}/export?format=csv", replicas[2])).send().await.unwrap().text().await.unwrap();
    let exported: Vec<i64> = csv.lines().skip(1).map(|l| l.split(',').next().unwrap().parse().unwrap()).collect();
    assert_eq!(exported, (1..=n).collect::<Vec<_>>());
}

/// A replica keeps its views in the file `--views-path` names: restarted, it
/// resumes from them; a second replica given the same file is refused, as is a rebuild beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_keeps_its_views_in_a_file_of_its_own() {
    let Some(server) = server_or_skip() else { return };
    let database = TestDatabase::create(&server);
    let dir = tempfile::tempdir().unwrap();
    let views = dir.path().join("replica-1.views.db");
    let views_arg = views.display().to_string();
    let args = ["--views-path", views_arg.as_str()];
    let client = reqwest::Client::new();
    let first = start_replicas_with(&database.url, 1, &args).remove(0);
    let n = 300;
    concurrent_buys(&client, &[first.url("")], n, 32).await;
    assert_eq!(get_json(&client, &first.url(""), "/promotions/3/stats").await["total_buys"], n / 7 + 1);
    // The same views file for a second replica: refused, naming the file.
    let refused = crate::common::server_command(&database.url, &args).output().expect("the binary runs");
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("another buy-tracker process uses these views"), "{said}");
    first.signal("TERM");
    assert_eq!(first.wait(Duration::from_secs(15)), Some(0));
    assert!(views.is_file(), "the views were kept in their file");
    // Rebuilt with the replica stopped: the migrations it runs first say nothing at info (the
    // server's "already exists, skipping" notices are debug lines).
    let rebuilt = std::process::Command::new(crate::common::binary())
        .args(["rebuild-views", "--database-url", database.url.as_str()])
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("rebuild-views runs");
    let said = format!("{}{}", String::from_utf8_lossy(&rebuilt.stdout), String::from_utf8_lossy(&rebuilt.stderr));
    assert!(rebuilt.status.success(), "{said}");
    assert!(said.contains(&format!("rebuilt the views from {n} facts")), "{said}");
    assert!(!said.contains("already exists"), "{said}");
    let again = start_replicas_with(&database.url, 1, &args).remove(0);
    let stats = get_json(&client, &again.url(""), "/promotions/3/stats").await;
    assert_eq!(stats["total_buys"], n / 7 + 1, "{stats}");
    assert_eq!(get_json(&client, &again.url(""), "/stats").await["total_buys"], n);
}

/// A key recorded on one replica is replayed by another, refused there with another body, and a
/// key sent to every replica at the same moment is recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_are_global() {
    let Some(server) = server_or_skip() else { return };
    let database = TestDatabase::create(&server);
    let servers = start_replicas(&database.url, 3);
    let replicas = bases(&servers);
    let client = reqwest::Client::new();

    let first = post_buy(&client, &replicas[0], &buy(1, 2, 3, 4), Some("order-1")).await;
    assert_eq!(first.status(), 200);
    assert!(!first.headers().contains_key("idempotent-replayed"));
    let first: Value = first.json().await.unwrap();
    let again = post_buy(&client, &replicas[1], &buy(1, 2, 3, 4), Some("order-1")).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    let other = post_buy(&client, &replicas[2], &buy(1, 2, 3, 5), Some("order-1")).await;
    assert_eq!(other.status(), 422);
    assert_eq!(get_json(&client, &replicas[2], "/stats").await["total_buys"], 1);

    // Races: for each key, one request per replica at once. Exactly one is recorded; the others
    // replay it (or get 409 while it is in flight on their own replica).
    let keys = 20;
    let mut tasks = Vec::new();
    for k in 0..keys {
        for r in 0..replicas.len() {
            let (client, replicas) = (client.clone(), replicas.clone());
            tasks.push(tokio::spawn(async move {
                let key = format!("race-{k}");
                let response = post_buy(&client, &replicas[r], &buy(k, 9, 9, 1), Some(&key)).await;
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                (k, status, body["buy_count"].as_i64())
            }));
        }
    }
    let mut by_key: Vec<HashSet<i64>> = vec![HashSet::new(); keys as usize];
    for task in tasks {
        let (k, status, buy_count) = task.await.unwrap();
        assert!(status == 200 || status == 409, "key {k}: status {status}");
        if let Some(buy_count) = buy_count {
            by_key[k as usize].insert(buy_count);
        }
    }
    for (k, counts) in by_key.iter().enumerate() {
        assert_eq!(counts.len(), 1, "key race-{k} answered with different sequence numbers: {counts:?}");
    }
    let stats = get_json(&client, &replicas[0], "/stats").await;
    assert_eq!(stats["total_buys"], 1 + keys);
}

/// Refunds of one buy sent to every replica at once give back exactly its quantity, numbered
/// without gaps across replicas: each locks the buy's row before deciding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refunds_on_every_replica_never_exceed_the_buy() {
    let Some(server) = server_or_skip() else { return };
    let database = TestDatabase::create(&server);
    let servers = start_replicas(&database.url, 3);
    let replicas = bases(&servers);
    let client = reqwest::Client::new();
    assert_eq!(post_buy(&client, &replicas[0], &buy(1, 2, 3, 12), None).await.status(), 200);
    let mut tasks = Vec::new();
    for i in 0..36 {
        let (client, replicas) = (client.clone(), replicas.clone());
        tasks.push(tokio::spawn(async move {
            let body = json!({"buy_count": 1, "product_quantity": 1});
            let response = client.post(format!("{}/refunds", replicas[i % 3])).json(&body).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or(Value::Null))
        }));
    }
    let mut numbers = Vec::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        match status {
            200 => numbers.push(body["refund_count"].as_i64().unwrap()),
            422 => {}
            other => panic!("status {other}: {body}"),
        }
    }
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=12).collect::<Vec<_>>());
    for base in replicas.iter() {
        assert_eq!(get_json(&client, base, "/promotions/2/stats").await["refunded_units"], 12);
    }
}

/// What the test proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Forwards both ways.
    Up,
    /// Holds every byte, as a frozen server does: connections stay open, nothing is answered.
    Stalled,
    /// Closes every open connection and every new one at once, as a network or server outage.
    Down,
}

/// A TCP proxy in front of PostgreSQL that the test can stall or cut.
struct Proxy {
    addr: SocketAddr,
    mode: tokio::sync::watch::Sender<Mode>,
}

/// Wait until traffic may flow; `false` when the connection must close.
async fn flowing(mode: &mut tokio::sync::watch::Receiver<Mode>) -> bool {
    loop {
        let now = *mode.borrow_and_update();
        match now {
            Mode::Up => return true,
            Mode::Down => return false,
            Mode::Stalled => {
                if mode.changed().await.is_err() {
                    return false;
                }
            }
        }
    }
}

/// Copy one direction of a proxied connection, obeying the mode.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: tokio::sync::watch::Receiver<Mode>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    while flowing(&mut mode).await {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = mode.changed() => continue,
        };
        if !flowing(&mut mode).await || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, _) = tokio::sync::watch::channel(Mode::Up);
        let modes = mode.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if *modes.borrow() == Mode::Down {
                    continue; // dropped: closed at once
                }
                let Ok(outbound) = tokio::net::TcpStream::connect(target).await else { continue };
                let ((in_read, in_write), (out_read, out_write)) = (inbound.into_split(), outbound.into_split());
                tokio::spawn(pump(in_read, out_write, modes.subscribe()));
                tokio::spawn(pump(out_read, in_write, modes.subscribe()));
            }
        });
        Proxy { addr, mode }
    }

    fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

/// A replica of the binary that reaches the test database through a [`Proxy`].
async fn replica_behind_proxy(server: &str, database: &TestDatabase) -> (Proxy, Vec<Server>) {
    let config: postgres::Config = server.parse().expect("test server URL");
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(host)) => host.clone(),
        _ => "127.0.0.1".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let target = tokio::net::lookup_host((host.as_str(), port)).await.unwrap().next().expect("server address");
    let proxy = Proxy::start(target).await;
    let name = database.url.rsplit('/').next().unwrap().split('?').next().unwrap().to_string();
    let user = config.get_user().unwrap_or("postgres");
    let servers = start_replicas(&format!("postgres://{user}@{}/{name}", proxy.addr), 1);
    (proxy, servers)
}

/// While PostgreSQL is unreachable, writes and /health answer 503 within the contract's 5 s and
/// the process stays up; once it is back, the next requests succeed without a restart and no
/// sequence number was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_gives_quick_errors_then_recovers() {
    let Some(server) = server_or_skip() else { return };
    let database = TestDatabase::create(&server);
    let (proxy, servers) = replica_behind_proxy(&server, &database).await;
    let replica = servers[0].url("");
    let replica = replica.as_str();
    let url = |path: &str| format!("{replica}{path}");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();

    assert_eq!(post_buy(&client, replica, &buy(1, 2, 3, 4), None).await.status(), 200);
    // Warm the read pool, so a stale pooled connection is met after the outage.
    assert_eq!(client.get(url("/health")).send().await.unwrap().status(), 200);

    proxy.set(Mode::Down);
    let mut refused_ids = Vec::new();
    for _ in 0..2 {
        let started = Instant::now();
        let response = post_buy(&client, replica, &buy(1, 2, 3, 4), None).await;
        assert_eq!(response.status(), 503);
        assert!(started.elapsed() < Duration::from_secs(5), "503 took {:?}", started.elapsed());
        refused_ids.push(response.headers()["x-request-id"].to_str().unwrap().to_string());
        assert_fixed_sentence(&response.json::<Value>().await.unwrap());
        let started = Instant::now();
        let health = client.get(url("/health")).send().await.unwrap();
        assert_eq!(health.status(), 503);
        assert!(started.elapsed() < Duration::from_secs(5), "health took {:?}", started.elapsed());
        assert_fixed_sentence(&health.json::<Value>().await.unwrap());
        let stats = client.get(url("/stats")).send().await.unwrap();
        assert_eq!(stats.status(), 503);
        assert_fixed_sentence(&stats.json::<Value>().await.unwrap());
    }
    // The cause the clients were not told is logged under each refused request's id.
    let logged: Vec<String> = servers[0].lines.try_iter().collect();
    for id in &refused_ids {
        let line = logged.iter().find(|l| l.contains(id.as_str()) && l.contains("answered 503"));
        let line = line.unwrap_or_else(|| panic!("no log line of request {id} with its cause:\n{}", logged.join("\n")));
        assert!(line.contains("PostgreSQL"), "{line}");
    }
    assert_eq!(client.get(url("/health/live")).send().await.unwrap().status(), 200);

    proxy.set(Mode::Up);
    let response = post_buy(&client, replica, &buy(1, 2, 3, 4), None).await;
    assert_eq!(response.status(), 200, "the first write after the outage succeeds");
    assert_eq!(response.json::<Value>().await.unwrap()["buy_count"], 2, "failed writes took no number");
    assert_eq!(client.get(url("/health")).send().await.unwrap().status(), 200);
    let stats: Value = client.get(url("/stats")).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats["total_buys"], json!(2));
}

/// A 503's `detail` is one of our fixed sentences: no driver text (SQL states, messages) reaches
/// a client.
fn assert_fixed_sentence(body: &Value) {
    let detail = body["detail"].as_str().unwrap_or_default();
    let fixed = [
        "the store is unavailable; retry",
        "the store is busy; retry",
        "the store did not answer in time; retry",
        "the store did not confirm the write in time; retry with an Idempotency-Key",
        "the store did not confirm the write; it may have been recorded: retry with an Idempotency-Key",
    ];
    assert!(fixed.contains(&detail), "a 503 told the client {body}");
}

/// A server that accepts data but never answers (a frozen process, a stuck disk) gets no request
/// stuck: writes and /health answer 503 within the contract's 5 s, and once it answers again the
/// service goes on with a gap-free sequence (the write cut off may or may not have been recorded,
/// as its 503 said).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_gets_no_request_stuck() {
    let Some(server) = server_or_skip() else { return };
    let database = TestDatabase::create(&server);
    let (proxy, servers) = replica_behind_proxy(&server, &database).await;
    let replica = servers[0].url("");
    let replica = replica.as_str();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();
    assert_eq!(post_buy(&client, replica, &buy(1, 2, 3, 4), None).await.status(), 200);

    proxy.set(Mode::Stalled);
    let started = Instant::now();
    let response = post_buy(&client, replica, &buy(1, 2, 3, 4), None).await;
    assert_eq!(response.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(5), "503 took {:?}", started.elapsed());
    let started = Instant::now();
    assert_eq!(client.get(format!("{replica}/health")).send().await.unwrap().status(), 503);
    assert!(started.elapsed() < Duration::from_secs(5), "health took {:?}", started.elapsed());

    proxy.set(Mode::Up);
    let deadline = Instant::now() + Duration::from_secs(15);
    let last = loop {
        let response = post_buy(&client, replica, &buy(1, 2, 3, 4), None).await;
        if response.status() == 200 {
            break response.json::<Value>().await.unwrap()["buy_count"].as_i64().unwrap();
        }
        assert!(Instant::now() < deadline, "no write succeeded after the server came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!((2..=3).contains(&last), "buy_count {last}");
    let stats = get_json(&client, replica, "/stats").await;
    assert_eq!(stats["total_buys"], last);
    let csv = client.get(format!("{replica}/export?format=csv")).send().await.unwrap().text().await.unwrap();
    let exported: Vec<i64> = csv.lines().skip(1).map(|l| l.split(',').next().unwrap().parse().unwrap()).collect();
    assert_eq!(exported, (1..=last).collect::<Vec<_>>());
}
