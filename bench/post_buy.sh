#!/usr/bin/env bash
# POST /buy throughput: buy-tracker (durable, SQLite) against the in-memory axum baseline
# (bench/baseline.rs), measured in alternating runs in one go so the ratio survives a noisy machine.
#
# Usage: bench/post_buy.sh [ROUNDS] [SECONDS] [CONNECTIONS]   (defaults: 5 10 64)
# Env:   BT_DB=URL runs the service on another store (e.g. BT_DB=memory: to leave the disk out).
# Needs wrk (apt-get install -y wrk). Prints every run, then the medians and the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}; seconds=${2:-10}; conns=${3:-64}
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 1; }

cargo build --release --quiet --bin buy-tracker --example baseline
work=$(mktemp -d)
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null; rm -rf "$work"' EXIT

pids=()
start() { # name command... ; starts it in the background (in this shell, so the trap can stop it)
  local log="$work/$1.log"; shift
  "$@" >"$log" 2>&1 &
  pids+=($!)
}
url_of() { # name ; waits for the "listening on" line and prints the URL
  for _ in $(seq 100); do
    url=$(grep -o 'listening on http://[0-9.:]*' "$work/$1.log" | head -1 | sed 's/listening on //')
    if [ -n "$url" ]; then echo "$url"; return; fi
    sleep 0.1
  done
  echo "$1 did not start: $(cat "$work/$1.log")" >&2; exit 1
}

start baseline ./target/release/examples/baseline 0
start buy-tracker ./target/release/buy-tracker --host 127.0.0.1 --port 0 --database-url "${BT_DB:-sqlite:$work/bench.db}"
base_url=$(url_of baseline)
bt_url=$(url_of buy-tracker)

run() { wrk -t1 -c"$conns" -d"${seconds}s" -s bench/post_buy.lua "$1/buy" | grep '^RESULT'; }
for r in $(seq "$rounds"); do
  echo "round $r baseline    $(run "$base_url")" | tee -a "$work/results"
  echo "round $r buy-tracker $(run "$bt_url")" | tee -a "$work/results"
done
echo "buy-tracker peak RSS: $(grep VmHWM "/proc/${pids[1]}/status" | awk '{print $2}') KiB"
echo "stored: $(curl -s "$bt_url/stats")"

python3 - "$work/results" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    name = line.split()[2]
    fields = dict(re.findall(r"(\w+)=([\d.]+)", line))
    runs.setdefault(name, []).append({k: float(v) for k, v in fields.items()})
med = {n: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for n, rs in runs.items()}
for n, m in med.items():
    print(f"median {n:12} rps={m['rps']:.0f} p50={m['p50_ms']:.2f}ms p90={m['p90_ms']:.2f}ms p99={m['p99_ms']:.2f}ms errors={m['errors']:.0f} non2xx={m['non2xx']:.0f}")
print(f"ratio buy-tracker/baseline (median rps): {med['buy-tracker']['rps'] / med['baseline']['rps']:.2f}")
PY
