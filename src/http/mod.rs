//! The HTTP layer: one module per resource, plus the state and helpers they share.
//! Handlers parse requests into domain types, call the writer or the store, and shape responses;
//! every failure goes through `error::ApiError`, turned into a response in one place.

pub(crate) mod access;
pub(crate) mod body;
pub(crate) mod buy;
pub(crate) mod error;
pub(crate) mod events;
pub mod export;
pub(crate) mod forgery;
pub(crate) mod health;
pub(crate) mod live;
pub(crate) mod metrics;
pub(crate) mod middleware;
pub(crate) mod openapi;
pub(crate) mod pages;
pub(crate) mod promotions;
pub(crate) mod query;
pub mod rate_limit;
pub(crate) mod reads;
pub(crate) mod refund;
pub(crate) mod root;
pub(crate) mod state;
pub(crate) mod stats;
pub(crate) mod timing;
pub(crate) mod view;
