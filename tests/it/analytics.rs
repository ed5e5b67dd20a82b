//! Black-box tests of the analytics endpoints (`docs/reference.md` §5) on known data, run on every store.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::{StoreKind, TestApp, buy};
use chrono::{DateTime, DurationRound, SubsecRound, TimeDelta, Utc};
use serde_json::{Value, json};

/// A buy with a price.
fn priced(user: i64, promotion: i64, product: i64, quantity: i64, price: i64) -> Value {
    let mut b = buy(user, promotion, product, quantity);
    b["unit_price_cents"] = json!(price);
    b
}

/// Post `body` with its request time set to `at`.
async fn post_at(app: &TestApp, body: &Value, at: DateTime<Utc>) {
    post_at_path(app, "/buy", body, at).await;
}

async fn post_at_path(app: &TestApp, path: &str, body: &Value, at: DateTime<Utc>) {
    let response =
        app.client.post(app.url(path)).header("x-timestamp", at.to_rfc3339()).json(body).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

async fn promotions_are_ranked_by_buys_then_id(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    let now = Utc::now();
    // Promotion 30: 3 buys (one two hours old); 10 and 20: 2 buys each (tie → id order); 5: one.
    post_at(&app, &priced(1, 30, 1, 2, 500), now).await;
    post_at(&app, &priced(2, 30, 1, 1, 500), now).await;
    post_at(&app, &buy(3, 30, 2, 4), now - TimeDelta::hours(2)).await;
    post_at(&app, &buy(1, 20, 1, 1), now).await;
    post_at(&app, &buy(1, 20, 1, 1), now).await;
    post_at(&app, &priced(1, 10, 1, 3, 100), now).await;
    post_at(&app, &buy(2, 10, 1, 1), now).await;
    post_at(&app, &buy(1, 5, 1, 1), now).await;
    let list = app.get_json("/promotions").await;
    assert_eq!(list["total"], 4);
    let ids: Vec<i64> =
        list["promotions"].as_array().unwrap().iter().map(|p| p["promotion_id"].as_i64().unwrap()).collect();
    assert_eq!(ids, vec![30, 10, 20, 5]);
    assert_eq!(
        list["promotions"][0],
        json!({"promotion_id": 30, "total_buys": 3, "total_units": 7, "n_recent_buys": 2, "revenue_cents": 1500,
               "views": 0, "unique_viewers": 0, "conversion_rate": null, "net_revenue_cents": 1500})
    );
    assert_eq!(app.get_json("/promotions?timeframe_hours=3").await["promotions"][0]["n_recent_buys"], 3);
    let page = app.get_json("/promotions?limit=2&offset=1").await;
    let ids: Vec<i64> =
        page["promotions"].as_array().unwrap().iter().map(|p| p["promotion_id"].as_i64().unwrap()).collect();
    assert_eq!(ids, vec![10, 20]);
    assert_eq!(page["total"], 4);
    assert_eq!(app.get_json("/promotions?offset=10").await["promotions"], json!([]));
    for bad in ["limit=0", "limit=1001", "offset=-1", "limit=x", "timeframe_hours=0"] {
        assert_eq!(app.get(&format!("/promotions?{bad}")).await.status(), 422, "{bad}");
    }
}

async fn promotion_stats_on_known_data(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    let now = Utc::now();
    let old = now - TimeDelta::hours(3);
    post_at(&app, &priced(1, 7, 100, 2, 250), old).await;
    post_at(&app, &priced(1, 7, 200, 5, 100), now).await;
    post_at(&app, &buy(2, 7, 300, 5), now).await;
    post_at(&app, &buy(3, 7, 100, 1), now).await;
    post_at(&app, &buy(9, 8, 100, 50), now).await; // another promotion
    let stats = app.get_json("/promotions/7/stats").await;
    assert_eq!(stats["promotion_id"], 7);
    assert_eq!(stats["total_buys"], 4);
    assert_eq!(stats["total_units"], 13);
    assert_eq!(stats["revenue_cents"], 2 * 250 + 5 * 100);
    // Two of the four buys carry a price; user 1 bought twice; users 1 to 3 bought here first.
    assert_eq!(stats["average_order_value_cents"], json!(500.0));
    assert_eq!(stats["repeat_buyers"], 1);
    assert_eq!(stats["new_customers"], 3);
    assert_eq!(stats["unique_buyers"], 3);
    assert_eq!(stats["n_recent_buys"], 3);
    assert_eq!(stats["recent_units"], 11);
    assert_eq!(stats["timeframe_hours"], 1.0);
    let time = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    assert_eq!(stats["first_buy_at"], time(old.trunc_subsecs(6)));
    // Top products by units, ties (200 and 300 both 5 units) by product id.
    assert_eq!(
        stats["top_products"],
        json!([{"product_id": 200, "buys": 1, "units": 5}, {"product_id": 300, "buys": 1, "units": 5},
               {"product_id": 100, "buys": 2, "units": 3}])
    );
    assert_eq!(app.get_json("/promotions/7/stats?timeframe_hours=4").await["n_recent_buys"], 4);
    // The window's revenue, and the window before it: with 2 hours, [now − 4 h, now − 2 h) holds
    // the old buy.
    assert_eq!(stats["recent_revenue_cents"], 5 * 100);
    assert_eq!(
        stats["previous"],
        json!({"n_recent_buys": 0, "recent_units": 0, "recent_revenue_cents": 0, "recent_views": 0})
    );
    let two = app.get_json("/promotions/7/stats?timeframe_hours=2").await;
    assert_eq!(
        two["previous"],
        json!({"n_recent_buys": 1, "recent_units": 2, "recent_revenue_cents": 500, "recent_views": 0})
    );
    assert_eq!(two["recent_revenue_cents"], 500);
    let empty = app.get_json("/promotions/12345/stats").await;
    assert_eq!(
        empty,
        json!({"promotion_id": 12345, "total_buys": 0, "total_units": 0, "revenue_cents": 0, "unique_buyers": 0,
               "n_recent_buys": 0, "recent_units": 0, "first_buy_at": null, "last_buy_at": null,
               "timeframe_hours": 1.0, "top_products": [], "views": 0, "unique_viewers": 0,
               "converted_viewers": 0, "conversion_rate": null, "recent_views": 0,
               "average_order_value_cents": null, "repeat_buyers": 0, "new_customers": 0,
               "recent_revenue_cents": 0,
               "previous": {"n_recent_buys": 0, "recent_units": 0, "recent_revenue_cents": 0, "recent_views": 0},
               "refunded_units": 0, "refunded_cents": 0, "net_revenue_cents": 0, "refund_rate": null})
    );
    assert_eq!(app.get("/promotions/abc/stats").await.status(), 422);
    assert_eq!(app.get("/promotions/7/stats?timeframe_hours=200").await.status(), 422);
    let scoped = app.get_json("/stats?promotion_id=7").await;
    assert_eq!((scoped["total_buys"].as_i64(), scoped["n_recent_buys"].as_i64()), (Some(4), Some(3)));
    assert_eq!(app.get_json("/stats?promotion_id=999").await["total_buys"], 0);
    assert_eq!(app.get("/stats?promotion_id=x").await.status(), 422);
}

async fn top_products_keep_ten(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    let buys: Vec<Value> = (1..=15).map(|p| buy(1, 3, p, p)).collect();
    assert_eq!(app.post("/buys", &json!({ "buys": buys })).await.status(), 200);
    let stats = app.get_json("/promotions/3/stats").await;
    let products: Vec<i64> =
        stats["top_products"].as_array().unwrap().iter().map(|p| p["product_id"].as_i64().unwrap()).collect();
    assert_eq!(products, (6..=15).rev().collect::<Vec<_>>());
    assert_eq!(stats["unique_buyers"], 1);
}

async fn timeseries_fills_every_bucket(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    // The server must see the same current minute as this test: keep clear of the boundary.
    let into_minute = Utc::now().timestamp_millis().rem_euclid(60_000);
    if into_minute > 55_000 {
        tokio::time::sleep(Duration::from_millis((60_500 - into_minute) as u64)).await;
    }
    let now = Utc::now();
    let minute = now.duration_trunc(TimeDelta::minutes(1)).unwrap();
    post_at(&app, &buy(1, 1, 1, 2), now).await;
    post_at(&app, &buy(1, 1, 1, 3), minute).await; // start of the current bucket
    post_at(&app, &buy(1, 2, 1, 1), minute - TimeDelta::minutes(5)).await;
    post_at(&app, &buy(1, 2, 1, 1), minute - TimeDelta::minutes(59)).await;
    post_at(&app, &buy(1, 2, 1, 1), minute - TimeDelta::minutes(61)).await; // before the window
    let series = app.get_json("/stats/timeseries").await;
    assert_eq!(series["bucket"], "minute");
    assert_eq!(series["timeframe_hours"], 1.0);
    let points = series["points"].as_array().unwrap();
    // From the bucket holding now − 1 h to the one holding now: 61 buckets, whatever the second.
    assert_eq!(points.len(), 61);
    let last = points.last().unwrap();
    assert_eq!(last["start"], minute.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    assert_eq!((last["buys"].as_i64(), last["units"].as_i64()), (Some(2), Some(5)));
    assert_eq!(points[points.len() - 6]["buys"], 1);
    assert_eq!(points[1]["buys"], 1, "59 minutes back");
    let total: i64 = points.iter().map(|p| p["buys"].as_i64().unwrap()).sum();
    assert_eq!(total, 4, "the buy 61 minutes back is outside");
    let starts: Vec<&str> = points.iter().map(|p| p["start"].as_str().unwrap()).collect();
    assert!(starts.windows(2).all(|w| w[0] < w[1]), "oldest first");
    let promo = app.get_json("/stats/timeseries?promotion_id=1").await;
    let total: i64 = promo["points"].as_array().unwrap().iter().map(|p| p["units"].as_i64().unwrap()).sum();
    assert_eq!(total, 5);
    let hours = app.get_json("/stats/timeseries?bucket=hour&timeframe_hours=24").await;
    assert_eq!(hours["points"].as_array().unwrap().len(), 25);
    let total: i64 = hours["points"].as_array().unwrap().iter().map(|p| p["buys"].as_i64().unwrap()).sum();
    assert_eq!(total, 5);
    assert_eq!(app.get("/stats/timeseries?bucket=day").await.status(), 422);
    // Views and revenue per bucket: a priced buy and two views five minutes back in promotion 2.
    post_at(&app, &priced(3, 2, 1, 4, 25), minute - TimeDelta::minutes(5)).await;
    for _ in 0..2 {
        let view = json!({"user_id": 3, "promotion_id": 2});
        let at = (minute - TimeDelta::minutes(5)).to_rfc3339();
        let response = app.client.post(app.url("/view")).header("x-timestamp", at).json(&view).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    for path in ["/stats/timeseries", "/stats/timeseries?promotion_id=2"] {
        let points = app.get_json(path).await["points"].as_array().unwrap().clone();
        let five = &points[points.len() - 6];
        assert_eq!((five["views"].as_i64(), five["revenue_cents"].as_i64()), (Some(2), Some(100)), "{path}");
        let views: i64 = points.iter().map(|p| p["views"].as_i64().unwrap()).sum();
        assert_eq!(views, 2, "{path}");
    }
    assert_eq!(last["views"], 0);
}

async fn export_streams_every_field(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    let at = "2025-06-27T20:14:12.123456Z".parse::<DateTime<Utc>>().unwrap();
    post_at(&app, &priced(11, 1, 101, 2, 999), at).await;
    post_at(&app, &buy(12, 2, 102, 1), at + TimeDelta::hours(1)).await;
    post_at(&app, &buy(13, 1, 103, 3), at + TimeDelta::hours(2)).await;
    let csv = app.get("/export?format=csv").await;
    assert_eq!(csv.status(), 200);
    assert!(csv.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let text = csv.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "buy_count,user_id,promotion_id,product_id,product_quantity,unit_price_cents,ip_address,timestamp,received_at,timestamp_source"
    );
    assert_eq!(lines.len(), 4);
    assert!(lines[1].starts_with("1,11,1,101,2,999,127.0.0.1,2025-06-27T20:14:12.123456Z,"), "{}", lines[1]);
    assert!(lines[1].ends_with(",x-timestamp"));
    assert!(lines[2].starts_with("2,12,2,102,1,,127.0.0.1,"), "{}", lines[2]);
    let ndjson = app.get("/export?format=ndjson&promotion_id=1").await.text().await.unwrap();
    let rows: Vec<Value> = ndjson.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["unit_price_cents"], 999);
    assert_eq!(rows[1]["unit_price_cents"], Value::Null);
    assert_eq!(rows[1]["buy_count"], 3);
    let keys: Vec<&String> = rows[0].as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 10);
    let bounded = app
        .get("/export?format=ndjson&since=2025-06-27T21:00:00Z&until=2025-06-27T22:14:12.123456Z")
        .await
        .text()
        .await
        .unwrap();
    let counts: Vec<i64> =
        bounded.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["buy_count"].as_i64().unwrap()).collect();
    assert_eq!(counts, vec![2], "since is inclusive, until exclusive");
    for bad in ["format=xml", "since=yesterday", "promotion_id=abc"] {
        assert_eq!(app.get(&format!("/export?{bad}")).await.status(), 422, "{bad}");
    }
}

