//! A page view as the rest of the program sees it (`docs/reference.md` §9): a customer saw a
//! promotion page, or one of its products. Parsed once at the edge, like a buy ([`crate::domain`]).
//!
//! Called a *page view* in the code, so that it is never confused with the views of the log
//! (`store::views`, the analytics computed from the facts); the API calls it a view.

use serde_json::Value;

use crate::domain::{at, int_in_range, required_int};
use crate::field_error::FieldError;
use crate::request_time::TimestampSource;

/// Items a `POST /views` batch may hold.
pub const MAX_BATCH: usize = 1000;

/// One validated view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageView {
    /// The customer who saw the page.
    pub user_id: i64,
    /// The promotion whose page it was.
    pub promotion_id: i64,
    /// The product shown, when the page was one product's.
    pub product_id: Option<i64>,
}

/// A view as clients send it (the body of `POST /view`, and the OpenAPI schema of it). Unknown
/// extra fields are ignored; integers must be JSON integer literals, as for buys.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[schema(as = View)]
pub struct ViewRequest {
    /// The customer who saw the page (signed 64-bit integer).
    pub user_id: i64,
    /// The promotion whose page it was (signed 64-bit integer).
    pub promotion_id: i64,
    /// The product shown (optional).
    pub product_id: Option<i64>,
}

/// A batch of views, recorded atomically (the body of `POST /views`).
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[schema(as = ViewBatch)]
pub struct ViewBatchRequest {
    /// 1 to 1000 views.
    #[schema(min_items = 1, max_items = 1000)]
    pub views: Vec<ViewRequest>,
}

impl From<&ViewRequest> for PageView {
    fn from(r: &ViewRequest) -> PageView {
        PageView { user_id: r.user_id, promotion_id: r.promotion_id, product_id: r.product_id }
    }
}

impl PageView {
    /// Parse a `POST /view` body: straight into a [`ViewRequest`] when it is valid, else as a
    /// JSON value, to name every problem.
    pub fn from_json(bytes: &[u8]) -> Result<PageView, Vec<FieldError>> {
        if let Ok(request) = serde_json::from_slice::<ViewRequest>(bytes) {
            return Ok(PageView::from(&request));
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|e| vec![FieldError::json_invalid(&e)])?;
        PageView::parse(&value, &[Value::from("body")])
    }

    /// Parse one view object; `loc` is where it sits in the request.
    pub fn parse(value: &Value, loc: &[Value]) -> Result<PageView, Vec<FieldError>> {
        let Some(object) = value.as_object() else {
            return Err(vec![FieldError::not_an_object(loc, value)]);
        };
        let mut errors = Vec::new();
        let mut field = |name: &str| required_int(object, name, i64::MIN, None, loc).map_err(|e| errors.push(e)).ok();
        let user_id = field("user_id");
        let promotion_id = field("promotion_id");
        let product_id = match object.get("product_id") {
            None | Some(Value::Null) => Some(None),
            Some(v) => {
                int_in_range(v, i64::MIN, None, &at(loc, "product_id")).map(Some).map_err(|e| errors.push(e)).ok()
            }
        };
        match (user_id, promotion_id, product_id) {
            (Some(user_id), Some(promotion_id), Some(product_id)) if errors.is_empty() => {
                Ok(PageView { user_id, promotion_id, product_id })
            }
            _ => Err(errors),
        }
    }
}

/// Parse a `POST /views` body: `{"views": [...]}` with 1 to [`MAX_BATCH`] valid items, every bad
/// item reported by its index; one bad item rejects the whole batch.
pub fn parse_batch_json(bytes: &[u8]) -> Result<Vec<PageView>, Vec<FieldError>> {
    if let Ok(batch) = serde_json::from_slice::<ViewBatchRequest>(bytes)
        && (1..=MAX_BATCH).contains(&batch.views.len())
    {
        return Ok(batch.views.iter().map(PageView::from).collect());
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| vec![FieldError::json_invalid(&e)])?;
    parse_batch(&value)
}

