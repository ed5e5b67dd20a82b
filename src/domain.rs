//! The buy as the rest of the program sees it: parsed once at the edge into types that cannot be
//! invalid (`docs/reference.md` §2), and the record that is stored for it.
//!
//! Parsing works on a `serde_json::Value` rather than a derived `Deserialize` so that every problem
//! in a body is reported at once, in the original service's 422 shape, with its exact location.

use serde_json::{Map, Value};

use crate::field_error::FieldError;
use crate::request_time::TimestampSource;

/// Largest `product_quantity` accepted (`docs/reference.md` §2).
pub const MAX_QUANTITY: i64 = 1_000_000;
/// Items a `POST /buys` batch may hold (`docs/reference.md` §5).
pub const MAX_BATCH: usize = 1000;

/// A units count from 1 to [`MAX_QUANTITY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity(u32);

impl Quantity {
    /// One unit.
    pub const ONE: Quantity = Quantity(1);

    /// `units` as a quantity, if it is from 1 to [`MAX_QUANTITY`].
    pub fn new(units: i64) -> Option<Quantity> {
        (1..=MAX_QUANTITY).contains(&units).then_some(Quantity(units as u32))
    }

    /// The number of units.
    pub fn get(self) -> i64 {
        i64::from(self.0)
    }
}

/// One validated buy as the client described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buy {
    /// The buying customer.
    pub user_id: i64,
    /// The promotion page the buy came from.
    pub promotion_id: i64,
    /// The product bought.
    pub product_id: i64,
    /// Units bought.
    pub quantity: Quantity,
    /// Price of one unit in cents, when the client sent one (for revenue analytics).
    pub unit_price_cents: Option<i64>,
}

/// A purchase as clients send it (the body of `POST /buy`, and the OpenAPI schema of it).
/// Unknown extra fields are ignored; integers must be JSON integer literals (not strings, not
/// `5.0`), which serde_json enforces for `i64` fields. Valid bodies (nearly all of them) are read
/// straight into this struct; anything else is parsed again as a JSON value, to report every
/// problem with its location ([`Buy::parse`]).
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
pub struct BuyRequest {
    /// The buying customer (signed 64-bit integer).
    pub user_id: i64,
    /// The promotion page the buy came from (signed 64-bit integer).
    pub promotion_id: i64,
    /// The product bought (signed 64-bit integer).
    pub product_id: i64,
    /// Units bought.
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub product_quantity: i64,
    /// Price of one unit in cents, for revenue analytics (optional).
    #[schema(minimum = 0)]
    pub unit_price_cents: Option<i64>,
}

impl BuyRequest {
    /// The buy, when every field is in range.
    fn validated(&self) -> Option<Buy> {
        let in_range =
            (1..=MAX_QUANTITY).contains(&self.product_quantity) && self.unit_price_cents.is_none_or(|p| p >= 0);
        in_range.then_some(Buy {
            user_id: self.user_id,
            promotion_id: self.promotion_id,
            product_id: self.product_id,
            // In range 1..=MAX_QUANTITY, checked above.
            quantity: Quantity(self.product_quantity as u32),
            unit_price_cents: self.unit_price_cents,
        })
    }
}

/// A batch of purchases, recorded atomically (the body of `POST /buys`).
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
pub struct BatchRequest {
    /// 1 to 1000 buys.
    #[schema(min_items = 1, max_items = 1000)]
    pub buys: Vec<BuyRequest>,
}

impl Buy {
    /// Parse a `POST /buy` body.
    pub fn from_json(bytes: &[u8]) -> Result<Buy, Vec<FieldError>> {
        if let Some(buy) = serde_json::from_slice::<BuyRequest>(bytes).ok().as_ref().and_then(BuyRequest::validated) {
            return Ok(buy);
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|e| vec![FieldError::json_invalid(&e)])?;
        Buy::parse(&value, &[Value::from("body")])
    }

