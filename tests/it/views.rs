//! Black-box tests of page views (`docs/reference.md` §9): `POST /view` and `POST /views`, and
//! the funnel they feed in promotion stats, run on every store.

use crate::common::{StoreKind, TestApp, buy};
use serde_json::{Value, json};

fn view(user: i64, promotion: i64) -> Value {
    json!({"user_id": user, "promotion_id": promotion})
}

async fn views_are_numbered_among_views(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    let first = app.post("/view", &view(1, 7)).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.json::<Value>().await.unwrap(), json!({"success": true, "recorded": 1, "view_count": 1}));
    // A buy between them takes a buy number, not a view number.
    assert_eq!(app.post("/buy", &buy(1, 7, 3, 1)).await.json::<Value>().await.unwrap()["buy_count"], 1);
    let batch = json!({"views": [view(2, 7), {"user_id": 3, "promotion_id": 7, "product_id": 3}, view(4, 8)]});
    let answer: Value = app.post("/views", &batch).await.json().await.unwrap();
    assert_eq!(answer, json!({"success": true, "recorded": 3, "view_count": 4}));
    // sendBeacon sends text/plain.
    let beacon = app
        .client
        .post(app.url("/view"))
        .header("content-type", "text/plain;charset=UTF-8")
        .body(view(5, 7).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(beacon.status(), 200);
    assert_eq!(beacon.json::<Value>().await.unwrap()["view_count"], 5);
    let form = app
        .client
        .post(app.url("/view"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(view(6, 7).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 415);
    // One bad item rejects the batch, naming it; nothing is recorded.
    let bad = app.post("/views", &json!({"views": [view(1, 1), {"user_id": "x", "promotion_id": 1}]})).await;
    assert_eq!(bad.status(), 422);
    let detail = bad.json::<Value>().await.unwrap();
    assert_eq!(detail["detail"][0]["loc"], json!(["body", "views", 1, "user_id"]));
    assert_eq!(app.post("/view", &json!({"user_id": 1})).await.status(), 422);
    assert_eq!(app.post("/view", &view(9, 9)).await.json::<Value>().await.unwrap()["view_count"], 6);
}

async fn a_retried_view_is_replayed(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    let send = |body: Value, path: &'static str| {
        app.client.post(app.url(path)).header("idempotency-key", "beacon-1").json(&body).send()
    };
    let first = send(view(1, 2), "/view").await.unwrap();
    assert_eq!(first.json::<Value>().await.unwrap()["view_count"], 1);
    let again = send(view(1, 2), "/view").await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap()["view_count"], 1);
    assert_eq!(send(view(1, 3), "/view").await.unwrap().status(), 422, "another body");
    assert_eq!(send(buy(1, 2, 3, 1), "/buy").await.unwrap().status(), 422, "another endpoint");
    assert_eq!(app.get_json("/promotions/2/stats").await["views"], 1);
}

