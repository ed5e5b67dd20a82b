//! Black-box tests of the HTTP contract (`docs/reference.md` §2, §5 writes, §6), run on every store.

use std::collections::HashSet;

use crate::common::{StoreKind, TestApp, buy, concurrent_buys};
use serde_json::{Value, json};

async fn records_a_buy_with_the_original_shape(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    for n in 1..=3 {
        let response = app.post("/buy", &buy(1, 2, 3, 4)).await;
        assert_eq!(response.status(), 200);
        assert!(response.headers().contains_key("x-request-id"));
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body,
            json!({"success": true, "buy_count": n, "message": format!("Buy logged successfully. Total buys: {n}")})
        );
    }
}

async fn ignores_unknown_fields_and_accepts_a_price(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    let mut body = buy(1, 2, 3, 4);
    body["unit_price_cents"] = json!(1999);
    body["campaign"] = json!("summer");
    assert_eq!(app.post("/buy", &body).await.status(), 200);
}

async fn rejects_bad_bodies_with_field_locations(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    let cases = [
        (json!({"promotion_id": 1, "product_id": 1, "product_quantity": 1}), "user_id", "missing"),
        (json!({"user_id": "1", "promotion_id": 1, "product_id": 1, "product_quantity": 1}), "user_id", "int_type"),
        (
            json!({"user_id": 1, "promotion_id": 1.5, "product_id": 1, "product_quantity": 1}),
            "promotion_id",
            "int_type",
        ),
        (
            json!({"user_id": 1, "promotion_id": 1, "product_id": 1, "product_quantity": 0}),
            "product_quantity",
            "greater_than_equal",
        ),
        (
            json!({"user_id": 1, "promotion_id": 1, "product_id": 1, "product_quantity": 1_000_001}),
            "product_quantity",
            "less_than_equal",
        ),
        (
            json!({"user_id": 1, "promotion_id": 1, "product_id": 1, "product_quantity": 1, "unit_price_cents": -5}),
            "unit_price_cents",
            "greater_than_equal",
        ),
    ];
    for (body, field, kind) in cases {
        let response = app.post("/buy", &body).await;
        assert_eq!(response.status(), 422, "{body}");
        let detail: Value = response.json().await.unwrap();
        let first = &detail["detail"][0];
        assert_eq!(first["loc"], json!(["body", field]), "{body}");
        assert_eq!(first["type"], json!(kind), "{body}");
        assert!(first["msg"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Nothing was recorded by any of them.
    assert_eq!(app.get_json("/stats").await["total_buys"], 0);
}

async fn rejects_malformed_json_and_non_objects(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    for raw in ["{bad", "", "[1,2]", "null", "\"text\"", "{\"user_id\": 1,}"] {
        let response =
            app.client.post(app.url("/buy")).header("content-type", "application/json").body(raw).send().await.unwrap();
        assert_eq!(response.status(), 422, "{raw:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["detail"][0]["loc"][0], "body", "{raw:?}");
    }
    let deep = "[".repeat(10_000) + &"]".repeat(10_000);
    let response = app.client.post(app.url("/buy")).body(deep).send().await.unwrap();
    assert_eq!(response.status(), 413);
    let nested = "[".repeat(1_000) + &"]".repeat(1_000);
    let response = app.client.post(app.url("/buy")).body(nested).send().await.unwrap();
    assert_eq!(response.status(), 422, "deep nesting is refused, not a crash");
}

async fn enforces_body_limits(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    let mut body = buy(1, 2, 3, 4);
    body["padding"] = json!("x".repeat(17 * 1024));
    let response = app.post("/buy", &body).await;
    assert_eq!(response.status(), 413);
    let detail: Value = response.json().await.unwrap();
    assert!(detail["detail"].as_str().unwrap().contains("16384"));
    let mut body = json!({"buys": [buy(1, 2, 3, 4)]});
    body["padding"] = json!("x".repeat(2 * 1024 * 1024 + 1));
    assert_eq!(app.post("/buys", &body).await.status(), 413);
    let mut body = json!({"buys": [buy(1, 2, 3, 4)]});
    body["padding"] = json!("x".repeat(1024 * 1024));
    assert_eq!(app.post("/buys", &body).await.status(), 200, "1 MiB is within the batch limit");
}

async fn stats_have_the_original_shape_and_bounds(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    app.post("/buy", &buy(1, 2, 3, 4)).await;
    let stats = app.get_json("/stats").await;
    for key in ["uptime_seconds", "timeframe_hours"] {
        assert!(stats[key].is_f64(), "{key} is a float: {stats}");
    }
    assert_eq!(stats["timeframe_hours"], 1.0);
    assert_eq!(stats["total_buys"], 1);
    assert_eq!(stats["n_recent_buys"], 1);
    assert_eq!(stats["server_status"], "healthy");
    assert!(stats["uptime_formatted"].as_str().unwrap().ends_with('s'));
    let time = stats["current_time"].as_str().unwrap();
    assert!(time.ends_with('Z') && time.len() == "2025-06-27T20:14:12.123456Z".len(), "{time}");
    for (query, status) in [("0.1", 200), ("168", 200), ("0.09", 422), ("168.5", 422), ("abc", 422), ("-1", 422)] {
        let response = app.get(&format!("/stats?timeframe_hours={query}")).await;
        assert_eq!(response.status(), status, "{query}");
        if status == 422 {
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["detail"][0]["loc"], json!(["query", "timeframe_hours"]));
        }
    }
}

/// n_recent_buys counts by the request generation time of `docs/reference.md` §3, inclusive of future skew.
async fn recent_buys_follow_the_timestamp_headers(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    let now = chrono::Utc::now();
    let post_at = |header: &'static str, value: String| {
        let request = app.client.post(app.url("/buy")).header(header, value).json(&buy(1, 2, 3, 1));
        async move { assert_eq!(request.send().await.unwrap().status(), 200) }
    };
    post_at("x-timestamp", (now - chrono::Duration::minutes(90)).to_rfc3339()).await;
    post_at("x-client-time", (now - chrono::Duration::hours(30)).timestamp().to_string()).await;
    post_at("x-request-start", format!("t={}", (now - chrono::Duration::minutes(10)).timestamp_millis())).await;
    post_at("x-timestamp", (now + chrono::Duration::minutes(3)).to_rfc3339()).await;
    // Ten minutes ahead is beyond the allowed skew: the server time is used instead.
    post_at("x-timestamp", (now + chrono::Duration::minutes(10)).to_rfc3339()).await;
    post_at("x-timestamp", "not a time".into()).await;
    let recent = |hours: f64| {
        let path = format!("/stats?timeframe_hours={hours}");
        let app = &app;
        async move { app.get_json(&path).await["n_recent_buys"].as_i64().unwrap() }
    };
    assert_eq!(recent(1.0).await, 4, "10 min ago, 3 min ahead, and two at server time");
    assert_eq!(recent(2.0).await, 5);
    assert_eq!(recent(24.0).await, 5);
    assert_eq!(recent(31.0).await, 6);
    assert_eq!(app.get_json("/stats").await["total_buys"], 6);
}

/// At a pinned instant, the window's edge is exact: a buy stamped exactly `now − 1 h` is recent
/// for `timeframe_hours=1`, one a microsecond earlier is not; a stamp up to 5 minutes ahead is
/// kept (and recent), one further ahead is skipped for the server time.
async fn the_window_edge_is_exact_at_a_pinned_instant(kind: StoreKind) {
    let now = chrono::DateTime::parse_from_rfc3339("2026-06-01T12:00:00Z").unwrap().to_utc();
    let app = TestApp::spawn_at(kind, now).await;
    let at = |offset_us: i64| {
        (now + chrono::TimeDelta::microseconds(offset_us)).to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    };
    let hour_us = 3_600_000_000;
    for stamp in [at(-hour_us), at(-hour_us - 1), at(300_000_000), at(300_000_001)] {
        let response = app.client.post(app.url("/buy")).header("x-timestamp", stamp).json(&buy(1, 2, 3, 1)).send();
        assert_eq!(response.await.unwrap().status(), 200);
    }
    let stats = app.get_json("/stats?timeframe_hours=1").await;
    assert_eq!(stats["current_time"], "2026-06-01T12:00:00.000000Z");
    assert_eq!((stats["total_buys"].as_i64(), stats["n_recent_buys"].as_i64()), (Some(4), Some(3)), "{stats}");
    let export = app.get("/export?format=ndjson").await.text().await.unwrap();
    let rows: Vec<Value> = export.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let stamps: Vec<(&str, &str)> =
        rows.iter().map(|r| (r["timestamp"].as_str().unwrap(), r["timestamp_source"].as_str().unwrap())).collect();
    assert_eq!(
        stamps,
        vec![
            ("2026-06-01T11:00:00.000000Z", "x-timestamp"),
            ("2026-06-01T10:59:59.999999Z", "x-timestamp"),
            ("2026-06-01T12:05:00.000000Z", "x-timestamp"),
            ("2026-06-01T12:00:00.000000Z", "server"),
        ]
    );
}

async fn health_root_and_docs(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    let health = app.get_json("/health").await;
    assert_eq!(health["status"], "healthy");
    assert!(health["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(health["uptime_seconds"].is_f64());
    assert_eq!(app.get("/health/live").await.status(), 200);
    let root = app.get_json("/").await;
    assert_eq!(root["message"], "Buy Tracker API");
    assert_eq!(root["version"], env!("CARGO_PKG_VERSION"));
    for endpoint in ["POST /buy", "POST /buys", "GET /stats", "GET /health"] {
        assert!(root["endpoints"][endpoint].is_string(), "{endpoint}");
    }
    let openapi = app.get_json("/openapi.json").await;
    assert!(openapi["openapi"].as_str().unwrap().starts_with("3."));
    for path in ["/buy", "/buys", "/stats", "/health", "/health/live", "/"] {
        assert!(openapi["paths"][path].is_object(), "{path} documented");
    }
    for page in ["/docs", "/docs/", "/redoc"] {
        let response = app.get(page).await;
        assert_eq!(response.status(), 200, "{page}");
        assert_eq!(response.url().path(), page, "{page} answers with the page itself, not a redirect");
        let html = response.text().await.unwrap();
        assert!(html.contains("<html") || html.contains("<!DOCTYPE"), "{page}");
        for external in ["src=\"http", "href=\"http", "src='http", "@import url(http", "cdn."] {
            assert!(!html.contains(external), "{page} loads nothing from another host ({external})");
        }
    }
    let swagger_js = app.get("/docs/swagger-ui-bundle.js").await;
    assert_eq!(swagger_js.status(), 200, "Swagger UI assets are served by the binary");
    let initializer = app.get("/docs/swagger-initializer.js").await.text().await.unwrap();
    assert!(initializer.contains("/openapi.json"), "Swagger UI reads our document");
    let missing = app.get("/docs/no-such-file.js").await;
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.json::<Value>().await.unwrap()["message"],
        "The requested path '/docs/no-such-file.js' was not found"
    );
}

async fn unknown_paths_and_methods_answer_json(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    let response = app.get("/nope").await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["detail"], "Not Found");
    assert_eq!(body["error"], "Not Found");
    assert_eq!(body["message"], "The requested path '/nope' was not found");
    assert!(body["available_endpoints"].as_array().unwrap().contains(&json!("POST /buy")));
    let response = app.client.delete(app.url("/buy")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert!(response.headers().contains_key("x-request-id"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["detail"], "Method Not Allowed");
    assert_eq!(app.get("/buy").await.status(), 405);
}

async fn request_ids_are_echoed_or_made(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    let response = app.client.get(app.url("/health")).header("x-request-id", "trace-42").send().await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-42");
    let a = app.get("/nope").await.headers()["x-request-id"].clone();
    let b = app.get("/nope").await.headers()["x-request-id"].clone();
    assert_ne!(a, b);
}

async fn batches_are_atomic_and_name_bad_items(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    let response = app.post("/buys", &json!({"buys": [buy(1, 1, 1, 1), buy(2, 1, 1, 2), buy(3, 1, 1, 3)]})).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({"success": true, "recorded": 3, "buy_count": 3}));
    let bad = json!({"buys": [buy(1, 1, 1, 1), buy(1, 1, 1, 0), buy(1, 1, 1, 1), {"user_id": "x"}]});
    let response = app.post("/buys", &bad).await;
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    let indices: HashSet<i64> =
        body["detail"].as_array().unwrap().iter().map(|e| e["loc"][2].as_i64().unwrap()).collect();
    assert_eq!(indices, HashSet::from([1, 3]));
    assert_eq!(body["detail"][0]["loc"], json!(["body", "buys", 1, "product_quantity"]));
    assert_eq!(app.get_json("/stats").await["total_buys"], 3, "nothing of the bad batch was recorded");
    assert_eq!(app.post("/buys", &json!({"buys": []})).await.status(), 422);
    let over: Vec<Value> = (0..1001).map(|i| buy(i, 1, 1, 1)).collect();
    assert_eq!(app.post("/buys", &json!({ "buys": over })).await.status(), 422);
    let full: Vec<Value> = (0..1000).map(|i| buy(i, 1, 1, 1)).collect();
    let response = app.post("/buys", &json!({ "buys": full })).await;
    assert_eq!(response.json::<Value>().await.unwrap()["buy_count"], 1003);
}

/// A 422 echoes a bounded part of each bad input: a 2 MiB batch whose every item misses three
/// fields gets an answer smaller than itself (it was about 8 MiB, each error copying its item).
async fn validation_errors_echo_bounded_inputs(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    let pad = "x".repeat(1_900);
    let items: Vec<Value> = (0..1000).map(|_| json!({"user_id": "x", "pad": pad})).collect();
    let body = json!({ "buys": items });
    let sent = body.to_string().len();
    assert!(sent < 2 * 1024 * 1024, "{sent}");
    let response = app.post("/buys", &body).await;
    assert_eq!(response.status(), 422);
    let answer = response.bytes().await.unwrap();
    assert!(answer.len() < sent, "{} bytes answered to {sent} sent", answer.len());
    let detail: Value = serde_json::from_slice(&answer).unwrap();
    let errors = detail["detail"].as_array().unwrap();
    assert_eq!(errors.len(), 4000, "every problem is still named");
    assert_eq!(errors[1]["loc"], json!(["body", "buys", 0, "promotion_id"]));
    assert!(errors[1]["input"].as_str().unwrap().starts_with("<object of 2 fields"), "{}", errors[1]);
    assert_eq!(errors[0]["input"], "x", "small inputs are echoed whole");
}

async fn idempotency_keys_replay_and_refuse_other_bodies(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    let send =
        |key: &str, body: Value| app.client.post(app.url("/buy")).header("Idempotency-Key", key).json(&body).send();
    let first = send("order-1", buy(1, 2, 3, 4)).await.unwrap();
    assert_eq!(first.status(), 200);
    assert!(!first.headers().contains_key("idempotent-replayed"));
    let first: Value = first.json().await.unwrap();
    let again = send("order-1", buy(1, 2, 3, 4)).await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    let other = send("order-1", buy(1, 2, 3, 5)).await.unwrap();
    assert_eq!(other.status(), 422);
    assert_eq!(send("order-2", buy(1, 2, 3, 4)).await.unwrap().status(), 200);
    assert_eq!(send("", buy(1, 2, 3, 4)).await.unwrap().status(), 422);
    assert_eq!(send(&"k".repeat(256), buy(1, 2, 3, 4)).await.unwrap().status(), 422);
    assert_eq!(app.get_json("/stats").await["total_buys"], 2);
    // Batches replay too, and a key used on /buy is a different request on /buys.
    let batch = json!({"buys": [buy(1, 1, 1, 1), buy(2, 2, 2, 2)]});
    let send_batch = |key: &str| app.client.post(app.url("/buys")).header("Idempotency-Key", key).json(&batch).send();
    let b1: Value = send_batch("batch-1").await.unwrap().json().await.unwrap();
    let b2 = send_batch("batch-1").await.unwrap();
    assert_eq!(b2.headers()["idempotent-replayed"], "true");
    assert_eq!(b2.json::<Value>().await.unwrap(), b1);
    assert_eq!(send_batch("order-1").await.unwrap().status(), 422);
    assert_eq!(app.get_json("/stats").await["total_buys"], 4);
}

/// Concurrent requests with one key: one is recorded; the others are replays or 409s.
async fn concurrent_requests_with_one_key_record_once(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let request = app.client.post(app.url("/buy")).header("Idempotency-Key", "same").json(&buy(1, 2, 3, 4));
            tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    assert!(statuses.iter().all(|s| *s == 200 || *s == 409), "{statuses:?}");
    assert!(statuses.contains(&200));
    assert_eq!(app.get_json("/stats").await["total_buys"], 1);
}

/// Thousands of concurrent buys get unique, gap-free sequence numbers and an exact total.
async fn concurrent_buys_get_gap_free_sequence_numbers(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    let n = 3000;
    let counts = concurrent_buys(&app.client, &[app.url("")], n, 256).await;
    assert_eq!(counts, (1..=n).collect::<Vec<_>>());
    let stats = app.get_json("/stats").await;
    assert_eq!(stats["total_buys"], n);
    assert_eq!(stats["n_recent_buys"], n);
}

async fn keys_guard_writes_and_reads(kind: StoreKind) {
    let app = TestApp::spawn_with(kind, |c| {
        c.write_keys = vec!["w-key".into()];
        c.read_keys = vec!["r-key".into()];
    })
    .await;
    let response = app.post("/buy", &buy(1, 2, 3, 4)).await;
    assert_eq!(response.status(), 401);
    assert!(response.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    let with_key = |key: &str| app.client.post(app.url("/buy")).bearer_auth(key).json(&buy(1, 2, 3, 4)).send();
    assert_eq!(with_key("wrong").await.unwrap().status(), 401);
    assert_eq!(with_key("r-key").await.unwrap().status(), 401);
    assert_eq!(with_key("w-key").await.unwrap().status(), 200);
    let api_key = app.client.post(app.url("/buy")).header("x-api-key", "w-key").json(&buy(1, 2, 3, 4));
    assert_eq!(api_key.send().await.unwrap().status(), 200);
    assert_eq!(app.get("/stats").await.status(), 401);
    for key in ["r-key", "w-key"] {
        let stats = app.client.get(app.url("/stats")).header("x-api-key", key).send().await.unwrap();
        assert_eq!(stats.status(), 200, "{key}");
    }
    assert_eq!(app.get("/health").await.status(), 200, "health stays open for load balancers");
}

/// The stored client IP believes forwarding headers only from trusted proxies (`docs/reference.md` §4).
async fn forwarding_headers_are_believed_only_from_trusted_proxies(kind: StoreKind) {
    let forged = |app: &TestApp| {
        app.client
            .post(app.url("/buy"))
            .header("x-forwarded-for", "198.51.100.7")
            .header("forwarded", "for=198.51.100.8")
            .json(&buy(1, 2, 3, 4))
            .send()
    };
    let stored_ip = |app: &TestApp| {
        let request = app.client.get(app.url("/export?format=ndjson")).send();
        async move {
            let text = request.await.unwrap().text().await.unwrap();
            let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
            last["ip_address"].as_str().unwrap().to_string()
        }
    };
    // Loopback is a trusted proxy by default: the Forwarded header names the client.
    let trusting = TestApp::spawn(kind).await;
    assert_eq!(forged(&trusting).await.unwrap().status(), 200);
    assert_eq!(stored_ip(&trusting).await, "198.51.100.8");
    // With only another network trusted, this loopback peer is an untrusted client: its
    // headers are ignored and its own address is recorded.
    let strict = TestApp::spawn_with(kind, |c| {
        c.trusted_proxies = buy_tracker::client_ip::TrustedProxies::new(vec!["10.9.0.0/16".parse().unwrap()])
    })
    .await;
    assert_eq!(forged(&strict).await.unwrap().status(), 200);
    assert_eq!(stored_ip(&strict).await, "127.0.0.1");
}

/// A page on another site cannot record buys: no `text/plain` or form bodies (they need no CORS
/// preflight), and no request from a browser origin that `--cors-origin` does not allow.
async fn cross_site_writes_are_refused(kind: StoreKind) {
    let app = TestApp::spawn_with(kind, |c| c.cors_origins = vec!["https://shop.example".into()]).await;
    let body = buy(1, 2, 3, 4).to_string();
    let post = |path: &str, headers: &[(&str, &str)]| {
        let mut request = app.client.post(app.url(path)).body(body.clone());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send()
    };
    for path in ["/buy", "/buys"] {
        for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
            let response = post(path, &[("content-type", content_type)]).await.unwrap();
            assert_eq!(response.status(), 415, "{path} {content_type}");
            assert!(response.json::<Value>().await.unwrap()["detail"].is_string());
        }
        let forged = post(path, &[("content-type", "application/json"), ("origin", "https://evil.example")]);
        let response = forged.await.unwrap();
        assert_eq!(response.status(), 403, "{path}");
        assert!(response.json::<Value>().await.unwrap()["detail"].is_string());
    }
    assert_eq!(app.get_json("/stats").await["total_buys"], 0, "nothing refused was recorded");
    let allowed =
        post("/buy", &[("content-type", "application/json; charset=utf-8"), ("origin", "https://shop.example")]);
    assert_eq!(allowed.await.unwrap().status(), 200);
    assert_eq!(post("/buy", &[]).await.unwrap().status(), 200, "without Content-Type the body is read as JSON");
    assert_eq!(post("/buy", &[("content-type", "application/vnd.shop+json")]).await.unwrap().status(), 200);
    assert_eq!(app.get_json("/stats").await["total_buys"], 3);
}

async fn graceful_stop_keeps_acknowledged_buys(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    let response = app.post("/buy", &buy(1, 2, 3, 4)).await;
    assert_eq!(response.status(), 200);
    app.stop().await;
}

on_every_store!(
    records_a_buy_with_the_original_shape,
    ignores_unknown_fields_and_accepts_a_price,
    rejects_bad_bodies_with_field_locations,
    rejects_malformed_json_and_non_objects,
    enforces_body_limits,
    stats_have_the_original_shape_and_bounds,
    recent_buys_follow_the_timestamp_headers,
    the_window_edge_is_exact_at_a_pinned_instant,
    health_root_and_docs,
    unknown_paths_and_methods_answer_json,
    request_ids_are_echoed_or_made,
    batches_are_atomic_and_name_bad_items,
    validation_errors_echo_bounded_inputs,
    idempotency_keys_replay_and_refuse_other_bodies,
    concurrent_requests_with_one_key_record_once,
    concurrent_buys_get_gap_free_sequence_numbers,
    keys_guard_writes_and_reads,
    forwarding_headers_are_believed_only_from_trusted_proxies,
    cross_site_writes_are_refused,
    graceful_stop_keeps_acknowledged_buys,
);
