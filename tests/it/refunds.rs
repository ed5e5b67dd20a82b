//! Black-box tests of refunds (`docs/reference.md` §9): `POST /refunds`, its bounds and replays,
//! and the net figures it feeds, run on every store.

use crate::common::{StoreKind, TestApp, buy};
use serde_json::{Value, json};

fn priced(user: i64, promotion: i64, product: i64, quantity: i64, price: i64) -> Value {
    let mut body = buy(user, promotion, product, quantity);
    body["unit_price_cents"] = json!(price);
    body
}

async fn refund(app: &TestApp, body: Value) -> (u16, Value) {
    let response = app.post("/refunds", &body).await;
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn refunds_give_back_at_most_what_a_buy_holds(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    assert_eq!(app.post("/buy", &priced(1, 7, 10, 5, 250)).await.status(), 200); // buy 1
    assert_eq!(app.post("/buy", &buy(2, 7, 11, 2)).await.status(), 200); // buy 2, no price
    assert_eq!(app.post("/buy", &priced(3, 8, 10, 4, 250)).await.status(), 200); // buy 3
    let (status, partial) = refund(&app, json!({"buy_count": 1, "product_quantity": 2})).await;
    assert_eq!(status, 200);
    assert_eq!(
        partial,
        json!({"success": true, "refund_count": 1, "buy_count": 1, "refunded_units": 2, "remaining_units": 3,
               "refunded_cents": 500})
    );
    // Without product_quantity: every unit left. Without a price: no cents.
    let (status, whole) = refund(&app, json!({"buy_count": 2})).await;
    assert_eq!(status, 200);
    assert_eq!(
        whole,
        json!({"success": true, "refund_count": 2, "buy_count": 2, "refunded_units": 2, "remaining_units": 0,
               "refunded_cents": 0})
    );
    // Nothing left, more than is left, less than one: 422 at product_quantity; nothing recorded.
    for body in [
        json!({"buy_count": 2}),
        json!({"buy_count": 2, "product_quantity": 1}),
        json!({"buy_count": 1, "product_quantity": 4}),
        json!({"buy_count": 1, "product_quantity": 0}),
    ] {
        let (status, error) = refund(&app, body.clone()).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(error["detail"][0]["loc"], json!(["body", "product_quantity"]), "{body}");
    }
    let (status, unknown) = refund(&app, json!({"buy_count": 999})).await;
    assert_eq!(status, 404);
    assert!(unknown["detail"].is_string());
    let (status, bad) = refund(&app, json!({"buy_count": "1"})).await;
    assert_eq!(status, 422);
    assert_eq!(bad["detail"][0]["loc"], json!(["body", "buy_count"]));
    // The last unit left takes the next number: refused refunds took none.
    let (status, rest) = refund(&app, json!({"buy_count": 1})).await;
    assert_eq!((status, rest["refund_count"].as_i64(), rest["refunded_units"].as_i64()), (200, Some(3), Some(3)));

    // Gross figures stay; the refunded ones, net revenue and the rate show the refunds.
    let stats = app.get_json("/promotions/7/stats").await;
    assert_eq!((stats["total_buys"].as_i64(), stats["total_units"].as_i64()), (Some(2), Some(7)));
    assert_eq!(stats["revenue_cents"], 1250);
    assert_eq!(stats["refunded_units"], 7);
    assert_eq!(stats["refunded_cents"], 1250);
    assert_eq!(stats["net_revenue_cents"], 0);
    assert_eq!(stats["refund_rate"], json!(1.0));
    assert_eq!(stats["unique_buyers"], 2);
    let other = app.get_json("/promotions/8/stats").await;
    assert_eq!((other["refunded_units"].as_i64(), other["refund_rate"].as_f64()), (Some(0), Some(0.0)));
    assert_eq!(app.get_json("/promotions/12345/stats").await["refund_rate"], Value::Null);
    let customers = app.get_json("/promotions/7/customers?order_by=units").await;
    let rows: Vec<(i64, i64, i64)> = customers["customers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["user_id"].as_i64().unwrap(), c["units"].as_i64().unwrap(), c["refunded_units"].as_i64().unwrap()))
        .collect();
    assert_eq!(rows, vec![(1, 5, 5), (2, 2, 2)], "units stay gross beside the refunded ones");
    // Promotion 7 leads by revenue (1250 against 1000) and trails by net revenue (0 against 1000).
    let by = |order: &'static str| {
        let app = &app;
        async move {
            let list = app.get_json(&format!("/promotions?order_by={order}")).await;
            list["promotions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p["promotion_id"].as_i64().unwrap(), p["net_revenue_cents"].as_i64().unwrap()))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(by("revenue").await, vec![(7, 0), (8, 1000)]);
    assert_eq!(by("net_revenue").await, vec![(8, 1000), (7, 0)]);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    // The registry is the process's, shared by the tests running beside this one: at least ours.
    let recorded = metrics
        .lines()
        .find_map(|l| l.strip_prefix("buy_tracker_refunds_recorded_total "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(recorded.is_some_and(|n| n >= 3.0), "{metrics}");
}

async fn a_retried_refund_is_replayed(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    assert_eq!(app.post("/buy", &priced(1, 7, 10, 5, 100)).await.status(), 200);
    let send = |body: Value, key: &'static str| {
        let app = &app;
        async move { app.client.post(app.url("/refunds")).header("Idempotency-Key", key).json(&body).send().await.unwrap() }
    };
    let first = send(json!({"buy_count": 1, "product_quantity": 2}), "r-1").await;
    assert_eq!(first.status(), 200);
    assert!(!first.headers().contains_key("idempotent-replayed"));
    let first: Value = first.json().await.unwrap();
    let again = send(json!({"buy_count": 1, "product_quantity": 2}), "r-1").await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first, "the original answer, remaining_units included");
    assert_eq!(send(json!({"buy_count": 1, "product_quantity": 1}), "r-1").await.status(), 422);
    // A refused refund does not use its key: the same key works once the request is valid.
    assert_eq!(send(json!({"buy_count": 1, "product_quantity": 9}), "r-2").await.status(), 422);
    let ok = send(json!({"buy_count": 1, "product_quantity": 3}), "r-2").await;
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.json::<Value>().await.unwrap()["remaining_units"], 0);
    assert_eq!(app.get_json("/promotions/7/stats").await["refunded_units"], 5, "the replay refunded nothing");
}

/// Many refunds of one unit at once never give back more than the buy holds: exactly its
/// quantity succeed.
async fn concurrent_refunds_never_exceed_the_buy(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    assert_eq!(app.post("/buy", &priced(1, 7, 10, 10, 100)).await.status(), 200);
    let mut tasks = Vec::new();
    for _ in 0..30 {
        let (client, url) = (app.client.clone(), app.url("/refunds"));
        tasks.push(tokio::spawn(async move {
            let response = client.post(url).json(&json!({"buy_count": 1, "product_quantity": 1})).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }));
    }
    let mut numbers = Vec::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        match status {
            200 => numbers.push(body["refund_count"].as_i64().unwrap()),
            422 => assert_eq!(body["detail"][0]["loc"], json!(["body", "product_quantity"])),
            other => panic!("status {other}: {body}"),
        }
    }
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=10).collect::<Vec<_>>(), "ten refunds, numbered without gaps");
    let stats = app.get_json("/promotions/7/stats").await;
    assert_eq!((stats["refunded_units"].as_i64(), stats["refunded_cents"].as_i64()), (Some(10), Some(1000)));
}

