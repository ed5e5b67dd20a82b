//! Slow and idle clients, and oversized requests: the service stays available and answers (or
//! closes) instead of hanging or crashing.

use std::time::{Duration, Instant};

use crate::common::{StoreKind, TestApp, buy};
use buy_tracker::http::export::{MAX_EXPORTS, STALL_TIMEOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn app_with_short_timeouts() -> TestApp {
    TestApp::spawn_with(StoreKind::Memory, |c| {
        c.header_timeout = Duration::from_secs(1);
        c.body_timeout = Duration::from_secs(1);
        c.idle_timeout = Duration::from_secs(3);
    })
    .await
}

/// Sends one `GET /health` on `stream` and reads its whole answer (a `Content-Length` body).
async fn health_on(stream: &mut TcpStream) -> String {
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("}") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "the connection was closed: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// A keep-alive connection idle between requests is kept for the idle timeout (3 s here), well
/// past the header timeout (1 s), then closed: a load balancer that reuses its idle connections
/// for up to 60 s never sends on one being closed. (It was closed after the header timeout.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_outlast_the_header_timeout() {
    let app = app_with_short_timeouts().await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    assert!(health_on(&mut stream).await.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    assert!(health_on(&mut stream).await.starts_with("HTTP/1.1 200"), "still open after 2 s idle");
    // A head begun after the idle time is still held to the header timeout.
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = Instant::now();
    assert!(read_until_closed(&mut stream, Duration::from_secs(10)).await.is_some());
    assert!(started.elapsed() < Duration::from_millis(2_500), "closed after {:?}", started.elapsed());
    // And an idle connection is closed once the idle timeout has passed.
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    assert!(health_on(&mut idle).await.starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    assert!(read_until_closed(&mut idle, Duration::from_secs(10)).await.is_some());
    assert!(started.elapsed() >= Duration::from_millis(2_500), "closed after {:?}", started.elapsed());
}

/// A shutdown waits for requests in progress at most the shutdown timeout: a body that never
/// arrives (it would hold the drain for the 15 s body timeout) does not outlast it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_at_most_the_drain_timeout() {
    let app = TestApp::spawn_with(StoreKind::Memory, |c| c.shutdown_timeout = Duration::from_secs(1)).await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"POST /buy HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), app.stop()).await.expect("the shutdown ends");
    assert!(started.elapsed() < Duration::from_secs(4), "shutdown took {:?}", started.elapsed());
}

/// Reads until the server closes the connection (or `limit` passes); returns what was read.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline.into(), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&out).into_owned()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let app = app_with_short_timeouts().await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(b"POST /buy HTTP/1.1\r\nHost: x\r\nContent-Type: app").await.unwrap();
    let closed = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(closed.is_some(), "the server closes a connection whose headers never end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed() {
    let app = app_with_short_timeouts().await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    assert!(read_until_closed(&mut stream, Duration::from_secs(10)).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_arrives_is_given_up() {
    let app = app_with_short_timeouts().await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"POST /buy HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"user_id\"")
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    let answer = answer.expect("the server answers or closes within the body timeout");
    assert!(answer.starts_with("HTTP/1.1 408"), "a body that times out is not answered 408: {answer}");
    assert!(answer.contains("\"detail\""), "the 408 is not a JSON error: {answer}");
    assert_eq!(app.get_json("/stats").await["total_buys"], 0);
}

/// The body timeout bounds the whole body: a client trickling a byte every 300 ms (each within
/// the 1 s timeout of the one before) is answered 408 once 1 s has passed, not when it finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickling_in_is_given_up_at_its_deadline() {
    let app = app_with_short_timeouts().await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"POST /buy HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..30 {
            if writer.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(8), reader.read(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3), "answered after {:?}", started.elapsed());
    trickle.abort();
}

/// The soft limit on open files of this process (each test connection costs two: ours and the
/// server's, both in this process).
fn open_file_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            let line = limits.lines().find(|l| l.starts_with("Max open files"))?.to_string();
            line.split_whitespace().nth(3)?.parse().ok()
        })
        .unwrap_or(1024)
}

