//! buy-tracker records the purchases customers make on e-commerce promotion pages and serves live
//! analytics on them.
//!
//! How a buy flows through: an HTTP handler ([`http::buy`]) parses the body into a
//! [`domain::Buy`] (invalid values cannot exist past this point), stamps it with the request time
//! ([`request_time`]) and the client IP ([`client_ip`]), and hands it to the group-commit
//! [`writer`]. The writer commits whatever is queued in one transaction of the [`store`] —
//! buys, sequence numbers, rollups for analytics and idempotency keys together — and only then
//! answers each waiting request. Reads such as `/stats` use the rollups, never scanning the buys.
#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod client_ip;
pub mod clock;
pub mod domain;
pub mod field_error;
pub mod http;
pub(crate) mod idempotency;
pub(crate) mod lock;
pub(crate) mod metrics;
pub mod request_time;
pub(crate) mod server;
pub mod store;
pub mod telemetry;
pub(crate) mod writer;
