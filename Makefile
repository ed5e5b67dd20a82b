# Shortcuts for people used to the original's Makefile; cargo alone does everything.
.PHONY: run run-dev test fmt lint

run:
	cargo run --release

run-dev:
	cargo run -- --dev

test:
	cargo test

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
