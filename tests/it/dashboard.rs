//! `GET /dashboard` in a real headless Chromium, driven through chromedriver (W3C WebDriver).
//!
//! The service runs in-process on a fresh SQLite store; the test posts buys through the API and
//! watches the page update from `/events`: totals, the per-minute chart, the top promotions, the
//! products of a clicked promotion. It then stops the service and checks that the page says
//! "disconnected", starts a service again on the same port and checks that the page resumes on its
//! own, and finally checks the read-key prompt on a service with read keys.
//!
//! Screenshots go to `$BUY_TRACKER_ARTIFACTS` (default `target/artifacts/`): `dashboard.png`
//! (1280 px wide, whole page), `dashboard-phone.png` (390×844), `dashboard-phone-full.png`,
//! `dashboard-disconnected.png`, and `dashboard-failure.png` when a wait times out.
//!
//! Without chromium and chromedriver the test prints a SKIP line and passes, unless
//! `BUY_TRACKER_REQUIRE_BROWSER=1` (CI), where it fails.
//!
//! WebDriver is spoken over plain HTTP with reqwest: fantoccini without its TLS features offers no
//! connector the crate can name without another dependency.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{StoreKind, TestApp, buy};
use reqwest::Method;
use serde_json::{Value, json};

const SKIP: &str =
    "SKIP dashboard browser test: chromium/chromedriver not installed (apt-get install -y chromium chromium-driver)";

/// How long the page may take to show something that the server already knows (generous: a slow,
/// shared 2-core machine runs the browser, the driver and the service together).
const SHOW: Duration = Duration::from_secs(20);
/// How long a reconnection may take (the page backs off up to 10 s between attempts).
const RECONNECT: Duration = Duration::from_secs(40);

/// Everything the test reads from the page, through its stable hooks, in one round trip.
const PAGE_STATE: &str = r##"
const text = (id) => { const e = document.getElementById(id); return e ? e.textContent.trim() : null; };
const ids = (selector, attr) => Array.from(document.querySelectorAll(selector)).map((e) => e.getAttribute(attr));
const chart = document.getElementById("buys-chart");
const bars = chart ? Array.from(chart.querySelectorAll("[data-buys]")) : [];
const selected = document.querySelector('#top-promotions tr[data-promotion-id][aria-selected="true"]');
const banner = (id) => { const e = document.getElementById(id); return !!e && !e.hidden; };
const revenue = {};
document.querySelectorAll("#top-promotions tr[data-promotion-id]").forEach((row) => {
  const cell = row.querySelector('[data-col="revenue"]');
  revenue[row.getAttribute("data-promotion-id")] = cell ? cell.textContent.trim() : null;
});
const heat = Array.from(document.querySelectorAll("#timing-heatmap [data-buys]"));
return {
  state: document.body.getAttribute("data-state"),
  connection: text("connection-status"),
  detail: text("connection-detail"),
  totalBuys: text("total-buys"),
  totalUnits: text("total-units"),
  lastMinute: text("buys-last-minute"),
  lastHour: text("buys-last-hour"),
  chartTag: chart ? chart.tagName.toLowerCase() : null,
  chartTotal: chart ? chart.getAttribute("data-total") : null,
  bars: bars.length,
  barsSum: bars.reduce((sum, bar) => sum + Number(bar.getAttribute("data-buys")), 0),
  promotions: ids("#top-promotions tr[data-promotion-id]", "data-promotion-id"),
  revenue: revenue,
  selected: selected ? selected.getAttribute("data-promotion-id") : null,
  products: ids("#top-products tr[data-product-id]", "data-product-id"),
  promoTitle: text("promotion-title"),
  promoUniqueBuyers: text("promo-unique-buyers"),
  promoRevenue: text("promo-revenue"),
  promoNetRevenue: text("promo-net-revenue"),
  promoRefundRate: text("promo-refund-rate"),
  promoViews: text("promo-views"),
  promoViewers: text("promo-viewers"),
  promoConverted: text("promo-converted"),
  promoConversion: text("promo-conversion"),
  promoChange: document.getElementById("promo-change").getAttribute("data-change"),
  customers: ids("#top-customers tr[data-user-id]", "data-user-id"),
  heatCells: heat.length,
  heatSum: heat.reduce((sum, cell) => sum + Number(cell.getAttribute("data-buys")), 0),
  heatZone: document.getElementById("timing-heatmap").getAttribute("data-tz"),
  disconnectedBanner: banner("disconnected-banner"),
  authBanner: banner("auth-banner"),
  clientWidth: document.documentElement.clientWidth,
  scrollWidth: document.documentElement.scrollWidth,
  errors: window.__dashboardTestErrors || [],
  errorTrap: Array.isArray(window.__dashboardTestErrors),
};
"##;

