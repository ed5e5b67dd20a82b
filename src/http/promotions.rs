//! `GET /promotions` and `GET /promotions/{promotion_id}/stats` (`docs/reference.md` §5), read from per-promotion
//! aggregates maintained with the inserts.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use serde::Serialize;
use utoipa::ToSchema;

use super::query::Params;
use super::state::AppState;
use crate::clock::format_micros;
use crate::field_error::FieldError;
use crate::http::error::ApiError;
use crate::store::{CustomerOrder, PromotionOrder};

/// One promotion in the ranking.
#[derive(Serialize, ToSchema)]
pub struct PromotionRank {
    promotion_id: i64,
    total_buys: i64,
    total_units: i64,
    /// Buys with timestamp at or after now − timeframe_hours.
    n_recent_buys: i64,
    /// Sum of quantity × unit_price_cents over buys that carry a price.
    revenue_cents: i64,
    /// Every view of the promotion.
    views: i64,
    /// Distinct users among its viewers.
    unique_viewers: i64,
    /// Distinct users who viewed and bought, over unique_viewers; null without viewers.
    conversion_rate: Option<f64>,
    /// revenue_cents minus refunded cents.
    net_revenue_cents: i64,
}

/// A page of promotions ranked by `order_by`.
#[derive(Serialize, ToSchema)]
pub struct PromotionList {
    /// Ranked by order_by descending, ties by promotion_id ascending, nulls last.
    promotions: Vec<PromotionRank>,
    /// The number of promotions with at least one buy or view.
    total: i64,
}

/// One product of a promotion.
#[derive(Serialize, ToSchema)]
pub struct TopProduct {
    product_id: i64,
    buys: i64,
    units: i64,
}

/// One promotion's analytics.
#[derive(Serialize, ToSchema)]
pub struct PromotionStatsResponse {
    promotion_id: i64,
    total_buys: i64,
    total_units: i64,
    /// Sum of quantity × unit_price_cents over buys that carry a price (saturates at 2^63 − 1).
    revenue_cents: i64,
    /// Distinct user_id values that bought in this promotion. Exact, not an estimate.
    unique_buyers: i64,
    n_recent_buys: i64,
    recent_units: i64,
    /// Earliest buy timestamp, RFC 3339; null without buys.
    first_buy_at: Option<String>,
    /// Latest buy timestamp, RFC 3339; null without buys.
    last_buy_at: Option<String>,
    timeframe_hours: f64,
    /// Top 10 products by units, ties by product_id.
    top_products: Vec<TopProduct>,
    /// Every view of the promotion.
    views: i64,
    /// Distinct users among its viewers (exact).
    unique_viewers: i64,
    /// Distinct users who both viewed and bought in it, in either order (exact).
    converted_viewers: i64,
    /// converted_viewers / unique_viewers; null with no viewers.
    conversion_rate: Option<f64>,
    /// Views within the window (the same edge as n_recent_buys).
    recent_views: i64,
    /// revenue_cents over the number of its buys that carry a price; null when none does.
    average_order_value_cents: Option<f64>,
    /// Distinct users with at least two buys in the promotion.
    repeat_buyers: i64,
    /// Distinct buyers whose first buy in any promotion (the lowest buy_count) was in this one.
    new_customers: i64,
    /// Quantity × unit_price_cents over the priced buys within the window (saturating).
    recent_revenue_cents: i64,
    /// The same counts over the window of the same length just before this one.
    previous: PreviousWindow,
    /// Units given back by refunds of the promotion's buys.
    refunded_units: i64,
    /// Cents given back by them.
    refunded_cents: i64,
    /// revenue_cents − refunded_cents.
    net_revenue_cents: i64,
    /// refunded_units / total_units; null with no units.
    refund_rate: Option<f64>,
}

/// The window of the same length that ends where the asked one starts: timestamps in
/// [now − 2 × timeframe_hours, now − timeframe_hours).
#[derive(Serialize, ToSchema)]
pub struct PreviousWindow {
    n_recent_buys: i64,
    recent_units: i64,
    recent_revenue_cents: i64,
    recent_views: i64,
}