/// Reads events from `/events` until `n` stats events have arrived.
async fn read_events(app: &TestApp, n: usize) -> Vec<Value> {
    let mut response = app.get("/events").await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut text = String::new();
    let mut events = Vec::new();
    while events.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk()).await.unwrap().unwrap().unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            if block.lines().any(|l| l == "event: stats") {
                let data = block.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
                events.push(serde_json::from_str(data).unwrap());
            }
        }
    }
    events
}

async fn events_stream_stats_every_second(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    app.post("/buy", &buy(1, 2, 3, 4)).await;
    // Two views now and one two minutes ago: views_last_minute counts by timestamp.
    app.post("/views", &json!({"views": [{"user_id": 1, "promotion_id": 2}, {"user_id": 5, "promotion_id": 3}]})).await;
    post_at_path(&app, "/view", &json!({"user_id": 6, "promotion_id": 2}), Utc::now() - TimeDelta::minutes(2)).await;
    let events = read_events(&app, 2).await;
    for event in &events {
        assert_eq!(event["total_buys"], 1);
        assert_eq!(event["n_recent_buys"], 1);
        assert_eq!(event["buys_last_minute"], 1);
        assert_eq!(event["views_last_minute"], 2);
        assert_eq!(event["total_units"], 4);
        assert_eq!(event["timeframe_hours"], 1.0);
        assert_eq!(event["server_status"], "healthy");
    }
}

