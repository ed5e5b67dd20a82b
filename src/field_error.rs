//! One problem with one input field, in the original (FastAPI/pydantic) shape of a 422's
//! `detail` items: `{"type", "loc", "msg", "input", "ctx"?}`, so existing clients can read them.
//! Built where inputs are parsed (the domain, query strings, headers); turned into a 422 by
//! the HTTP layer's `ApiError::Validation`.

use serde::Serialize;
use serde_json::{Value, json};

/// One problem with one input field, in pydantic's error shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldError {
    /// Machine-readable kind (`missing`, `int_type`, `greater_than_equal`, ...).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Where the problem is: `["body", "product_quantity"]`, `["query", "timeframe_hours"]`.
    pub loc: Vec<Value>,
    /// Human-readable message.
    pub msg: String,
    /// The offending input.
    pub input: Value,
    /// Extra context such as the violated bound.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ctx: Option<Box<Value>>,
}

/// The most of an offending input an error echoes, in bytes of JSON. Without a bound, a 2 MiB
/// batch whose items each miss three fields answered about 8 MiB: every error copied its item.
pub const MAX_ECHO_BYTES: usize = 256;

/// `input` as an error echoes it: whole when small, else a string saying what it was (a long
/// string keeps its start).
fn echo(input: &Value) -> Value {
    let size = serde_json::to_string(input).map_or(usize::MAX, |s| s.len());
    if size <= MAX_ECHO_BYTES {
        return input.clone();
    }
    match input {
        Value::String(text) => {
            let end = (0..=MAX_ECHO_BYTES / 2).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
            Value::from(format!("{}… ({} bytes)", &text[..end], text.len()))
        }
        Value::Object(fields) => Value::from(format!("<object of {} fields, {size} bytes>", fields.len())),
        Value::Array(items) => Value::from(format!("<list of {} items, {size} bytes>", items.len())),
        other => other.clone(),
    }
}

impl FieldError {
    fn new(kind: &'static str, loc: &[Value], msg: impl Into<String>, input: &Value) -> Self {
        FieldError { kind, loc: loc.to_vec(), msg: msg.into(), input: echo(input), ctx: None }
    }

    fn with_ctx(mut self, ctx: Value) -> Self {
        self.ctx = Some(Box::new(ctx));
        self
    }

    /// A required field is absent; `input` is the enclosing object.
    pub fn missing(loc: &[Value], input: &Value) -> Self {
        Self::new("missing", loc, "Field required", input)
    }

    /// The value is not a JSON integer.
    pub fn not_an_int(loc: &[Value], input: &Value) -> Self {
        Self::new("int_type", loc, "Input should be a valid integer", input)
    }

    /// The integer does not fit in signed 64 bits.
    pub fn int_too_large(loc: &[Value], input: &Value) -> Self {
        Self::new("int_too_large", loc, "Input should be a valid integer within the signed 64-bit range", input)
    }

    /// Below the lower bound `ge`.
    pub fn too_small(loc: &[Value], input: &Value, ge: impl Into<Value> + std::fmt::Display + Copy) -> Self {
        Self::new("greater_than_equal", loc, format!("Input should be greater than or equal to {ge}"), input)
            .with_ctx(json!({ "ge": ge.into() }))
    }

    /// Above the upper bound `le`.
    pub fn too_large(loc: &[Value], input: &Value, le: impl Into<Value> + std::fmt::Display + Copy) -> Self {
        Self::new("less_than_equal", loc, format!("Input should be less than or equal to {le}"), input)
            .with_ctx(json!({ "le": le.into() }))
    }

    /// The value is not a JSON object.
    pub fn not_an_object(loc: &[Value], input: &Value) -> Self {
        Self::new(
            "model_attributes_type",
            loc,
            "Input should be a valid dictionary or object to extract fields from",
            input,
        )
    }

    /// The value is not a JSON array.
    pub fn not_a_list(loc: &[Value], input: &Value) -> Self {
        Self::new("list_type", loc, "Input should be a valid list", input)
    }

    /// A list with a length outside `1..=max`.
    pub fn list_length(loc: &[Value], len: usize, max: usize) -> Self {
        let input = json!(format!("<list of {len} items>"));
        if len == 0 {
            Self::new("too_short", loc, "List should have at least 1 item after validation, not 0", &input)
                .with_ctx(json!({"field_type": "List", "min_length": 1, "actual_length": 0}))
        } else {
            Self::new(
                "too_long",
                loc,
                format!("List should have at most {max} items after validation, not {len}"),
                &input,
            )
            .with_ctx(json!({"field_type": "List", "max_length": max, "actual_length": len}))
        }
    }

    /// The body is not valid JSON.
    pub fn json_invalid(error: &serde_json::Error) -> Self {
        Self::new("json_invalid", &[json!("body"), json!(error.column())], "JSON decode error", &json!({}))
            .with_ctx(json!({ "error": error.to_string() }))
    }

    /// The body could not be read (for a reason other than its size).
    pub fn json_invalid_text(reason: &str) -> Self {
        Self::new("json_invalid", &[json!("body")], "JSON decode error", &json!({}))
            .with_ctx(json!({ "error": reason }))
    }

    /// A query string that cannot be decoded.
    pub fn query_invalid(reason: &str, input: &str) -> Self {
        Self::new("query_invalid", &[json!("query")], format!("Malformed query string: {reason}"), &json!(input))
    }

    /// A query parameter that is not a number.
    pub fn not_a_number(loc: &[Value], input: &Value) -> Self {
        Self::new("float_parsing", loc, "Input should be a valid number, unable to parse string as a number", input)
    }

    /// A query parameter that is not an integer.
    pub fn not_an_int_string(loc: &[Value], input: &Value) -> Self {
        Self::new("int_parsing", loc, "Input should be a valid integer, unable to parse string as an integer", input)
    }

    /// A query parameter outside its allowed values.
    pub fn not_a_choice(loc: &[Value], input: &Value, choices: &[&str]) -> Self {
        let expected = choices.iter().map(|c| format!("'{c}'")).collect::<Vec<_>>().join(" or ");
        Self::new("enum", loc, format!("Input should be {expected}"), input).with_ctx(json!({ "expected": expected }))
    }

    /// A query parameter that is not an RFC 3339 time.
    pub fn not_a_time(loc: &[Value], input: &Value) -> Self {
        Self::new("datetime_parsing", loc, "Input should be an RFC 3339 time, such as 2025-06-27T20:14:12Z", input)
    }

    /// A query parameter that is not an IANA time zone name.
    pub fn not_a_time_zone(loc: &[Value], input: &Value) -> Self {
        Self::new("value_error", loc, "Input should be an IANA time zone name, such as Europe/Paris or UTC", input)
    }

    /// A refund of a buy with no units left to refund.
    pub fn nothing_to_refund(loc: &[Value], input: &Value) -> Self {
        Self::new("value_error", loc, "Every unit of this buy is already refunded", input)
    }

    /// A header value that breaks its rules.
    pub fn bad_header(name: &str, msg: &str, input: &Value) -> Self {
        Self::new("value_error", &[json!("header"), json!(name)], msg, input)
    }
}
