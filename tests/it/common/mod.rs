//! Test harness: the real service bound to port 0 on a fresh store in its own temp dir, either
//! in-process (fast, most tests) or as the real binary (signals, kills, CLI).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use buy_tracker::app::Application;
use buy_tracker::cli::Config;
use buy_tracker::store::StoreUrl;
use serde_json::{Value, json};

pub mod postgres_db;

/// Which store a test body runs on.
#[derive(Debug, Clone, Copy)]
pub enum StoreKind {
    /// A SQLite file (the log of facts) with its views beside it.
    Sqlite,
    /// The same in memory.
    Memory,
    /// A fresh database on the server named by `BUY_TRACKER_TEST_POSTGRES_URL` (see
    /// [`postgres_db`]), dropped when the test ends.
    Postgres,
}

/// A running in-process service.
pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    /// The store's folder, removed when the app is dropped.
    _dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestApp {
    /// Start on `kind` with default settings.
    pub async fn spawn(kind: StoreKind) -> TestApp {
        Self::spawn_with(kind, |_| {}).await
    }

    /// Start on `kind` with the service's clock stopped at `now` (time as an input: reads and
    /// the request-time rules see exactly that instant).
    pub async fn spawn_at(kind: StoreKind, now: chrono::DateTime<chrono::Utc>) -> TestApp {
        Self::start(kind, |_| {}, std::sync::Arc::new(buy_tracker::clock::FixedClock(now))).await
    }

    /// Start on `kind`, letting the test adjust the configuration.
    pub async fn spawn_with(kind: StoreKind, adjust: impl FnOnce(&mut Config)) -> TestApp {
        Self::start(kind, adjust, std::sync::Arc::new(buy_tracker::clock::SystemClock)).await
    }

    async fn start(
        kind: StoreKind,
        adjust: impl FnOnce(&mut Config),
        clock: std::sync::Arc<dyn buy_tracker::clock::Clock>,
    ) -> TestApp {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = match kind {
            StoreKind::Sqlite => StoreUrl::Sqlite(dir.path().join("data/buys.db")),
            StoreKind::Memory => StoreUrl::Memory,
            StoreKind::Postgres => StoreUrl::Postgres(postgres_db::fresh_database_url()),
        };
        let mut config = Config::for_tests(url);
        adjust(&mut config);
        let app = Application::build_with_clock(&config, clock).await.expect("app builds");
        let addr = app.local_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until(async {
            let _ = rx.await;
        }));
        TestApp { addr, client: reqwest::Client::new(), _dir: dir, shutdown: Some(tx), task: Some(task) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client.post(self.url(path)).json(body).send().await.expect("request")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("request")
    }

    pub async fn get_json(&self, path: &str) -> Value {
        self.get(path).await.json().await.expect("json")
    }

    /// Graceful shutdown, as on SIGTERM.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server result");
        }
    }
}

/// A valid buy body.
pub fn buy(user_id: i64, promotion_id: i64, product_id: i64, quantity: i64) -> Value {
    json!({"user_id": user_id, "promotion_id": promotion_id, "product_id": product_id, "product_quantity": quantity})
}

/// Post `n` buys at once (buy `i` is `buy(i, i % 7, i % 11, 1 + i % 3)`, sent to
/// `bases[i % bases.len()]`), at most `in_flight` at a time; each must be answered 200. Returns
/// their sequence numbers, sorted.
pub async fn concurrent_buys(client: &reqwest::Client, bases: &[String], n: i64, in_flight: usize) -> Vec<i64> {
    let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(in_flight));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let url = format!("{}/buy", bases[i as usize % bases.len()]);
            let request = client.post(url).json(&buy(i, i % 7, i % 11, 1 + i % 3));
            let semaphore = semaphore.clone();
            tokio::spawn(async move {
                let _permit = semaphore.acquire().await.unwrap();
                let response = request.send().await.expect("request");
                assert_eq!(response.status(), 200);
                response.json::<Value>().await.unwrap()["buy_count"].as_i64().unwrap()
            })
        })
        .collect();
    let mut counts = Vec::with_capacity(tasks.len());
    for task in tasks {
        counts.push(task.await.unwrap());
    }
    counts.sort_unstable();
    counts
}

/// Generate one `#[tokio::test]` per store for a test body `async fn name(kind: StoreKind)`.
#[macro_export]
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::common::StoreKind::Sqlite).await })*
        }
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::common::StoreKind::Memory).await })*
        }
        /// Skipped (with a SKIP line) unless `BUY_TRACKER_TEST_POSTGRES_URL` names a server.
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if $crate::common::postgres_db::server_or_skip().is_some() {
                    $crate::common::postgres_db::scope(super::$name($crate::common::StoreKind::Postgres)).await
                }
            })*
        }
    };
}

/// The real binary, started as a child process.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub lines: mpsc::Receiver<String>,
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_buy-tracker"))
}

/// The binary on port 0 of loopback with `database_url` and `extra` arguments, output piped.
pub fn server_command(database_url: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(binary());
    command
        .args(["--host", "127.0.0.1", "--port", "0", "--database-url", database_url])
        .args(extra)
        // The machine's settings must not leak in (keys would make writes 401; a quieter
        // RUST_LOG would hide the address line).
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .env_remove("BUY_TRACKER_WRITE_KEYS")
        .env_remove("BUY_TRACKER_READ_KEYS")
        .env_remove("BUY_TRACKER_TRUSTED_PROXIES")
        .env_remove("BUY_TRACKER_LOG_FORMAT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// A started binary whose address is not known yet (so several can start at once).
pub struct Starting {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Starting {
    /// Spawn the binary on `database_url`; its stdout and stderr lines arrive on a channel.
    pub fn spawn(database_url: &str, extra: &[&str]) -> Starting {
        let mut child = server_command(database_url, extra).spawn().expect("binary starts");
        let (tx, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Starting { child, lines }
    }

    /// Wait until `deadline` for the `listening on http://ADDR:PORT` line; on failure the child is
    /// killed and the test panics with what it logged.
    pub fn listening(mut self, deadline: std::time::Instant) -> Server {
        let mut seen = Vec::new();
        let addr = loop {
            let Ok(line) = self.lines.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            else {
                break None;
            };
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr: String = rest.chars().take_while(|c| !matches!(c, '"' | ' ')).collect();
                break addr.parse().ok();
            }
            seen.push(line);
        };
        let Some(addr) = addr else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            panic!("the server did not log a valid `listening on` address in time:\n{}", seen.join("\n"));
        };
        Server { child: self.child, addr, lines: self.lines }
    }
}

impl Server {
    /// Start the binary on port 0 with a SQLite file at `db`, plus `extra` arguments; waits for
    /// the `listening on http://ADDR:PORT` line.
    pub fn start(db: &Path, extra: &[&str]) -> Server {
        Self::start_url(&format!("sqlite:{}", db.display()), extra)
    }

    /// As [`Server::start`], on any database URL.
    pub fn start_url(database_url: &str, extra: &[&str]) -> Server {
        Starting::spawn(database_url, extra).listening(std::time::Instant::now() + Duration::from_secs(20))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Send a signal (by name, e.g. "TERM", "KILL") to the process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status();
        assert!(status.expect("kill runs").success());
    }

    /// Wait for exit; returns the exit code (None if killed by a signal).
    pub fn wait(mut self, timeout: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(std::time::Instant::now() < deadline, "server did not exit within {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
