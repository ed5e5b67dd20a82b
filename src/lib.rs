//! buy-tracker records the purchases customers make on e-commerce promotion pages and serves live
//! analytics on them. Its contract is `docs/reference.md`; comments cite it as
//! `docs/reference.md §n`.
//!
//! How a buy flows through: an HTTP handler (`http::buy`) checks that the write is not forged
//! (`http::forgery`), parses the body into a [`domain::Buy`] (invalid values cannot exist past
//! this point), stamps it with the request time ([`request_time`]) and the client IP
//! ([`client_ip`]), and hands it to the group-commit writer (`writer`). The writer commits
//! whatever is queued in one transaction of the [`store`]'s log (the facts, their sequence
//! numbers and the idempotency keys, nothing else) and only then answers each waiting request.
//! Every analytic is a view of the log, applied by a stage of its own off that path
//! (`store::views`); reads such as `/stats` read the views' rollups plus the log's few newest
//! facts, never scanning the buys. Page views ([`page_view`]) and refunds ([`refund`]) are facts
//! of their own kinds, recorded the same way.
//!
//! The map:
//! - start-up: `main.rs` (signals, exit codes), [`cli`] (options into a `Config`), [`app`]
//!   (store, writer, routes, bind), `server` (connections and their time limits), [`telemetry`]
//!   (logs);
//! - the edge: [`domain`] and [`field_error`] (parsing into valid types, the 422 shape),
//!   [`request_time`], [`client_ip`], `idempotency`;
//! - [`http`]: one module per resource, plus the shared state, the error type, access keys,
//!   rate limits and middleware;
//! - writing: `writer`, then [`store`] with its SQLite and PostgreSQL implementations;
//! - around them: [`clock`] (time as an input), `metrics`, `lock`.
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
pub mod page_view;
pub mod refund;
pub mod request_time;
pub(crate) mod server;
pub mod store;
pub mod telemetry;
pub(crate) mod writer;
