//! PostgreSQL killed mid-load and started again, on a throwaway cluster this test creates in a
//! temp dir (`initdb`, `pg_ctl` from the installed server, on a free port; the shared server on
//! 5432 is never touched): writes answer 503 within 5 s while it is down, `/health` says
//! `degraded`, the service recovers by itself, and every buy answered 200 is in the store.
//!
//! Needs PostgreSQL's server binaries and root (to run them as the `postgres` user). Without them
//! the test prints a SKIP line, unless BUY_TRACKER_REQUIRE_POSTGRES=1 (CI).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::{Server, buy};
use serde_json::Value;

fn skip(message: &str) {
    assert!(std::env::var("BUY_TRACKER_REQUIRE_POSTGRES").as_deref() != Ok("1"), "{message}");
    eprintln!("SKIP {message}");
}

/// A PostgreSQL cluster in a temp dir, stopped when dropped.
struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn create() -> Result<Cluster, String> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|_| "no PostgreSQL server binaries in /usr/lib/postgresql".to_string())?
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .find(|b| b.join("initdb").exists())
            .ok_or("no initdb found")?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let data = dir.path().join("data");
        // The server refuses to run as root: the cluster belongs to the postgres user.
        let status = Command::new("chown").args(["-R", "postgres:"]).arg(dir.path()).status();
        if !status.is_ok_and(|s| s.success()) {
            return Err("cannot hand a temp dir to the postgres user (needs root)".into());
        }
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
        let cluster = Cluster { bin, data, port, _dir: dir };
        cluster.as_postgres(
            "initdb",
            &["-D", &cluster.data.display().to_string(), "--auth=trust", "-U", "postgres", "-N"],
        )?;
        cluster.start()?;
        Ok(cluster)
    }

    fn as_postgres(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let output = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(tool))
            .args(args)
            .output()
            .map_err(|e| format!("{tool}: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!("{tool} failed: {}", String::from_utf8_lossy(&output.stderr)))
        }
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let data = self.data.display().to_string();
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on", self.port, self.data.display());
        // A log file of its own: otherwise the server inherits pg_ctl's output pipes and holds
        // them open, and waiting for pg_ctl's output never ends.
        let log = self.data.with_file_name("server.log").display().to_string();
        let mut all = vec!["-D", &data, "-o", &options, "-l", &log, "-w", "-t", "60"];
        all.extend_from_slice(args);
        self.as_postgres("pg_ctl", &all)
    }

    fn start(&self) -> Result<(), String> {
        self.pg_ctl(&["start"])
    }

    /// Kill the server: no shutdown checkpoint, connections cut (as a crash).
    fn kill(&self) -> Result<(), String> {
        self.pg_ctl(&["stop", "-m", "immediate"])
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

fn is_root(path: &Path) -> bool {
    std::fs::metadata(path).is_ok()
        && Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_killed_mid_load_gives_503s_then_recovers_without_loss() {
    if !is_root(Path::new("/usr/lib/postgresql")) {
        return skip("PostgreSQL outage test: needs root and PostgreSQL's server binaries");
    }
    let cluster = match Cluster::create() {
        Ok(cluster) => cluster,
        Err(e) => return skip(&format!("PostgreSQL outage test: {e}")),
    };
    let server = Server::start_url(&cluster.url(), &[]);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let url = server.url("/buy");

    // Sustained load from 8 tasks, each recording what it was told.
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..8i64 {
        let (client, url, stop) = (client.clone(), url.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let (mut acked, mut refused, mut slowest) = (Vec::new(), 0usize, Duration::ZERO);
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let started = Instant::now();
                let response = client.post(&url).json(&buy(t * 1_000_000 + i, t, i % 7, 1)).send().await.unwrap();
                slowest = slowest.max(started.elapsed());
                match response.status().as_u16() {
                    200 => acked.push(response.json::<Value>().await.unwrap()["buy_count"].as_i64().unwrap()),
                    503 => {
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => panic!("unexpected status {other}"),
                }
            }
            (acked, refused, slowest)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.kill().expect("the cluster stops");
    // While it is down: /health says degraded, quickly.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let health = client.get(server.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(5), "health answered in {:?}", started.elapsed());
    assert_eq!(health.json::<Value>().await.unwrap()["status"], "degraded");
    assert_eq!(client.get(server.url("/health/live")).send().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.start().expect("the cluster starts again");
    // Recovery without a restart: a write succeeds within 30 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = client.post(&url).json(&buy(9, 9, 9, 1)).send().await.unwrap();
        if response.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut acked, mut refused, mut slowest) = (Vec::new(), 0, Duration::ZERO);
    for task in tasks {
        let (a, r, s) = task.await.unwrap();
        acked.extend(a);
        refused += r;
        slowest = slowest.max(s);
    }
    assert!(refused > 0, "the outage was seen as 503s");
    assert!(slowest < Duration::from_secs(6), "every request was answered within 5 s (slowest {slowest:?})");
    let export = client.get(server.url("/export?format=csv")).send().await.unwrap().text().await.unwrap();
    let stored: HashSet<i64> = export.lines().skip(1).map(|l| l.split(',').next().unwrap().parse().unwrap()).collect();
    let lost = acked.iter().filter(|n| !stored.contains(n)).count();
    assert_eq!(lost, 0, "every buy answered 200 is stored");
    let unique: HashSet<i64> = acked.iter().copied().collect();
    assert_eq!(unique.len(), acked.len(), "no sequence number handed out twice");
    eprintln!(
        "PostgreSQL killed and restarted mid-load: {} acknowledged, {refused} answered 503, slowest answer {slowest:?}, 0 lost",
        acked.len()
    );
    server.signal("TERM");
}
