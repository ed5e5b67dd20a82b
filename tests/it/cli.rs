//! Black-box tests of the command line (`docs/reference.md` §1), run against the real binary with a clean
//! environment: no `BUY_TRACKER_*`, `DATABASE_URL` or `RUST_LOG` from the machine reaches it, and
//! it runs in a temporary working directory so the default store never lands in the repository.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::{Server, buy};
use serde_json::Value;

/// How long a command that should fail at once may run before the test gives up on it.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a starting server may take to log its address (slow, shared machines).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to stop after SIGTERM or SIGINT.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Every option `docs/reference.md` §1 lists, as `--help` must show it.
const OPTIONS: [&str; 11] = [
    "--host",
    "--port",
    "--n-workers",
    "--workers",
    "--dev",
    "--database-url",
    "--write-key",
    "--read-key",
    "--trusted-proxy",
    "--cors-origin",
    "--log-format",
];

/// The binary, run in `cwd`, with the variables that configure it removed from its environment.
fn command(cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_buy-tracker"));
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name.starts_with("BUY_TRACKER_") || name == "DATABASE_URL" || name == "RUST_LOG" {
            cmd.env_remove(&key);
        }
    }
    cmd.current_dir(cwd).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// How a command that ran to its end finished.
struct Finished {
    /// The exit code; `None` when a signal ended it.
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Run `cmd` to its end (killing it and failing the test if it is still running after
/// [`EXIT_TIMEOUT`], as a server that wrongly started would be).
fn run_to_exit(mut cmd: Command) -> Finished {
    let mut child = cmd.spawn().expect("the binary starts");
    let read_all = |mut stream: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stream.read_to_string(&mut text);
            text
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().unwrap()));
    let stderr = read_all(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + EXIT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} was still running after {EXIT_TIMEOUT:?}; stderr: {}", stderr.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Finished { code: status.code(), stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}

/// Start `cmd` as a server and wait for its `listening on http://ADDR:PORT` line; returns the
/// running server and that line. Fails with everything it logged if it exits or stays silent.
fn start(mut cmd: Command) -> (Server, String) {
    let mut child = cmd.spawn().expect("the binary starts");
    let (tx, lines) = mpsc::channel();
    for stream in
        [Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>, Box::new(child.stderr.take().unwrap())]
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    drop(tx);
    let deadline = Instant::now() + START_TIMEOUT;
    let mut seen = Vec::new();
    loop {
        let line = match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => line,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{cmd:?} logged no listening line ({e}); it logged:\n{}", seen.join("\n"));
            }
        };
        if let Some(rest) = line.split("listening on http://").nth(1) {
            // The address ends the message: at a quote (JSON logs), a colour code or the line end.
            let addr: String =
                rest.chars().take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']')).collect();
            let addr: SocketAddr = addr.parse().unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"));
            return (Server { child, addr, lines }, line);
        }
        seen.push(line);
    }
}

/// The lines of `stderr` that say something.
fn said(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| !l.trim().is_empty()).collect()
}

/// Stop `server` with `signal` and return its exit code.
fn stop(server: Server, signal: &str) -> Option<i32> {
    server.signal(signal);
    server.wait(STOP_TIMEOUT)
}

