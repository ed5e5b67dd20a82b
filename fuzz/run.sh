#!/usr/bin/env bash
# A short, bounded fuzz run of every target (libFuzzer via cargo-fuzz). Usage: fuzz/run.sh [SECONDS]
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP lets this stable toolchain provide them.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-20}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in request_time client_ip buy_body; do
  echo "== fuzz $target for ${seconds}s"
  # The crate forbids unsafe code: no sanitizer is needed to catch panics, and it builds faster.
  if ! RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none "$target" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz target $target failed (the crashing input is under fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  grep -E '^Done' "$log"
done