/// Promotions ranked by buys, or by `order_by`.
#[utoipa::path(
    get, path = "/promotions", tag = "analytics",
    params(
        ("timeframe_hours" = Option<f64>, Query, minimum = 0.1, maximum = 168.0, description = "Window for n_recent_buys (default 1.0)"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "Page size (default 50)"),
        ("offset" = Option<i64>, Query, minimum = 0, description = "Promotions to skip (default 0)"),
        ("order_by" = Option<String>, Query, description = "What to rank by, on all-time totals, descending (ties by promotion_id, nulls last): buys (default), units, revenue, net_revenue, views, conversion_rate"),
    ),
    responses(
        (status = 200, description = "One page of the ranking", body = PromotionList),
        (status = 401, description = "Read keys are set and none was sent"),
        (status = 422, description = "A parameter is invalid", body = crate::http::error::ValidationErrors),
        (status = 503, description = "The store is unavailable or did not answer within 4 s; `detail` is a fixed sentence such as `the store is unavailable; retry`"),
    )
)]
pub async fn list(State(state): State<AppState>, RawQuery(query): RawQuery) -> Result<Json<PromotionList>, ApiError> {
    let params = Params::parse(query.as_deref())?;
    let timeframe = params.timeframe()?;
    let limit = params.int("limit", 1, 1000)?.unwrap_or(50);
    let offset = params.int("offset", 0, i64::MAX)?.unwrap_or(0);
    let names = PromotionOrder::ALL.map(|(name, _)| name);
    let order = params.choice("order_by", &names)?.and_then(PromotionOrder::parse).unwrap_or_default();
    let since = state.clock.now_us() - timeframe.micros();
    let (page, total) = state.read_store(move |store| store.promotions(since, order, limit, offset)).await?;
    let promotions = page
        .into_iter()
        .map(|p| PromotionRank {
            promotion_id: p.promotion_id,
            total_buys: p.total_buys,
            total_units: p.total_units,
            n_recent_buys: p.recent_buys,
            revenue_cents: p.revenue_cents,
            views: p.views,
            unique_viewers: p.unique_viewers,
            conversion_rate: p.conversion_rate(),
            net_revenue_cents: p.net_revenue_cents(),
        })
        .collect();
    Ok(Json(PromotionList { promotions, total }))
}