async fn the_funnel_counts_viewers_and_converts_in_either_order(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    // Users 1 and 2 view then buy; 3 buys then views; 4 and 5 only view (5 twice); 6 only buys;
    // 7 views another promotion and buys in this one.
    for (user, promotion) in [(1, 7), (2, 7), (4, 7), (5, 7), (5, 7), (7, 8)] {
        assert_eq!(app.post("/view", &view(user, promotion)).await.status(), 200);
    }
    for user in [1, 2, 3, 6, 7] {
        assert_eq!(app.post("/buy", &buy(user, 7, 1, 1)).await.status(), 200);
    }
    assert_eq!(app.post("/views", &json!({"views": [view(3, 7)]})).await.status(), 200);
    let stats = app.get_json("/promotions/7/stats").await;
    assert_eq!(stats["views"], 6);
    assert_eq!(stats["unique_viewers"], 5);
    assert_eq!(stats["converted_viewers"], 3);
    assert_eq!(stats["conversion_rate"], json!(0.6));
    assert_eq!(stats["recent_views"], 6);
    assert_eq!(stats["unique_buyers"], 5);
    let other = app.get_json("/promotions/8/stats").await;
    assert_eq!((other["views"].as_i64(), other["converted_viewers"].as_i64()), (Some(1), Some(0)));
    assert_eq!(other["total_buys"], 0);
    assert_eq!(other["first_buy_at"], Value::Null);
    assert_eq!(app.get_json("/promotions/9/stats").await["conversion_rate"], Value::Null);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    // The registry is the process's, shared by the tests running beside this one: at least ours.
    let recorded = metrics
        .lines()
        .find_map(|l| l.strip_prefix("buy_tracker_views_recorded_total "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(recorded.is_some_and(|n| n >= 7.0), "{metrics}");
    // How far the views are behind the log, one series per kind of fact (the value is whatever
    // the last stage in this process saw).
    for kind in ["buys", "views", "refunds"] {
        let series = format!("buy_tracker_views_behind_facts{{kind=\"{kind}\"}} ");
        let behind =
            metrics.lines().find_map(|l| l.strip_prefix(series.as_str())).and_then(|v| v.trim().parse::<f64>().ok());
        assert!(behind.is_some_and(|n| n >= 0.0), "{kind}: {metrics}");
    }
}

/// Post a priced buy.
async fn priced(app: &TestApp, user: i64, promotion: i64, quantity: i64, price: i64) {
    let mut body = buy(user, promotion, 1, quantity);
    body["unit_price_cents"] = json!(price);
    assert_eq!(app.post("/buy", &body).await.status(), 200);
}

fn ids(list: &Value) -> Vec<i64> {
    list["promotions"].as_array().unwrap().iter().map(|p| p["promotion_id"].as_i64().unwrap()).collect()
}

async fn promotions_rank_by_each_order(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    // 1: 3 buys of 1 unit at 100, 2 viewers of whom 1 bought (rate 0.5).
    // 2: 1 buy of 10 units at 50, 4 views by 4 viewers of whom 1 bought (rate 0.25).
    // 3: 2 buys of 1 unit at 1000, 1 viewer who bought (rate 1).
    // 4: views only, 1 viewer (rate 0). 5: a buy without views (rate null).
    for (user, promotion) in [(1, 1), (2, 1), (1, 2), (2, 2), (3, 2), (4, 2), (9, 3), (5, 4)] {
        assert_eq!(app.post("/view", &view(user, promotion)).await.status(), 200);
    }
    for user in [1, 7, 8] {
        priced(&app, user, 1, 1, 100).await;
    }
    priced(&app, 1, 2, 10, 50).await;
    priced(&app, 9, 3, 1, 1000).await;
    priced(&app, 9, 3, 1, 1000).await;
    assert_eq!(app.post("/buy", &buy(6, 5, 1, 1)).await.status(), 200);
    let order = |by: &'static str| {
        let app = &app;
        async move { ids(&app.get_json(&format!("/promotions?order_by={by}")).await) }
    };
    assert_eq!(order("buys").await, [1, 3, 2, 5, 4]);
    assert_eq!(ids(&app.get_json("/promotions").await), [1, 3, 2, 5, 4], "buys is the default");
    assert_eq!(order("units").await, [2, 1, 3, 5, 4]);
    assert_eq!(order("revenue").await, [3, 2, 1, 4, 5]);
    assert_eq!(order("net_revenue").await, [3, 2, 1, 4, 5]);
    assert_eq!(order("views").await, [2, 1, 3, 4, 5]);
    assert_eq!(order("conversion_rate").await, [3, 1, 2, 4, 5], "nulls last");
    let list = app.get_json("/promotions?order_by=views&limit=1").await;
    assert_eq!(list["total"], 5, "every promotion with a buy or a view");
    let two = &list["promotions"][0];
    assert_eq!((two["views"].as_i64(), two["unique_viewers"].as_i64()), (Some(4), Some(4)));
    assert_eq!(two["conversion_rate"], json!(0.25));
    assert_eq!(two["net_revenue_cents"], 500);
    for bad in ["Buys", "price", ""] {
        let response = app.get(&format!("/promotions?order_by={bad}")).await;
        assert_eq!(response.status(), 422, "{bad}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["detail"][0]["loc"], json!(["query", "order_by"]));
    }
}

async fn customers_are_ranked_by_each_order(kind: StoreKind) {
    let app = TestApp::spawn(kind).await;
    // User 1: two buys of 1 unit at 500; user 2: one of 5 units at 100; user 3: one of 1 at 100
    // and one unpriced of 2; user 4 buys in another promotion only.
    priced(&app, 1, 7, 1, 500).await;
    priced(&app, 2, 7, 5, 100).await;
    priced(&app, 1, 7, 1, 500).await;
    priced(&app, 3, 7, 1, 100).await;
    assert_eq!(app.post("/buy", &buy(3, 7, 1, 2)).await.status(), 200);
    priced(&app, 4, 8, 1, 100).await;
    let users = |list: &Value| -> Vec<i64> {
        list["customers"].as_array().unwrap().iter().map(|c| c["user_id"].as_i64().unwrap()).collect()
    };
    let page = app.get_json("/promotions/7/customers").await;
    assert_eq!((page["promotion_id"].as_i64(), page["order_by"].as_str()), (Some(7), Some("revenue")));
    assert_eq!(page["total"], 3);
    assert_eq!(users(&page), [1, 2, 3]);
    let first = &page["customers"][0];
    assert_eq!(
        (first["buys"].as_i64(), first["units"].as_i64(), first["revenue_cents"].as_i64()),
        (Some(2), Some(2), Some(1000))
    );
    assert_eq!(first["refunded_units"], 0);
    assert!(first["first_buy_at"].as_str().unwrap() <= first["last_buy_at"].as_str().unwrap());
    assert_eq!(users(&app.get_json("/promotions/7/customers?order_by=units").await), [2, 3, 1]);
    assert_eq!(users(&app.get_json("/promotions/7/customers?order_by=buys").await), [1, 3, 2], "ties by user_id");
    assert_eq!(users(&app.get_json("/promotions/7/customers?limit=1&offset=1").await), [2]);
    let none = app.get_json("/promotions/99/customers").await;
    assert_eq!((none["total"].as_i64(), none["customers"].clone()), (Some(0), json!([])));
    for bad in ["order_by=views", "limit=0", "limit=1001", "offset=-1"] {
        assert_eq!(app.get(&format!("/promotions/7/customers?{bad}")).await.status(), 422, "{bad}");
    }
    assert_eq!(app.get("/promotions/x/customers").await.status(), 422);
}

async fn timing_counts_buys_by_local_weekday_and_hour(kind: StoreKind) {
    use chrono::{Datelike, TimeDelta, Timelike, Utc};
    let app = TestApp::spawn(kind).await;
    let now = Utc::now();
    let stamps = [
        now - TimeDelta::hours(2),
        now - TimeDelta::minutes(90),
        now - TimeDelta::hours(30),
        now - TimeDelta::hours(200),
    ];
    for (i, at) in stamps.iter().enumerate() {
        let response = app
            .client
            .post(app.url("/buy"))
            .header("x-timestamp", at.to_rfc3339())
            .json(&buy(i as i64, 7, 1, 1 + i as i64))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    for zone in ["UTC", "Asia/Kathmandu", "America/St_Johns", "Australia/Eucla"] {
        let tz: chrono_tz::Tz = zone.parse().unwrap();
        let timing = app.get_json(&format!("/stats/timing?tz={zone}&promotion_id=7")).await;
        assert_eq!((timing["tz"].as_str(), timing["timeframe_hours"].as_f64()), (Some(zone), Some(168.0)));
        assert_eq!(timing["promotion_id"], 7);
        let cells = timing["cells"].as_array().unwrap();
        assert_eq!(cells.len(), 168);
        assert_eq!((cells[25]["weekday"].as_i64(), cells[25]["hour"].as_i64()), (Some(1), Some(1)));
        let mut expected = vec![(0, 0); 168];
        // The buy 200 hours old is outside the week.
        for (i, at) in stamps.iter().enumerate().take(3) {
            let local = at.with_timezone(&tz);
            let cell = local.weekday().num_days_from_monday() as usize * 24 + local.hour() as usize;
            expected[cell].0 += 1;
            expected[cell].1 += 1 + i as i64;
        }
        let got: Vec<(i64, i64)> =
            cells.iter().map(|c| (c["buys"].as_i64().unwrap(), c["units"].as_i64().unwrap())).collect();
        assert_eq!(got, expected, "{zone}");
    }
    let all = app.get_json("/stats/timing?timeframe_hours=1.75").await;
    assert_eq!(all["promotion_id"], Value::Null);
    let sum: i64 = all["cells"].as_array().unwrap().iter().map(|c| c["buys"].as_i64().unwrap()).sum();
    let recent = app.get_json("/stats?timeframe_hours=1.75").await["n_recent_buys"].as_i64().unwrap();
    assert_eq!((sum, recent), (1, 1), "the cells add up to n_recent_buys");
    let bad = app.get("/stats/timing?tz=Mars/Olympus").await;
    assert_eq!(bad.status(), 422);
    assert_eq!(bad.json::<Value>().await.unwrap()["detail"][0]["loc"], json!(["query", "tz"]));
    assert_eq!(app.get("/stats/timing?timeframe_hours=169").await.status(), 422);
}

on_every_store!(
    timing_counts_buys_by_local_weekday_and_hour,
    customers_are_ranked_by_each_order,
    promotions_rank_by_each_order,
    views_are_numbered_among_views,
    a_retried_view_is_replayed,
    the_funnel_counts_viewers_and_converts_in_either_order,
);