    /// Parse one buy object; `loc` is where it sits in the request (`["body"]` or
    /// `["body", "buys", 3]`), so errors name the exact field.
    pub fn parse(value: &Value, loc: &[Value]) -> Result<Buy, Vec<FieldError>> {
        let Some(object) = value.as_object() else {
            return Err(vec![FieldError::not_an_object(loc, value)]);
        };
        let mut errors = Vec::new();
        let mut field = |name: &str, min: i64, max: Option<i64>| {
            required_int(object, name, min, max, loc).map_err(|e| errors.push(e)).ok()
        };
        let user_id = field("user_id", i64::MIN, None);
        let promotion_id = field("promotion_id", i64::MIN, None);
        let product_id = field("product_id", i64::MIN, None);
        let quantity = field("product_quantity", 1, Some(MAX_QUANTITY));
        let unit_price_cents = match object.get("unit_price_cents") {
            None | Some(Value::Null) => Some(None),
            Some(v) => {
                int_in_range(v, 0, None, &at(loc, "unit_price_cents")).map(Some).map_err(|e| errors.push(e)).ok()
            }
        };
        match (user_id, promotion_id, product_id, quantity, unit_price_cents) {
            (Some(user_id), Some(promotion_id), Some(product_id), Some(q), Some(unit_price_cents))
                if errors.is_empty() =>
            {
                Ok(Buy {
                    user_id,
                    promotion_id,
                    product_id,
                    // In range 1..=MAX_QUANTITY, checked above.
                    quantity: Quantity(q as u32),
                    unit_price_cents,
                })
            }
            _ => Err(errors),
        }
    }
}

/// Parse a `POST /buys` body as bytes: read straight into a [`BatchRequest`] when it is valid,
/// else as a JSON value by [`parse_batch`], which names every problem.
pub fn parse_batch_json(bytes: &[u8]) -> Result<Vec<Buy>, Vec<FieldError>> {
    if let Ok(batch) = serde_json::from_slice::<BatchRequest>(bytes)
        && (1..=MAX_BATCH).contains(&batch.buys.len())
        && let Some(buys) = batch.buys.iter().map(BuyRequest::validated).collect::<Option<Vec<_>>>()
    {
        return Ok(buys);
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| vec![FieldError::json_invalid(&e)])?;
    parse_batch(&value)
}

/// Parse a `POST /buys` body: `{"buys": [...]}` with 1 to [`MAX_BATCH`] valid items.
/// Every bad item is reported by its index; one bad item rejects the whole batch.
pub fn parse_batch(value: &Value) -> Result<Vec<Buy>, Vec<FieldError>> {
    let body = [Value::from("body")];
    let Some(object) = value.as_object() else {
        return Err(vec![FieldError::not_an_object(&body, value)]);
    };
    let loc = at(&body, "buys");
    let items = match object.get("buys") {
        None => return Err(vec![FieldError::missing(&loc, value)]),
        Some(Value::Array(items)) => items,
        Some(other) => return Err(vec![FieldError::not_a_list(&loc, other)]),
    };
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(vec![FieldError::list_length(&loc, items.len(), MAX_BATCH)]);
    }
    let mut buys = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let mut item_loc = loc.clone();
        item_loc.push(Value::from(index));
        match Buy::parse(item, &item_loc) {
            Ok(buy) => buys.push(buy),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() { Ok(buys) } else { Err(errors) }
}

/// `loc` extended by one field name.
pub(crate) fn at(loc: &[Value], name: &str) -> Vec<Value> {
    let mut loc = loc.to_vec();
    loc.push(Value::from(name));
    loc
}

pub(crate) fn required_int(
    object: &Map<String, Value>,
    name: &str,
    min: i64,
    max: Option<i64>,
    loc: &[Value],
) -> Result<i64, FieldError> {
    let loc = at(loc, name);
    match object.get(name) {
        None => Err(FieldError::missing(&loc, &Value::Object(object.clone()))),
        Some(v) => int_in_range(v, min, max, &loc),
    }
}

/// A strict JSON integer within signed 64 bits and the given bounds. Strings and floats such as
/// `"5"` or `5.0` are refused (a deliberate difference from the original, `docs/reference.md` §8).
pub(crate) fn int_in_range(v: &Value, min: i64, max: Option<i64>, loc: &[Value]) -> Result<i64, FieldError> {
    let n = match v {
        Value::Number(n) if n.is_i64() => n.as_i64().unwrap_or_default(),
        Value::Number(n) if n.is_u64() => return Err(FieldError::int_too_large(loc, v)),
        _ => return Err(FieldError::not_an_int(loc, v)),
    };
    if n < min {
        return Err(FieldError::too_small(loc, v, min));
    }
    if let Some(max) = max.filter(|max| n > *max) {
        return Err(FieldError::too_large(loc, v, max));
    }
    Ok(n)
}