/// See [`parse_batch_json`], on a parsed value.
pub fn parse_batch(value: &Value) -> Result<Vec<PageView>, Vec<FieldError>> {
    let body = [Value::from("body")];
    let Some(object) = value.as_object() else {
        return Err(vec![FieldError::not_an_object(&body, value)]);
    };
    let loc = at(&body, "views");
    let items = match object.get("views") {
        None => return Err(vec![FieldError::missing(&loc, value)]),
        Some(Value::Array(items)) => items,
        Some(other) => return Err(vec![FieldError::not_a_list(&loc, other)]),
    };
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(vec![FieldError::list_length(&loc, items.len(), MAX_BATCH)]);
    }
    let mut views = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let mut item_loc = loc.clone();
        item_loc.push(Value::from(index));
        match PageView::parse(item, &item_loc) {
            Ok(view) => views.push(view),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() { Ok(views) } else { Err(errors) }
}

/// What is stored for one view: the view, where and when it came from. Its sequence number
/// (among views) is assigned by the store at commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageViewRecord {
    /// The validated view.
    pub view: PageView,
    /// Client IP (`docs/reference.md` §4), as text.
    pub ip_address: String,
    /// Request generation time (`docs/reference.md` §3), microseconds since the Unix epoch.
    pub timestamp_us: i64,
    /// Server receive time, microseconds since the Unix epoch.
    pub received_at_us: i64,
    /// The header the timestamp came from, or the server clock.
    pub timestamp_source: TimestampSource,
    /// The request's `Idempotency-Key`, if any.
    pub idempotency_key: Option<String>,
}

#[cfg(test)]
impl PageViewRecord {
    /// `user` saw `promotion` (no product) at `at_us`, server time, from 127.0.0.1.
    pub(crate) fn test(user: i64, promotion: i64, at_us: i64) -> Self {
        PageViewRecord {
            view: PageView { user_id: user, promotion_id: promotion, product_id: None },
            ip_address: "127.0.0.1".into(),
            timestamp_us: at_us,
            received_at_us: at_us,
            timestamp_source: TimestampSource::Server,
            idempotency_key: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_views_with_and_without_a_product() {
        let view = PageView::from_json(br#"{"user_id": 1, "promotion_id": 2}"#).unwrap();
        assert_eq!(view, PageView { user_id: 1, promotion_id: 2, product_id: None });
        let view = PageView::from_json(br#"{"user_id": 1, "promotion_id": 2, "product_id": -3, "x": 1}"#).unwrap();
        assert_eq!(view.product_id, Some(-3));
    }

    #[test]
    fn names_every_bad_field() {
        let errors = PageView::from_json(br#"{"user_id": "1", "product_id": 1.5}"#).unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| (e.loc[1].clone(), e.kind)).collect();
        assert_eq!(
            fields,
            vec![(json!("user_id"), "int_type"), (json!("promotion_id"), "missing"), (json!("product_id"), "int_type")]
        );
        assert_eq!(PageView::from_json(b"{oops").unwrap_err()[0].kind, "json_invalid");
    }

    #[test]
    fn batches_are_atomic_and_bounded() {
        let good = json!({"user_id": 1, "promotion_id": 2});
        let bad = json!({"user_id": 1});
        let errors = parse_batch(&json!({"views": [good.clone(), bad.clone(), good.clone(), bad]})).unwrap_err();
        let indices: Vec<_> = errors.iter().map(|e| e.loc[2].clone()).collect();
        assert_eq!(indices, vec![json!(1), json!(3)]);
        assert!(parse_batch_json(br#"{"views": []}"#).is_err());
        let full = json!({ "views": vec![good.clone(); MAX_BATCH] }).to_string();
        assert_eq!(parse_batch_json(full.as_bytes()).unwrap().len(), MAX_BATCH);
        let over = json!({ "views": vec![good; MAX_BATCH + 1] }).to_string();
        assert_eq!(parse_batch_json(over.as_bytes()).unwrap_err()[0].kind, "too_long");
    }
}