/// `GET path` on `server`, returning the status and the JSON body.
async fn get_json(server: &Server, path: &str) -> (u16, Value) {
    let response = reqwest::get(server.url(path)).await.expect("the server answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

/// `--help` succeeds and explains every option of `docs/reference.md` §1, including the `--workers` alias, with
/// example command lines.
#[test]
fn help_lists_every_option_with_examples() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(dir.path());
    cmd.arg("--help");
    let out = run_to_exit(cmd);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    for option in OPTIONS {
        assert!(out.stdout.contains(option), "--help does not mention {option}:\n{}", out.stdout);
    }
    assert!(out.stdout.contains("Examples"), "--help has no examples section:\n{}", out.stdout);
    let examples = out.stdout.lines().filter(|l| l.trim_start().starts_with("buy-tracker --")).count();
    assert!(examples >= 2, "--help shows fewer than two example command lines:\n{}", out.stdout);
}

/// `--dev` with a worker count other than 1 is a usage error: exit code 2 and a message naming
/// `--n-workers`, under either spelling of the option.
#[test]
fn dev_refuses_more_than_one_worker() {
    let dir = tempfile::tempdir().unwrap();
    for spelling in ["--n-workers", "--workers"] {
        let mut cmd = command(dir.path());
        cmd.args(["--dev", spelling, "4", "--host", "127.0.0.1", "--port", "0", "--database-url", "memory:"]);
        let out = run_to_exit(cmd);
        assert_eq!(out.code, Some(2), "--dev {spelling} 4 was not refused as a usage error: {}", out.stderr);
        let said = said(&out.stderr);
        assert_eq!(said.len(), 1, "--dev {spelling} 4: expected one line on stderr, got {said:?}");
        assert!(said[0].contains("--n-workers"), "the refusal does not name --n-workers: {said:?}");
    }
}

/// `--dev --n-workers 1` is consistent, so it is accepted: the service starts, logs its address,
/// and stops with exit code 0 on SIGTERM.
#[test]
fn dev_with_one_worker_starts() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(dir.path());
    cmd.args(["--dev", "--n-workers", "1", "--host", "127.0.0.1", "--port", "0", "--database-url"])
        .arg(format!("sqlite:{}", dir.path().join("dev.db").display()));
    let (server, line) = start(cmd);
    assert_ne!(server.addr.port(), 0, "{line}");
    assert_eq!(stop(server, "TERM"), Some(0));
}

/// A bad option value stops the binary before it serves, with a non-zero exit code and an
/// error line naming the option.
#[test]
fn bad_values_exit_nonzero_naming_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("--port", "99999"),
        ("--database-url", "mysql://x"),
        ("--trusted-proxy", "10.0.0.0/33"),
        ("--log-format", "xml"),
    ];
    for (option, value) in cases {
        let mut cmd = command(dir.path());
        // Valid values for the other options, so that only `option` can be at fault.
        for (other, good) in [("--host", "127.0.0.1"), ("--port", "0"), ("--database-url", "memory:")] {
            if other != option {
                cmd.args([other, good]);
            }
        }
        cmd.args([option, value]);
        let out = run_to_exit(cmd);
        assert!(matches!(out.code, Some(code) if code != 0), "{option} {value}: exit {:?}", out.code);
        let said = said(&out.stderr);
        assert_eq!(said.len(), 1, "{option} {value}: expected one line on stderr, got {said:?}");
        assert!(said[0].contains(option), "{option} {value}: the error line does not name the option: {said:?}");
    }
}

/// A store that cannot be opened (a folder that cannot be created under /proc, or a "folder" that
/// is a regular file) makes the binary exit non-zero with one line on stderr naming the path.
#[test]
fn unopenable_store_exits_with_one_line_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a folder").unwrap();
    let paths = [Path::new("/proc/forbidden/x.db").to_path_buf(), file.join("x.db")];
    for path in paths {
        let mut cmd = command(dir.path());
        cmd.args(["--host", "127.0.0.1", "--port", "0", "--database-url"]).arg(format!("sqlite:{}", path.display()));
        let out = run_to_exit(cmd);
        assert!(matches!(out.code, Some(code) if code != 0), "{}: exit {:?}", path.display(), out.code);
        let said = said(&out.stderr);
        assert_eq!(said.len(), 1, "{}: expected one line on stderr, got {said:?}", path.display());
        assert!(
            said[0].contains(&path.display().to_string()),
            "{}: the line does not name it: {said:?}",
            path.display()
        );
    }
}