/// One promotion's analytics; a promotion without buys answers zeros.
#[utoipa::path(
    get, path = "/promotions/{promotion_id}/stats", tag = "analytics",
    params(
        ("promotion_id" = i64, Path, description = "The promotion"),
        ("timeframe_hours" = Option<f64>, Query, minimum = 0.1, maximum = 168.0, description = "Window for the recent counts (default 1.0)"),
    ),
    responses(
        (status = 200, description = "The promotion's numbers (zeros, nulls and an empty list without buys)", body = PromotionStatsResponse),
        (status = 401, description = "Read keys are set and none was sent"),
        (status = 422, description = "promotion_id is not an integer, or timeframe_hours is invalid", body = crate::http::error::ValidationErrors),
        (status = 503, description = "The store is unavailable or did not answer within 4 s; `detail` is a fixed sentence such as `the store is unavailable; retry`"),
    )
)]
pub async fn stats(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<PromotionStatsResponse>, ApiError> {
    let promotion_id = path_promotion(&raw_id)?;
    let timeframe = Params::parse(query.as_deref())?.timeframe()?;
    let since = state.clock.now_us() - timeframe.micros();
    let previous_since = since - timeframe.micros();
    let s = state.read_store(move |store| store.promotion_stats(promotion_id, (since, previous_since))).await?;
    Ok(Json(PromotionStatsResponse {
        promotion_id,
        total_buys: s.counts.total_buys,
        total_units: s.counts.total_units,
        revenue_cents: s.revenue_cents,
        unique_buyers: s.unique_buyers,
        n_recent_buys: s.counts.recent_buys,
        recent_units: s.counts.recent_units,
        first_buy_at: s.first_buy_us.map(format_micros),
        last_buy_at: s.last_buy_us.map(format_micros),
        timeframe_hours: timeframe.hours(),
        top_products: s
            .top_products
            .into_iter()
            .map(|p| TopProduct { product_id: p.product_id, buys: p.buys, units: p.units })
            .collect(),
        views: s.views,
        unique_viewers: s.unique_viewers,
        converted_viewers: s.converted_viewers,
        conversion_rate: (s.unique_viewers > 0).then(|| s.converted_viewers as f64 / s.unique_viewers as f64),
        recent_views: s.recent_views,
        average_order_value_cents: (s.priced_buys > 0).then(|| s.revenue_cents as f64 / s.priced_buys as f64),
        repeat_buyers: s.repeat_buyers,
        new_customers: s.new_customers,
        recent_revenue_cents: s.recent_revenue_cents,
        previous: PreviousWindow {
            n_recent_buys: s.previous.buys,
            recent_units: s.previous.units,
            recent_revenue_cents: s.previous.revenue_cents,
            recent_views: s.previous.views,
        },
        refunded_units: s.refunded_units,
        refunded_cents: s.refunded_cents,
        net_revenue_cents: s.revenue_cents.saturating_sub(s.refunded_cents),
        refund_rate: (s.counts.total_units > 0).then(|| s.refunded_units as f64 / s.counts.total_units as f64),
    }))
}

/// One buyer of a promotion.
#[derive(Serialize, ToSchema)]
pub struct CustomerEntry {
    user_id: i64,
    /// Their buys in the promotion.
    buys: i64,
    /// Their units (gross: refunds do not remove them).
    units: i64,
    /// Quantity × unit_price_cents over their priced buys (gross).
    revenue_cents: i64,
    /// Their units refunded.
    refunded_units: i64,
    /// Their earliest buy timestamp, RFC 3339.
    first_buy_at: String,
    /// Their latest buy timestamp, RFC 3339.
    last_buy_at: String,
}

/// One page of a promotion's buyers.
#[derive(Serialize, ToSchema)]
pub struct CustomerList {
    promotion_id: i64,
    /// The order used: revenue, units or buys.
    order_by: &'static str,
    /// The promotion's unique buyers.
    total: i64,
    /// Descending by order_by, ties by user_id ascending.
    customers: Vec<CustomerEntry>,
}

/// A promotion's buyers, best first.
#[utoipa::path(
    get, path = "/promotions/{promotion_id}/customers", tag = "analytics",
    params(
        ("promotion_id" = i64, Path, description = "The promotion"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "Page size (default 10)"),
        ("offset" = Option<i64>, Query, minimum = 0, description = "Buyers to skip (default 0)"),
        ("order_by" = Option<String>, Query, description = "revenue (default), units or buys; descending, ties by user_id"),
    ),
    responses(
        (status = 200, description = "One page of the promotion's buyers (total 0 and an empty list without buys)", body = CustomerList),
        (status = 401, description = "Read keys are set and none was sent"),
        (status = 422, description = "A parameter is invalid", body = crate::http::error::ValidationErrors),
        (status = 503, description = "The store is unavailable; `detail` is a fixed sentence"),
    )
)]
pub async fn customers(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<CustomerList>, ApiError> {
    let promotion_id = path_promotion(&raw_id)?;
    let params = Params::parse(query.as_deref())?;
    let limit = params.int("limit", 1, 1000)?.unwrap_or(10);
    let offset = params.int("offset", 0, i64::MAX)?.unwrap_or(0);
    let names = CustomerOrder::ALL.map(|(name, _)| name);
    let order_by = params.choice("order_by", &names)?.unwrap_or("revenue");
    let order = CustomerOrder::parse(order_by).unwrap_or_default();
    let (page, total) = state.read_store(move |store| store.customers(promotion_id, order, limit, offset)).await?;
    let customers = page
        .into_iter()
        .map(|c| CustomerEntry {
            user_id: c.user_id,
            buys: c.buys,
            units: c.units,
            revenue_cents: c.revenue_cents,
            refunded_units: c.refunded_units,
            first_buy_at: format_micros(c.first_buy_us),
            last_buy_at: format_micros(c.last_buy_us),
        })
        .collect();
    Ok(Json(CustomerList { promotion_id, order_by, total, customers }))
}

/// The promotion id of a path, or 422 at `["path", "promotion_id"]`.
fn path_promotion(raw_id: &str) -> Result<i64, ApiError> {
    raw_id.parse().map_err(|_| {
        let loc = [serde_json::json!("path"), serde_json::json!("promotion_id")];
        ApiError::Validation(vec![FieldError::not_an_int_string(&loc, &serde_json::json!(raw_id))])
    })
}