/// `GET /export?kind=views|refunds`: each kind's columns, in its own numbering, with the filters.
async fn views_and_refunds_are_exported(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    assert_eq!(app.post("/buy", &priced(1, 7, 10, 3, 100)).await.status(), 200);
    assert_eq!(app.post("/buy", &buy(2, 8, 11, 1)).await.status(), 200);
    let views =
        json!({"views": [{"user_id": 1, "promotion_id": 7, "product_id": 10}, {"user_id": 5, "promotion_id": 8}]});
    assert_eq!(app.post("/views", &views).await.status(), 200);
    assert_eq!(refund(&app, json!({"buy_count": 1, "product_quantity": 2})).await.0, 200);
    assert_eq!(refund(&app, json!({"buy_count": 2})).await.0, 200);

    let csv = app.get("/export?kind=views").await.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "view_count,user_id,promotion_id,product_id,ip_address,timestamp,received_at,timestamp_source"
    );
    assert_eq!(lines.len(), 3);
    assert!(lines[1].starts_with("1,1,7,10,127.0.0.1,"), "{}", lines[1]);
    assert!(lines[2].starts_with("2,5,8,,127.0.0.1,"), "an absent product is empty: {}", lines[2]);
    let ndjson = app.get("/export?kind=views&format=ndjson&promotion_id=8").await.text().await.unwrap();
    let rows: Vec<Value> = ndjson.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0]["view_count"].as_i64(), rows[0]["product_id"].clone()), (Some(2), Value::Null));

    let csv = app.get("/export?kind=refunds").await.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "refund_count,buy_count,user_id,promotion_id,product_id,refunded_units,refunded_cents,ip_address,timestamp,received_at,timestamp_source"
    );
    assert!(lines[1].starts_with("1,1,1,7,10,2,200,127.0.0.1,"), "{}", lines[1]);
    assert!(lines[2].starts_with("2,2,2,8,11,1,0,127.0.0.1,"), "{}", lines[2]);
    let ndjson = app.get("/export?kind=refunds&format=ndjson&promotion_id=7").await.text().await.unwrap();
    let rows: Vec<Value> = ndjson.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["refunded_cents"], 200);
    assert_eq!(rows[0]["timestamp_source"], "server");
    // Buys stay the default, and unknown kinds are refused.
    assert_eq!(app.get("/export").await.text().await.unwrap().lines().count(), 3);
    let bad = app.get("/export?kind=carts").await;
    assert_eq!(bad.status(), 422);
    assert_eq!(bad.json::<Value>().await.unwrap()["detail"][0]["loc"], json!(["query", "kind"]));
}

on_every_store!(
    views_and_refunds_are_exported,
    refunds_give_back_at_most_what_a_buy_holds,
    a_retried_refund_is_replayed,
    concurrent_refunds_never_exceed_the_buy,
);
