//! A refund as the rest of the program sees it (`docs/reference.md` §9): units of one recorded
//! buy given back. Parsed at the edge like a buy; whether the buy exists and still has the units
//! is decided by the store, inside the write transaction that records the refund, so concurrent
//! refunds of one buy can never give back more than it holds.

use serde_json::{Value, json};

use crate::domain::{at, int_in_range, required_int};
use crate::field_error::FieldError;
use crate::request_time::TimestampSource;

/// A refund as clients ask for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refund {
    /// The buy refunded (its `buy_count`).
    pub buy_count: i64,
    /// The units to give back; `None` means every unit not yet refunded.
    pub units: Option<i64>,
}

/// The body of `POST /refunds` (its OpenAPI schema). Integers must be JSON integer literals.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[schema(as = RefundRequest)]
pub struct RefundRequest {
    /// The buy to refund (its buy_count).
    pub buy_count: i64,
    /// Units to refund, at least 1; absent or null: every unit of the buy not yet refunded.
    #[schema(minimum = 1)]
    pub product_quantity: Option<i64>,
}

impl Refund {
    /// Parse a `POST /refunds` body, naming every problem.
    pub fn from_json(bytes: &[u8]) -> Result<Refund, Vec<FieldError>> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| vec![FieldError::json_invalid(&e)])?;
        let body = [Value::from("body")];
        let Some(object) = value.as_object() else {
            return Err(vec![FieldError::not_an_object(&body, &value)]);
        };
        let mut errors = Vec::new();
        let buy_count = required_int(object, "buy_count", i64::MIN, None, &body).map_err(|e| errors.push(e)).ok();
        let units = match object.get("product_quantity") {
            None | Some(Value::Null) => Some(None),
            Some(v) => {
                int_in_range(v, 1, None, &at(&body, "product_quantity")).map(Some).map_err(|e| errors.push(e)).ok()
            }
        };
        match (buy_count, units) {
            (Some(buy_count), Some(units)) if errors.is_empty() => Ok(Refund { buy_count, units }),
            _ => Err(errors),
        }
    }
}

/// What is stored for a refund request: the refund, where and when it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRecord {
    /// The validated request.
    pub refund: Refund,
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

/// A committed refund, as `POST /refunds` answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefundReceipt {
    /// The refund's number among refunds.
    pub refund_count: i64,
    /// The buy refunded.
    pub buy_count: i64,
    /// Units given back by this refund.
    pub refunded_units: i64,
    /// The buy's units not refunded after it.
    pub remaining_units: i64,
    /// `refunded_units × unit_price_cents` (0 for a buy without a price; saturating).
    pub refunded_cents: i64,
}

/// Why a refund was refused (nothing recorded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundRefusal {
    /// No buy has this number.
    UnknownBuy,
    /// More units were asked for than are left to refund (`remaining`, possibly 0).
    TooMany { asked: Option<i64>, remaining: i64 },
}

impl RefundRefusal {
    /// The 422 naming `product_quantity` for [`RefundRefusal::TooMany`].
    pub fn field_error(&self) -> Option<FieldError> {
        let RefundRefusal::TooMany { asked, remaining } = *self else { return None };
        let loc = [json!("body"), json!("product_quantity")];
        let input = asked.map_or(Value::Null, Value::from);
        Some(if remaining == 0 {
            FieldError::nothing_to_refund(&loc, &input)
        } else {
            FieldError::too_large(&loc, &input, remaining)
        })
    }
}

/// Decide a refund of `asked` units (every unit left with `None`) of a buy of `quantity` units at
/// `price`, of which `remaining` are not refunded yet: the units and cents it gives back.
pub fn decide(asked: Option<i64>, remaining: i64, price: Option<i64>) -> Result<(i64, i64), RefundRefusal> {
    let units = asked.unwrap_or(remaining);
    if units < 1 || units > remaining {
        return Err(RefundRefusal::TooMany { asked, remaining });
    }
    Ok((units, price.map_or(0, |p| p.saturating_mul(units))))
}

#[cfg(test)]
impl RefundRecord {
    /// A refund of `units` of buy `buy_count` at `at_us`, server time, from 127.0.0.1.
    pub(crate) fn test(buy_count: i64, units: Option<i64>, at_us: i64) -> Self {
        RefundRecord {
            refund: Refund { buy_count, units },
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

    #[test]
    fn parses_whole_and_partial_refunds() {
        assert_eq!(Refund::from_json(br#"{"buy_count": 7}"#).unwrap(), Refund { buy_count: 7, units: None });
        let partial = Refund::from_json(br#"{"buy_count": 7, "product_quantity": 2}"#).unwrap();
        assert_eq!(partial, Refund { buy_count: 7, units: Some(2) });
        let null = Refund::from_json(br#"{"buy_count": 7, "product_quantity": null}"#).unwrap();
        assert_eq!(null.units, None);
    }

    #[test]
    fn names_every_bad_field() {
        let errors = Refund::from_json(br#"{"buy_count": "7", "product_quantity": 0}"#).unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| (e.loc[1].clone(), e.kind)).collect();
        assert_eq!(fields, vec![(json!("buy_count"), "int_type"), (json!("product_quantity"), "greater_than_equal")]);
        assert_eq!(Refund::from_json(b"[]").unwrap_err()[0].kind, "model_attributes_type");
    }

    #[test]
    fn a_refund_gives_back_at_most_what_is_left() {
        assert_eq!(decide(None, 3, Some(250)), Ok((3, 750)));
        assert_eq!(decide(Some(2), 3, None), Ok((2, 0)));
        assert_eq!(decide(Some(4), 3, Some(1)), Err(RefundRefusal::TooMany { asked: Some(4), remaining: 3 }));
        assert_eq!(decide(None, 0, Some(1)), Err(RefundRefusal::TooMany { asked: None, remaining: 0 }));
        assert_eq!(decide(Some(1), 1, Some(i64::MAX)), Ok((1, i64::MAX)));
        assert_eq!(decide(Some(2), 2, Some(i64::MAX)), Ok((2, i64::MAX)), "saturates");
    }
}
