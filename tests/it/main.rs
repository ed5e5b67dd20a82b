//! The black-box tests: the real service (in-process on port 0, or the real binary) driven over
//! HTTP. One test binary with a module per area, so `cargo test` links once.
//!
//! Tests that need something the machine may lack (PostgreSQL, Chromium, Schemathesis, root)
//! print a SKIP line without it, unless CI's `BUY_TRACKER_REQUIRE_*` variables make it a failure.

#[macro_use]
mod common;

mod analytics;
mod api;
mod cli;
mod dashboard;
mod disk_full;
mod durability;
mod limits;
mod pg_outage;
mod properties;
mod proxy;
mod refunds;
mod replicas;
mod schemathesis;
mod views;
