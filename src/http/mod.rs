//! The HTTP layer: one module per resource, plus the state and helpers they share.
//! Handlers parse requests into domain types, call the writer or the store, and shape responses;
//! every failure goes through [`error::ApiError`].

pub mod access;
pub mod body;
pub mod buy;
pub mod error;
pub mod events;
pub mod export;
pub mod forgery;
pub mod health;
pub mod live;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod pages;
pub mod promotions;
pub mod query;
pub mod rate_limit;
pub mod reads;
pub mod root;
pub mod state;
pub mod stats;