/// `--port 0` binds a free port and logs the real one as `listening on http://127.0.0.1:PORT`;
/// the service answers `GET /health` there.
#[tokio::test]
async fn port_zero_logs_the_real_port_and_serves_there() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(dir.path());
    cmd.args(["--host", "127.0.0.1", "--port", "0", "--database-url"])
        .arg(format!("sqlite:{}", dir.path().join("x.db").display()));
    let (server, line) = start(cmd);
    let port = server.addr.port();
    assert_ne!(port, 0, "{line}");
    assert!(line.contains(&format!("listening on http://127.0.0.1:{port}")), "{line}");
    let (status, body) = get_json(&server, "/health").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "healthy", "{body}");
    assert_eq!(stop(server, "TERM"), Some(0));
}

/// With no flags, `BUY_TRACKER_HOST`, `BUY_TRACKER_PORT` and `DATABASE_URL` configure the
/// service: it binds a free port on 127.0.0.1, and creates the SQLite file, with its missing
/// folders, where the URL says (not at the default `data/buy-tracker.db`).
#[tokio::test]
async fn environment_variables_configure_port_and_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nested/deeper/x.db");
    assert!(!db.parent().unwrap().exists());
    let mut cmd = command(dir.path());
    cmd.env("BUY_TRACKER_HOST", "127.0.0.1")
        .env("BUY_TRACKER_PORT", "0")
        .env("DATABASE_URL", format!("sqlite:{}", db.display()));
    let (server, line) = start(cmd);
    assert!(server.addr.ip().is_loopback(), "{line}");
    assert!(![0, 8080].contains(&server.addr.port()), "BUY_TRACKER_PORT=0 was not used: {line}");
    let (status, body) = get_json(&server, "/health").await;
    assert_eq!(status, 200, "{body}");
    let response = reqwest::Client::new().post(server.url("/buy")).json(&buy(1, 2, 3, 4)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(db.is_file(), "DATABASE_URL's file {} was not created", db.display());
    assert!(!dir.path().join("data").exists(), "the default store was created instead");
    assert_eq!(stop(server, "TERM"), Some(0));
}

/// SIGINT (Ctrl-C) stops the service gracefully, as SIGTERM does: exit code 0, and the buy it
/// acknowledged is there after a restart.
#[tokio::test]
async fn sigint_stops_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("x.db").display());
    let start_on_file = || {
        let mut cmd = command(dir.path());
        cmd.args(["--host", "127.0.0.1", "--port", "0", "--database-url", &url]);
        start(cmd).0
    };
    let server = start_on_file();
    let response = reqwest::Client::new().post(server.url("/buy")).json(&buy(1, 2, 3, 4)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(stop(server, "INT"), Some(0));

    let server = start_on_file();
    let (status, stats) = get_json(&server, "/stats").await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["total_buys"], 1, "{stats}");
    assert_eq!(stop(server, "TERM"), Some(0));
}

/// Bound to a public address without write keys, the service warns that anyone can write; with
/// a write key it does not.
#[test]
fn open_writes_on_a_public_address_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let warning = "anyone who can reach it can record buys";
    let mut open = command(dir.path());
    open.args(["--host", "0.0.0.0", "--port", "0", "--database-url", "memory:"]);
    let (server, _) = start(open);
    let deadline = Instant::now() + START_TIMEOUT;
    let warned =
        std::iter::from_fn(|| server.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())).ok())
            .any(|line| line.contains(warning));
    assert!(warned, "no warning about open writes");
    assert_eq!(stop(server, "TERM"), Some(0));

    let mut keyed = command(dir.path());
    keyed.args(["--host", "0.0.0.0", "--port", "0", "--database-url", "memory:", "--write-key", "k"]);
    let (server, _) = start(keyed);
    server.signal("TERM");
    let lines: Vec<String> = std::iter::from_fn(|| server.lines.recv_timeout(STOP_TIMEOUT).ok()).collect();
    assert!(!lines.iter().any(|l| l.contains(warning)), "{lines:?}");
    assert_eq!(server.wait(STOP_TIMEOUT), Some(0));
}
