//! Behind a proxy: the client IP is read only as the deployment says, and the shipped
//! `docker/nginx.conf` lets no client choose its recorded address.
//!
//! The nginx test runs Debian's `nginx` with the shipped configuration, its upstream pointed at
//! the in-process service. Without the binary it prints a SKIP line, unless
//! `BUY_TRACKER_REQUIRE_NGINX=1` (CI), where it fails.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use buy_tracker::client_ip::TrustedProxies;
use serde_json::Value;

use crate::common::{StoreKind, TestApp, buy};

/// Every forwarding header a client could send to pick its recorded address.
const SPOOFED: [(&str, &str); 6] = [
    ("forwarded", "for=203.0.113.7"),
    ("x-forwarded-for", "198.51.100.9"),
    ("x-real-ip", "192.0.2.1"),
    ("cf-connecting-ip", "192.0.2.2"),
    ("true-client-ip", "192.0.2.3"),
    ("x-client-ip", "192.0.2.4"),
];

/// The `ip_address` stored for the last buy.
async fn last_ip(app: &TestApp) -> String {
    let text = app.get("/export?format=ndjson").await.text().await.unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    last["ip_address"].as_str().unwrap().to_string()
}

/// With `--client-ip-header X-Real-IP`, that header alone names the client: a client's own
/// `Forwarded` (read first otherwise) is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_ip_header_alone_is_believed() {
    let app = TestApp::spawn_with(StoreKind::Memory, |c| {
        c.trusted_proxies = TrustedProxies::default().with_only_header("x-real-ip".parse().unwrap())
    })
    .await;
    let mut request = app.client.post(app.url("/buy")).json(&buy(1, 2, 3, 4));
    for (name, value) in SPOOFED {
        request = request.header(name, value);
    }
    assert_eq!(request.send().await.unwrap().status(), 200);
    assert_eq!(last_ip(&app).await, "192.0.2.1");
    // Without it, the peer (the trusted proxy itself) is the client.
    let response = app.client.post(app.url("/buy")).header("forwarded", "for=203.0.113.7").json(&buy(1, 2, 3, 4));
    assert_eq!(response.send().await.unwrap().status(), 200);
    assert_eq!(last_ip(&app).await, "127.0.0.1");
}

/// nginx running the shipped configuration, proxying to `upstream`.
struct Nginx {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Start nginx with `docker/nginx.conf`, its replicas replaced by `upstream` and its port by a
/// free one; `None` (after a SKIP line) without the binary.
fn nginx(upstream: std::net::SocketAddr) -> Option<Nginx> {
    let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|p| Path::new(p).exists());
    let Some(binary) = binary else {
        if std::env::var("BUY_TRACKER_REQUIRE_NGINX").is_ok_and(|v| v == "1") {
            panic!("BUY_TRACKER_REQUIRE_NGINX=1 but nginx is not installed");
        }
        println!("SKIP nginx test: install nginx (apt-get install -y nginx-light)");
        return None;
    };
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker/nginx.conf")).unwrap();
    let port = free_port();
    let site: String = shipped
        .lines()
        .filter(|line| !line.trim_start().starts_with("server replica-2"))
        .map(|line| match line.trim_start() {
            l if l.starts_with("server replica-1") => format!("    server {upstream};"),
            "listen 8080;" => format!("    listen 127.0.0.1:{port};"),
            _ => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(site.contains(&format!("server {upstream};")) && site.contains(&port.to_string()), "{site}");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let conf = format!(
        "daemon off; master_process off; pid {d}/nginx.pid; error_log {d}/error.log;\n\
         events {{ worker_connections 64; }}\n\
         http {{ access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n{site}\n}}\n"
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let child = Command::new(binary)
        .args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf")])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("nginx starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nginx did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Nginx { child, port, _dir: dir })
}

/// Through the shipped nginx, no forwarding header a client sends decides its recorded address,
/// whether the replicas read X-Real-IP alone (as the shipped compose file sets) or every
/// forwarding header in turn (the default); `/events` streams through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_nginx_config_lets_no_client_choose_its_ip() {
    for only_x_real_ip in [true, false] {
        let app = TestApp::spawn_with(StoreKind::Memory, |c| {
            if only_x_real_ip {
                c.trusted_proxies = TrustedProxies::default().with_only_header("x-real-ip".parse().unwrap());
            }
        })
        .await;
        let Some(nginx) = nginx(app.addr) else { return };
        let base = format!("http://127.0.0.1:{}", nginx.port);
        let mut request = app.client.post(format!("{base}/buy")).json(&buy(1, 2, 3, 4));
        for (name, value) in SPOOFED {
            request = request.header(name, value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
        assert_eq!(last_ip(&app).await, "127.0.0.1", "X-Real-IP only: {only_x_real_ip}");
        let mut events = app.client.get(format!("{base}/events")).send().await.unwrap();
        assert_eq!(events.status(), 200);
        let first = tokio::time::timeout(Duration::from_secs(10), events.chunk()).await.unwrap().unwrap().unwrap();
        assert!(String::from_utf8_lossy(&first).contains("event: stats"), "{first:?}");
    }
}