/// After its own first event, a stream shows the snapshot shared by every stream. Twenty streams
/// opened together, reading three events each, see a few distinct snapshots after their first
/// (each carries its `current_time` to the microsecond), not one per event. A buy acknowledged
/// before a stream opens is in all its events.
async fn event_streams_share_one_snapshot_a_second(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    let streams = futures_util::future::join_all((0..20).map(|_| read_events(&app, 3))).await;
    let shared: HashSet<String> =
        streams.iter().flat_map(|events| events[1..].iter().map(|e| e["current_time"].to_string())).collect();
    assert!(shared.len() <= 6, "{} distinct snapshots among 40 shared events", shared.len());
    app.post("/buy", &buy(1, 2, 3, 4)).await;
    // With every stream closed, the task taking snapshots stops (at its next tick after the
    // server noticed, at its next write, that the streams were gone). A new stream must start it
    // again: without a task it would get its first event and no second.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for event in read_events(&app, 2).await {
        assert_eq!(event["total_buys"], 1);
    }
}

/// An open event stream does not hold a graceful shutdown open.
async fn shutdown_ends_event_streams(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    let stream = app.get("/events").await;
    assert_eq!(stream.status(), 200);
    tokio::time::timeout(Duration::from_secs(10), app.stop()).await.expect("shutdown finishes with a stream open");
    drop(stream);
}

