//! The performance baseline: the smallest axum service that answers `POST /buy` like buy-tracker
//! (parse the JSON body, count, answer JSON) but keeps nothing. Benchmarks measure buy-tracker
//! against it in the same run, so figures are ratios that survive a noisy machine.
//!
//! Run: `cargo run --release --example baseline -- PORT`

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

/// Parsed to cost what parsing costs.
#[derive(Deserialize)]
struct Buy {
    user_id: i64,
    promotion_id: i64,
    product_id: i64,
    product_quantity: i64,
}

async fn buy(State(count): State<Arc<AtomicI64>>, Json(buy): Json<Buy>) -> Json<Value> {
    // Read, so the parse cannot be optimised away.
    std::hint::black_box((buy.user_id, buy.promotion_id, buy.product_id, buy.product_quantity));
    let n = count.fetch_add(1, Ordering::Relaxed) + 1;
    Json(json!({"success": true, "buy_count": n, "message": format!("Buy logged successfully. Total buys: {n}")}))
}

#[tokio::main]
async fn main() {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    let app = Router::new().route("/buy", post(buy)).with_state(Arc::new(AtomicI64::new(0)));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    println!("listening on http://{}", listener.local_addr().expect("address"));
    axum::serve(listener, app).await.expect("serve");
}