/// What is stored for one buy (`docs/reference.md` §2): the buy, where and when it came from. The sequence number
/// is assigned by the store at commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuyRecord {
    /// The validated buy.
    pub buy: Buy,
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

/// Test builders: the one way tests make records.
#[cfg(test)]
impl BuyRecord {
    /// `quantity` units of `product` bought by `user` in `promotion` at `at_us` (server time,
    /// from 127.0.0.1), priced `price` cents a unit if given.
    pub(crate) fn test(user: i64, promotion: i64, product: i64, quantity: i64, price: Option<i64>, at_us: i64) -> Self {
        BuyRecord {
            buy: Buy {
                user_id: user,
                promotion_id: promotion,
                product_id: product,
                quantity: Quantity::new(quantity).expect("a test quantity from 1 to 1,000,000"),
                unit_price_cents: price,
            },
            ip_address: "127.0.0.1".into(),
            timestamp_us: at_us,
            received_at_us: at_us,
            timestamp_source: TimestampSource::Server,
            idempotency_key: None,
        }
    }

    /// One unit bought by user `i` (promotion `i % 7`, product `i % 11`) at `at_us`.
    pub(crate) fn example(i: i64, at_us: i64) -> Self {
        Self::test(i, i % 7, i % 11, 1, None, at_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body() -> Vec<Value> {
        vec![json!("body")]
    }

    fn valid() -> Value {
        json!({"user_id": 1, "promotion_id": 2, "product_id": 3, "product_quantity": 4})
    }

    #[test]
    fn parses_a_valid_buy_and_ignores_unknown_fields() {
        let mut v = valid();
        v["extra"] = json!("x");
        let buy = Buy::parse(&v, &body()).unwrap();
        assert_eq!((buy.user_id, buy.promotion_id, buy.product_id), (1, 2, 3));
        assert_eq!(buy.quantity.get(), 4);
        assert_eq!(buy.unit_price_cents, None);
    }

    #[test]
    fn accepts_price_and_extreme_ids() {
        let v = json!({"user_id": i64::MIN, "promotion_id": i64::MAX, "product_id": 0,
            "product_quantity": MAX_QUANTITY, "unit_price_cents": 0});
        let buy = Buy::parse(&v, &body()).unwrap();
        assert_eq!(buy.user_id, i64::MIN);
        assert_eq!(buy.quantity.get(), MAX_QUANTITY);
        assert_eq!(buy.unit_price_cents, Some(0));
    }

    #[test]
    fn reports_every_missing_field() {
        let errors = Buy::parse(&json!({}), &body()).unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.loc[1].clone()).collect();
        assert_eq!(
            fields,
            vec![json!("user_id"), json!("promotion_id"), json!("product_id"), json!("product_quantity")]
        );
        assert!(errors.iter().all(|e| e.kind == "missing"));
    }

    #[test]
    fn refuses_strings_floats_and_bools_as_integers() {
        for bad in [json!("5"), json!(5.0), json!(true), json!(null), json!([1])] {
            let mut v = valid();
            v["user_id"] = bad;
            let errors = Buy::parse(&v, &body()).unwrap_err();
            assert_eq!(errors.len(), 1);
            assert_eq!(errors[0].kind, "int_type");
        }
    }

    #[test]
    fn refuses_integers_beyond_i64() {
        let v: Value = serde_json::from_str(
            r#"{"user_id": 9223372036854775808, "promotion_id": 2, "product_id": 3, "product_quantity": 4}"#,
        )
        .unwrap();
        let errors = Buy::parse(&v, &body()).unwrap_err();
        assert_eq!(errors[0].kind, "int_too_large");
    }

    #[test]
    fn quantity_bounds() {
        for (q, ok) in [(0, false), (1, true), (MAX_QUANTITY, true), (MAX_QUANTITY + 1, false), (-1, false)] {
            let mut v = valid();
            v["product_quantity"] = json!(q);
            assert_eq!(Buy::parse(&v, &body()).is_ok(), ok, "quantity {q}");
        }
    }

    #[test]
    fn negative_price_is_refused() {
        let mut v = valid();
        v["unit_price_cents"] = json!(-1);
        let errors = Buy::parse(&v, &body()).unwrap_err();
        assert_eq!(errors[0].kind, "greater_than_equal");
        assert_eq!(errors[0].loc, vec![json!("body"), json!("unit_price_cents")]);
    }

    #[test]
    fn fast_and_slow_paths_agree() {
        let bodies = [
            r#"{"user_id": 1, "promotion_id": 2, "product_id": 3, "product_quantity": 4}"#,
            r#"{"user_id": 1, "promotion_id": 2, "product_id": 3, "product_quantity": 4, "unit_price_cents": null}"#,
            r#"{"user_id": 1, "promotion_id": 2, "product_id": 3, "product_quantity": 4, "x": [1, {"y": 2}]}"#,
            r#"{"user_id": 1, "promotion_id": 2, "product_id": 3, "product_quantity": 0}"#,
            r#"{"user_id": 1, "promotion_id": 2, "product_id": 3, "product_quantity": 1000001}"#,
            r#"{"user_id": 1, "promotion_id": 2, "product_id": 3, "product_quantity": 4, "unit_price_cents": -1}"#,
            r#"{"user_id": "1", "promotion_id": 2, "product_id": 3, "product_quantity": 4}"#,
            r#"{"user_id": 1.0, "promotion_id": 2, "product_id": 3, "product_quantity": 4}"#,
            r#"{"promotion_id": 2, "product_id": 3, "product_quantity": 4}"#,
            r#"[1, 2]"#,
        ];
        for body in bodies {
            let value: Value = serde_json::from_str(body).unwrap();
            assert_eq!(Buy::from_json(body.as_bytes()), Buy::parse(&value, &body_loc()), "{body}");
        }
        assert_eq!(Buy::from_json(b"{oops").unwrap_err()[0].kind, "json_invalid");
        for body in bodies {
            let batch = format!(r#"{{"buys": [{body}, {body}]}}"#);
            let value: Value = serde_json::from_str(&batch).unwrap();
            assert_eq!(parse_batch_json(batch.as_bytes()), parse_batch(&value), "{batch}");
        }
        for batch in [r#"{"buys": []}"#, r#"{"buys": {}}"#, r#"{}"#, r#"[]"#] {
            let value: Value = serde_json::from_str(batch).unwrap();
            assert_eq!(parse_batch_json(batch.as_bytes()), parse_batch(&value), "{batch}");
        }
    }

    fn body_loc() -> Vec<Value> {
        vec![json!("body")]
    }

    #[test]
    fn non_object_body_is_one_error() {
        let errors = Buy::parse(&json!([1, 2]), &body()).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].loc, vec![json!("body")]);
    }

    #[test]
    fn batch_names_each_bad_index() {
        let mut bad = valid();
        bad["product_quantity"] = json!(0);
        let errors = parse_batch(&json!({"buys": [valid(), bad.clone(), valid(), bad]})).unwrap_err();
        let indices: Vec<_> = errors.iter().map(|e| e.loc[2].clone()).collect();
        assert_eq!(indices, vec![json!(1), json!(3)]);
    }

    #[test]
    fn batch_bounds() {
        assert!(parse_batch(&json!({"buys": []})).is_err());
        assert_eq!(parse_batch(&json!({"buys": [valid()]})).unwrap().len(), 1);
        let full: Vec<_> = (0..MAX_BATCH).map(|_| valid()).collect();
        assert_eq!(parse_batch(&json!({ "buys": full })).unwrap().len(), MAX_BATCH);
        let over: Vec<_> = (0..=MAX_BATCH).map(|_| valid()).collect();
        let errors = parse_batch(&json!({ "buys": over })).unwrap_err();
        assert_eq!(errors[0].kind, "too_long");
        assert!(parse_batch(&json!({"buys": {}})).is_err());
        assert!(parse_batch(&json!({})).is_err());
    }
}