async fn metrics_label_routes_by_pattern(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    app.post("/buy", &buy(1, 2, 3, 4)).await;
    app.get("/promotions/424242/stats").await;
    app.get("/no/such/path").await;
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = response.text().await.unwrap();
    for needle in [
        r#"http_requests_total{method="POST",route="/buy",status="200"}"#,
        r#"route="/promotions/{promotion_id}/stats""#,
        "http_request_duration_seconds_bucket",
        "buy_tracker_buys_recorded_total",
        "buy_tracker_commit_duration_seconds_bucket",
        "buy_tracker_commit_batch_size_bucket",
        "buy_tracker_write_queue_depth",
    ] {
        assert!(text.contains(needle), "{needle} in /metrics");
    }
    assert!(!text.contains("424242"), "raw paths never become labels");
    assert!(!text.contains("/no/such/path"));
}

/// Made-up methods share the label `other`: a client cannot add series (and memory) at will.
async fn metrics_methods_are_a_fixed_set(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    for i in 0..30 {
        let method = reqwest::Method::from_bytes(format!("XM{i}").as_bytes()).unwrap();
        app.client.request(method, app.url("/nope")).send().await.unwrap();
    }
    app.client.request(reqwest::Method::from_bytes(b"get").unwrap(), app.url("/health")).send().await.unwrap();
    let text = app.get("/metrics").await.text().await.unwrap();
    let methods: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("http_requests_total{"))
        .filter_map(|l| l.split("method=\"").nth(1)?.split('"').next())
        .collect();
    assert!(methods.contains("other"), "{methods:?}");
    let allowed = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"];
    assert!(methods.iter().all(|m| allowed.contains(m)), "{methods:?}");
}

async fn analytics_reads_need_a_key_when_keys_are_set(kind: StoreKind) {
    let app = TestApp::spawn_with(kind, |c| c.read_keys = vec!["r".into()]).await;
    for path in ["/promotions", "/promotions/1/stats", "/stats/timeseries", "/export", "/events", "/stats"] {
        assert_eq!(app.get(path).await.status(), 401, "{path}");
        let ok = app.client.get(app.url(path)).bearer_auth("r").send().await.unwrap();
        assert_eq!(ok.status(), 200, "{path}");
    }
}

on_every_store!(
    promotions_are_ranked_by_buys_then_id,
    promotion_stats_on_known_data,
    top_products_keep_ten,
    timeseries_fills_every_bucket,
    export_streams_every_field,
    events_stream_stats_every_second,
    event_streams_share_one_snapshot_a_second,
    shutdown_ends_event_streams,
    metrics_label_routes_by_pattern,
    metrics_methods_are_a_fixed_set,
    analytics_reads_need_a_key_when_keys_are_set,
);