/// Thousands of idle and slow connections do not stop others from being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_do_not_block_others() {
    let app = app_with_short_timeouts().await;
    let n = 3000.min(open_file_limit().saturating_sub(200) / 2);
    eprintln!("{n} idle or half-sent connections");
    let mut idle = Vec::new();
    for i in 0..n {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        if i % 2 == 0 {
            stream.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        }
        idle.push(stream);
    }
    let started = Instant::now();
    for i in 0..20 {
        assert_eq!(app.post("/buy", &buy(i, 1, 1, 1)).await.status(), 200);
    }
    assert!(started.elapsed() < Duration::from_secs(10), "served while {n} connections idle");
    assert_eq!(app.get_json("/stats").await["total_buys"], 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_and_queries_are_refused_not_fatal() {
    let app = TestApp::spawn(StoreKind::Memory).await;
    let huge = "x".repeat(200 * 1024);
    // Over the 64 KiB head limit: 431 (or the connection is closed before the answer is read).
    let response = app.client.get(app.url("/stats")).header("x-big", &huge).send().await;
    if let Ok(response) = response {
        assert_eq!(response.status(), 431);
    }
    let response = app.client.get(app.url(&format!("/stats?timeframe_hours=1&pad={huge}"))).send().await;
    if let Ok(response) = response {
        assert_eq!(response.status(), 431);
    }
    let within = "x".repeat(16 * 1024);
    let response = app.client.get(app.url("/stats")).header("x-big", &within).send().await.unwrap();
    assert_eq!(response.status(), 200, "16 KiB of headers is fine");
    let many: Vec<String> = (0..200).map(|i| format!("p{i}=1")).collect();
    let response = app.get(&format!("/stats?{}", many.join("&"))).await;
    assert_eq!(response.status(), 200, "unknown query parameters are ignored");
    // Still healthy afterwards.
    assert_eq!(app.get("/health").await.status(), 200);
}

/// With a rate limit set, a client over it gets 429 with Retry-After; other clients (told apart
/// by the forwarding headers a trusted proxy sets) and the health check are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_with_retry_after() {
    let app = TestApp::spawn_with(StoreKind::Memory, |c| {
        c.rate_limit = Some(buy_tracker::http::rate_limit::Rate { per_second: 0.5, burst: 3.0 })
    })
    .await;
    let send = |client: &'static str| {
        app.client.post(app.url("/buy")).header("x-forwarded-for", client).json(&buy(1, 1, 1, 1)).send()
    };
    for _ in 0..3 {
        assert_eq!(send("203.0.113.7").await.unwrap().status(), 200);
    }
    let limited = send("203.0.113.7").await.unwrap();
    assert_eq!(limited.status(), 429);
    let retry: u64 = limited.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert!(limited.json::<serde_json::Value>().await.unwrap()["detail"].is_string());
    assert_eq!(send("203.0.113.8").await.unwrap().status(), 200, "another client has its own bucket");
    // An IPv6 client cannot get a fresh bucket by rotating through its /64.
    for address in ["2001:db8:0:7::1", "2001:db8:0:7::2", "2001:db8:0:7:abcd::3"] {
        assert_eq!(send(address).await.unwrap().status(), 200);
    }
    assert_eq!(send("2001:db8:0:7::4").await.unwrap().status(), 429, "the /64 shares one bucket");
    assert_eq!(send("2001:db8:0:8::1").await.unwrap().status(), 200, "another /64 has its own");
    assert_eq!(app.get("/health").await.status(), 200);
    assert_eq!(app.get_json("/stats?timeframe_hours=1").await["total_buys"], 8, "nothing recorded for a 429");
}

/// Without a rate limit (the default), a burst is never refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_rate_limit_by_default() {
    let app = TestApp::spawn(StoreKind::Memory).await;
    for i in 0..50 {
        assert_eq!(app.post("/buy", &buy(i, 1, 1, 1)).await.status(), 200);
    }
}

/// An in-memory service holding 150,000 buys (about 13 MB of CSV, more than an unread connection
/// buffers), with `MAX_EXPORTS` exports stalled by clients that stopped reading.
async fn app_with_stalled_exports() -> (TestApp, Vec<TcpStream>) {
    let app = TestApp::spawn(StoreKind::Memory).await;
    for batch in 0..150 {
        let buys: Vec<_> = (0..1000).map(|i| buy(batch * 1000 + i, i % 50, i % 500, 1)).collect();
        assert_eq!(app.post("/buys", &serde_json::json!({ "buys": buys })).await.status(), 200);
    }
    let mut stalled = Vec::new();
    for _ in 0..MAX_EXPORTS {
        stalled.push(stalled_export(&app).await);
    }
    (app, stalled)
}