/// Installed before any page script runs: uncaught errors and rejections end up in a list.
const ERROR_TRAP: &str = r#"
window.__dashboardTestErrors = [];
window.addEventListener("error", (e) => window.__dashboardTestErrors.push(String(e.message || e)));
window.addEventListener("unhandledrejection", (e) => window.__dashboardTestErrors.push("unhandled rejection: " + String(e.reason)));
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_updates_live_in_a_real_browser() {
    let Some((chromium, chromedriver)) = browser_programs() else {
        if std::env::var("BUY_TRACKER_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
            panic!("{SKIP}");
        }
        println!("{SKIP}");
        return;
    };
    let artifacts = artifacts_dir();
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let mut browser = Browser::start(&chromium, &chromedriver, artifacts.clone()).await;

    // --- The page comes up and shows the empty store. ---
    let app = TestApp::spawn(StoreKind::Sqlite).await;
    let port = app.addr.port();
    browser.goto(&app.url("/dashboard")).await;
    let page = browser.wait_for("data-state=ready", SHOW, |p| p["state"] == "ready").await;
    assert_eq!(page["totalBuys"], "0", "an empty store shows 0 buys: {page}");
    assert_eq!(page["chartTag"], "svg", "the chart is an inline SVG: {page}");
    if browser.traps_errors {
        assert_eq!(page["errorTrap"], true, "the error trap runs before the page's scripts: {page}");
    }
    println!("dashboard ready: {page}");

    // --- 25 buys across 3 promotions, through the API. ---
    // promotion 101: 12 buys, 18 units; 202: 8 buys, 20 units at 19.99 (5 buyers); 303: 5 buys, 20 units.
    let mut buys = Vec::new();
    for i in 0..12 {
        buys.push(buy(100 + i, 101, 1011 + i % 2, 1 + i % 2));
    }
    for (user, product, quantity) in
        [(1, 2021, 3), (2, 2022, 1), (3, 2021, 3), (1, 2023, 5), (2, 2021, 3), (3, 2022, 1), (4, 2021, 3), (5, 2022, 1)]
    {
        let mut body = buy(user, 202, product, quantity);
        body["unit_price_cents"] = json!(1999);
        buys.push(body);
    }
    for i in 0..5 {
        buys.push(buy(300 + i, 303, 3031, 4));
    }
    let units: i64 = buys.iter().map(|b| b["product_quantity"].as_i64().unwrap()).sum();
    assert_eq!((buys.len(), units), (25, 58));
    for body in &buys {
        let response = app.post("/buy", body).await;
        assert_eq!(response.status(), 200, "POST /buy {body}");
    }
    // §9: users 1 to 8 view promotion 202 (5 of them bought: 62.5 %), and 3 of buy 13's units
    // (user 1's first buy in 202, 3 × 19.99) are refunded.
    let views: Vec<Value> = (1..=8).map(|user| json!({"user_id": user, "promotion_id": 202})).collect();
    assert_eq!(app.post("/views", &json!({ "views": views })).await.status(), 200);
    assert_eq!(app.post("/refunds", &json!({"buy_count": 13, "product_quantity": 3})).await.status(), 200);

    // --- The numbers follow from the event stream, the chart and tables from their endpoints. ---
    let page = browser
        .wait_for("25 buys, 58 units, live", SHOW, |p| {
            digits(&p["totalBuys"]) == "25" && digits(&p["totalUnits"]) == "58" && p["connection"] == "live"
        })
        .await;
    assert_eq!(digits(&page["lastMinute"]), "25", "all 25 buys are in the last minute: {page}");
    assert_eq!(digits(&page["lastHour"]), "25", "all 25 buys are in the last hour: {page}");
    let page = browser.wait_for("chart data-total=25", SHOW, |p| p["chartTotal"] == "25").await;
    assert!(page["bars"].as_u64().unwrap() >= 60, "one bar per minute of the last hour: {page}");
    assert_eq!(page["barsSum"], 25, "the bars' data-buys add up to data-total: {page}");
    let page = browser
        .wait_for("top promotions 101, 202, 303", SHOW, |p| p["promotions"] == json!(["101", "202", "303"]))
        .await;
    assert_eq!(digits(&page["revenue"]["202"]), "39980", "revenue of 202 shown from cents (20 × 19.99): {page}");
    assert_eq!(digits(&page["revenue"]["101"]), "000", "no price, no revenue: {page}");

    // --- Choosing a promotion: by its id in the input, then by clicking its row. ---
    let input = browser.find("#promotion-input").await;
    browser.clear(&input).await;
    browser.type_text(&input, "303").await;
    let show = browser.find("#promotion-form button[type=submit]").await;
    browser.click(&show).await;
    browser.wait_for("products of 303", SHOW, |p| p["products"] == json!(["3031"]) && p["selected"] == "303").await;

    let row = browser.find(r#"#top-promotions tr[data-promotion-id="202"]"#).await;
    browser.click(&row).await;
    let page = browser
        .wait_for("products of 202 by units", SHOW, |p| {
            p["selected"] == "202" && p["products"] == json!(["2021", "2023", "2022"])
        })
        .await;
    assert_eq!(digits(&page["promoUniqueBuyers"]), "5", "202 had 5 distinct buyers: {page}");
    assert_eq!(digits(&page["promoRevenue"]), "39980", "202's revenue: {page}");
    let page = browser
        .wait_for("202's funnel, customers and heatmap", SHOW, |p| {
            p["promoViews"] == "8" && p["customers"].as_array().is_some_and(|c| c.len() == 5) && p["heatSum"] == 8
        })
        .await;
    assert_eq!((&page["promoViewers"], &page["promoConverted"]), (&json!("8"), &json!("5")), "{page}");
    assert!(page["promoConversion"].as_str().is_some_and(|t| t.starts_with("63")), "62.5 % rounds: {page}");
    assert_eq!(digits(&page["promoNetRevenue"]), "33983", "399.80 − 59.97: {page}");
    assert_eq!(page["promoRefundRate"], "15 %", "3 of 20 units: {page}");
    assert_eq!(page["promoChange"], "new", "no buys in the hour before: {page}");
    assert_eq!(page["customers"], json!(["1", "2", "3", "4", "5"]), "by revenue, ties by user: {page}");
    assert_eq!(page["heatCells"], 168, "a week of hours: {page}");
    assert!(page["heatZone"].as_str().is_some_and(|z| !z.is_empty()), "{page}");
    // The ranking follows the chosen order: by net revenue 202 leads, the others tie at 0.
    let net = browser.find(r#"#promotions-order option[value="net_revenue"]"#).await;
    browser.click(&net).await;
    browser.wait_for("promotions by net revenue", SHOW, |p| p["promotions"] == json!(["202", "101", "303"])).await;
    assert_eq!(page["errors"], json!([]), "no uncaught script errors: {page}");

    // --- Screenshots: the whole page at 1280 px, then a phone. ---
    browser.screenshot_full_page(1280, "dashboard.png").await;
    browser.set_window_size(390, 844).await;
    let page = browser.wait_for("phone layout", SHOW, |p| p["clientWidth"].as_u64().is_some_and(|w| w < 700)).await;
    assert!(
        page["scrollWidth"].as_u64() <= page["clientWidth"].as_u64(),
        "nothing sticks out sideways on a phone: {page}"
    );
    browser.screenshot("dashboard-phone.png").await;
    browser.screenshot_full_page(390, "dashboard-phone-full.png").await;
    browser.set_window_size(1280, 900).await;

    // --- The service goes away: the page says so. ---
    stop(app).await;
    let page = browser
        .wait_for("disconnected", SHOW, |p| p["connection"] == "disconnected" && p["disconnectedBanner"] == true)
        .await;
    println!("after stop: {page}");
    browser.screenshot("dashboard-disconnected.png").await;

    // --- ... and comes back on the same address: the page resumes by itself. ---
    let app = TestApp::spawn_with(StoreKind::Sqlite, |config| config.port = port).await;
    for body in [buy(1, 7, 70, 1), buy(2, 7, 71, 2)] {
        assert_eq!(app.post("/buy", &body).await.status(), 200);
    }
    let page = browser
        .wait_for("live again with the new service's 2 buys", RECONNECT, |p| {
            p["connection"] == "live" && digits(&p["totalBuys"]) == "2" && p["disconnectedBanner"] == false
        })
        .await;
    browser.wait_for("promotion 7 listed", SHOW, |p| p["promotions"] == json!(["7"])).await;
    assert_eq!(page["errors"], json!([]), "no uncaught script errors: {page}");
    stop(app).await;

    // --- A service with read keys: the page asks for one, keeps it, and goes live. ---
    let app = TestApp::spawn_with(StoreKind::Sqlite, |config| config.read_keys = vec!["dashboard-key".into()]).await;
    assert_eq!(app.post("/buy", &buy(1, 9, 90, 3)).await.status(), 200);
    browser.goto(&app.url("/dashboard")).await;
    browser.wait_for("the read-key prompt", SHOW, |p| p["authBanner"] == true && p["connection"] != "live").await;
    let key = browser.find("#read-key").await;
    browser.type_text(&key, "dashboard-key").await;
    let submit = browser.find("#auth-form button[type=submit]").await;
    browser.click(&submit).await;
    let page = browser
        .wait_for("live with the key", SHOW, |p| {
            p["connection"] == "live"
                && p["state"] == "ready"
                && digits(&p["totalBuys"]) == "1"
                && p["authBanner"] == false
        })
        .await;
    assert_eq!(digits(&page["totalUnits"]), "3", "{page}");
    let stored = browser.eval("return window.localStorage.getItem('buy-tracker.read-key');", json!([])).await;
    assert_eq!(stored, "dashboard-key", "the key is kept for the next visit");
    let page = browser.wait_for("promotion 9 listed", SHOW, |p| p["promotions"] == json!(["9"])).await;
    assert_eq!(page["errors"], json!([]), "no uncaught script errors: {page}");

    browser.quit().await;
    stop(app).await;
    println!("screenshots in {}", artifacts.display());
}

/// Stop a service, failing clearly if the graceful shutdown hangs.
async fn stop(app: TestApp) {
    if tokio::time::timeout(Duration::from_secs(30), app.stop()).await.is_err() {
        panic!("TestApp::stop() did not finish within 30 s (the dashboard keeps an /events stream open)");
    }
}

/// The digits of a page text ("1,234" → "1234"), whatever the browser's number format.
fn digits(value: &Value) -> String {
    value.as_str().unwrap_or_default().chars().filter(char::is_ascii_digit).collect()
}

/// Where screenshots go.
fn artifacts_dir() -> PathBuf {
    match std::env::var_os("BUY_TRACKER_ARTIFACTS") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("artifacts"),
    }
}

/// Chromium and chromedriver, from PATH or where Debian's packages put them.
fn browser_programs() -> Option<(PathBuf, PathBuf)> {
    let find = |names: &[&str]| {
        let path = std::env::var_os("PATH").unwrap_or_default();
        names.iter().find_map(|name| {
            std::env::split_paths(&path)
                .chain([PathBuf::from("/usr/bin")])
                .map(|dir| dir.join(name))
                .find(|candidate| candidate.is_file())
        })
    };
    Some((find(&["chromium", "chromium-browser"])?, find(&["chromedriver"])?))
}

/// A free loopback port (released at once; chromedriver binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// chromedriver (in its own process group) with one headless Chromium session. Dropping it ends
/// the session and kills the group, also when the test fails half-way.
struct Browser {
    driver: Child,
    port: u16,
    session: Option<String>,
    http: reqwest::Client,
    artifacts: PathBuf,
    profile: tempfile::TempDir,
    /// Uncaught page errors are collected (see [`ERROR_TRAP`]).
    traps_errors: bool,
}

impl Browser {
    async fn start(chromium: &Path, chromedriver: &Path, artifacts: PathBuf) -> Browser {
        let profile = tempfile::tempdir().expect("temp dir");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(90)).build().expect("http client");
        let mut attempts = 0;
        let (driver, port) = loop {
            attempts += 1;
            let port = free_port();
            let mut driver = Command::new(chromedriver)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", profile.path().join("chromedriver.log").display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("chromedriver starts");
            let deadline = Instant::now() + Duration::from_secs(30);
            let ready = loop {
                if driver.try_wait().ok().flatten().is_some() {
                    break false; // exited: most likely the port was taken meanwhile
                }
                let status = http.get(format!("http://127.0.0.1:{port}/status")).send().await;
                if let Ok(response) = status
                    && let Ok(body) = response.json::<Value>().await
                    && body["value"]["ready"] == true
                {
                    break true;
                }
                if Instant::now() > deadline {
                    break false;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            if ready {
                break (driver, port);
            }
            let _ = driver.kill();
            let _ = driver.wait();
            assert!(attempts < 3, "chromedriver did not become ready (3 attempts)");
        };
        let mut browser = Browser { driver, port, session: None, http, artifacts, profile, traps_errors: false };

        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-quic",
            "--no-first-run",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
        ]
        .map(String::from)
        .into_iter()
        .chain([format!("--user-data-dir={}", browser.profile.path().join("chromium").display())])
        .collect::<Vec<_>>();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let created = browser.command(Method::POST, "/session", Some(capabilities)).await;
        let session = created["sessionId"].as_str().unwrap_or_else(|| panic!("no session id in {created}"));
        browser.session = Some(session.to_owned());
        // Best effort: collect uncaught page errors (a chromedriver extension; absent elsewhere).
        let trap = json!({"cmd": "Page.addScriptToEvaluateOnNewDocument", "params": {"source": ERROR_TRAP}});
        let path = browser.session_path("/goog/cdp/execute");
        browser.traps_errors = browser.try_command(Method::POST, &path, Some(trap)).await.is_ok();
        browser
    }

    fn session_path(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session.as_deref().expect("a session"))
    }

    async fn try_command(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, String> {
        let mut request = self.http.request(method.clone(), format!("http://127.0.0.1:{}{path}", self.port));
        if let Some(body) = body {
            request = request.json(&body);
        } else if method == Method::POST {
            request = request.json(&json!({}));
        }
        let response = request.send().await.map_err(|e| format!("{method} {path}: {e}"))?;
        let status = response.status();
        let body: Value = response.json().await.map_err(|e| format!("{method} {path}: {status}, {e}"))?;
        if status.is_success() {
            Ok(body["value"].clone())
        } else {
            Err(format!("{method} {path}: {status} {}", body["value"]))
        }
    }

    async fn command(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        self.try_command(method, path, body).await.unwrap_or_else(|e| panic!("WebDriver: {e}"))
    }

    async fn goto(&self, url: &str) {
        self.command(Method::POST, &self.session_path("/url"), Some(json!({"url": url}))).await;
    }

    async fn eval(&self, script: &str, args: Value) -> Value {
        self.command(Method::POST, &self.session_path("/execute/sync"), Some(json!({"script": script, "args": args})))
            .await
    }

    async fn find(&self, css: &str) -> String {
        let found = self
            .command(Method::POST, &self.session_path("/element"), Some(json!({"using": "css selector", "value": css})))
            .await;
        found["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap_or_else(|| panic!("no element reference for {css}: {found}"))
            .to_owned()
    }

    async fn click(&self, element: &str) {
        self.command(Method::POST, &self.session_path(&format!("/element/{element}/click")), None).await;
    }

    async fn clear(&self, element: &str) {
        self.command(Method::POST, &self.session_path(&format!("/element/{element}/clear")), None).await;
    }

    async fn type_text(&self, element: &str, text: &str) {
        let path = self.session_path(&format!("/element/{element}/value"));
        self.command(Method::POST, &path, Some(json!({"text": text}))).await;
    }

    async fn set_window_size(&self, width: u64, height: u64) {
        let rect = json!({"width": width, "height": height});
        self.command(Method::POST, &self.session_path("/window/rect"), Some(rect)).await;
    }

    /// Poll the page state until `ok` holds; on timeout save a screenshot and fail with the state.
    async fn wait_for(&self, what: &str, timeout: Duration, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let path = self.session_path("/execute/sync");
            let state = self.try_command(Method::POST, &path, Some(json!({"script": PAGE_STATE, "args": []}))).await;
            let state = state.unwrap_or_else(|e| json!({"webdriver error": e}));
            if ok(&state) {
                return state;
            }
            if Instant::now() > deadline {
                self.screenshot("dashboard-failure.png").await;
                panic!("timed out after {timeout:?} waiting for {what}; the page shows {state}");
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    async fn screenshot(&self, name: &str) {
        let encoded = self.command(Method::GET, &self.session_path("/screenshot"), None).await;
        let png = base64_decode(encoded.as_str().expect("base64 screenshot"));
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        let path = self.artifacts.join(name);
        std::fs::write(&path, png).expect("write screenshot");
        println!("screenshot: {}", path.display());
    }

    /// Make the window tall enough for the whole page at `width`, then take the screenshot.
    async fn screenshot_full_page(&self, width: u64, name: &str) {
        self.set_window_size(width, 900).await;
        let size = self
            .eval("return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight];", json!([]))
            .await;
        let height = size[0].as_u64().unwrap_or(900) + size[1].as_u64().unwrap_or(0);
        self.set_window_size(width, height.clamp(600, 4000)).await;
        let deadline = Instant::now() + SHOW;
        loop {
            let fits =
                self.eval("return window.innerHeight >= document.documentElement.scrollHeight;", json!([])).await;
            if fits == true || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.screenshot(name).await;
    }

    async fn quit(&mut self) {
        if self.session.is_some() {
            let _ = self.try_command(Method::DELETE, &self.session_path(""), None).await;
            self.session = None;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            // Synchronous, since Drop cannot await: ask chromedriver to close Chromium.
            if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
                let request = format!(
                    "DELETE /session/{session} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    self.port
                );
                if stream.write_all(request.as_bytes()).is_ok() {
                    let _ = stream.read_to_end(&mut Vec::new());
                }
            }
        }
        // chromedriver leads its own process group; whatever is left of it (a browser that did
        // not quit) goes with it.
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.driver.id())]).status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        if std::thread::panicking() {
            // The driver's view of the last commands helps when a CI run fails; written without
            // eprintln!, which would panic (and abort) if stderr is gone.
            let log = std::fs::read_to_string(self.profile.path().join("chromedriver.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "--- chromedriver log (last lines) ---");
            for line in tail.iter().rev() {
                let _ = writeln!(stderr, "{line}");
            }
        }
    }
}

/// Standard base64 (with padding, whitespace ignored), as WebDriver returns screenshots.
fn base64_decode(text: &str) -> Vec<u8> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = value(c).unwrap_or_else(|| panic!("not base64: {:?}", c as char));
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn base64_decodes() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGVsbG8gd29ybGQ="), b"hello world");
    assert_eq!(base64_decode("AAEC/w=="), [0, 1, 2, 255]);
    assert_eq!(base64_decode("iVBORw0K\nGgo="), b"\x89PNG\r\n\x1a\n");
}