/// Starts an export and reads its status line (sent once the export holds its slot), then stops
/// reading.
async fn stalled_export(app: &TestApp) -> TcpStream {
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(b"GET /export HTTP/1.1\r\nhost: test\r\n\r\n").await.unwrap();
    let mut head = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut head)).await.unwrap().unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head[..n]));
    stream
}

/// A shutdown ends exports at once, even those whose clients stopped reading (each would hold
/// the drain for the 30 s stall timeout), well within a long shutdown timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_exports() {
    let app = TestApp::spawn_with(StoreKind::Memory, |c| c.shutdown_timeout = Duration::from_secs(25)).await;
    for batch in 0..150 {
        let buys: Vec<_> = (0..1000).map(|i| buy(batch * 1000 + i, i % 50, i % 500, 1)).collect();
        assert_eq!(app.post("/buys", &serde_json::json!({ "buys": buys })).await.status(), 200);
    }
    let _stalled = [stalled_export(&app).await, stalled_export(&app).await];
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(40), app.stop()).await.expect("the shutdown ends");
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown took {:?}", started.elapsed());
}

/// Exports of promotion 7 until one answers 200 (within 10 s); checks it is complete.
async fn export_promotion_7_succeeds(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = app.get("/export?promotion_id=7").await;
        if response.status() == 200 {
            let csv = response.text().await.unwrap();
            assert_eq!(csv.lines().count(), 1 + 3000, "header and every buy of promotion 7");
            return;
        }
        assert!(Instant::now() < deadline, "the stalled exports never gave their slots back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// At most `MAX_EXPORTS` exports stream at once. With that many stalled by clients that stopped
/// reading, one more waits half a second and gets 503 with `Retry-After`, while other reads
/// still answer; once the stalled clients go away, exports run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_beyond_the_limit_get_503_with_retry_after() {
    let (app, stalled) = app_with_stalled_exports().await;
    let started = Instant::now();
    let busy = app.get("/export").await;
    assert_eq!(busy.status(), 503);
    assert!(started.elapsed() >= Duration::from_millis(400), "it waited for a slot first");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(busy.headers()["retry-after"], "1");
    let detail = busy.json::<serde_json::Value>().await.unwrap()["detail"].as_str().unwrap().to_string();
    assert!(detail.contains("exports are already streaming"), "{detail}");
    assert_eq!(app.get_json("/stats").await["total_buys"], 150_000, "other reads still answer");
    drop(stalled);
    export_promotion_7_succeeds(&app).await;
}

/// A client that stays connected but stops reading is cut off after `STALL_TIMEOUT`, which
/// gives its slot back: four such clients cannot block every export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_whose_clients_stop_reading_are_cut_off() {
    let (app, stalled) = app_with_stalled_exports().await;
    tokio::time::sleep(STALL_TIMEOUT + Duration::from_secs(2)).await;
    export_promotion_7_succeeds(&app).await;
    for mut stream in stalled {
        // What was buffered still arrives, then the connection is cut: no final empty chunk, so
        // the client cannot take the truncated export for a whole one.
        let rest = read_until_closed(&mut stream, Duration::from_secs(5)).await.expect("the server closed it");
        assert!(rest.len() < 10_000_000, "cut off before the end: {} bytes", rest.len());
        assert!(!rest.ends_with("\r\n0\r\n\r\n"), "the response was ended as if complete");
    }
}

/// Keys never reach the logs, whether right or wrong (the server runs with --dev: debug level).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::common::Server::start(
        &dir.path().join("buys.db"),
        &["--dev", "--write-key", "w-secret-4711", "--read-key", "r-secret-0815"],
    );
    let client = reqwest::Client::new();
    for key in ["w-secret-4711", "wrong-secret-9999", "r-secret-0815"] {
        let _ = client.post(server.url("/buy")).bearer_auth(key).json(&buy(1, 2, 3, 4)).send().await.unwrap();
        let _ = client.get(server.url("/stats")).header("x-api-key", key).send().await.unwrap();
    }
    server.signal("TERM");
    // Everything logged after start-up, up to the end of the shutdown.
    let mut lines = Vec::new();
    for line in server.lines.iter() {
        let last = line.contains("stopped;");
        lines.push(line);
        if last {
            break;
        }
    }
    assert!(lines.iter().any(|l| l.contains("SIGTERM received")), "the log was read to the end: {lines:?}");
    for secret in ["w-secret-4711", "wrong-secret-9999", "r-secret-0815"] {
        assert!(!lines.iter().any(|l| l.contains(secret)), "{secret} appears in the logs");
    }
}
