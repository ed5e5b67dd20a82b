#!/usr/bin/env bash
# Where POST /buy spends its CPU: perf samples of the running service (and of PostgreSQL for the
# shared store) under `wrk -t1 -c64`, grouped by thread and by function.
#
# Usage: bench/profile.sh [sqlite|postgres] [SECONDS] [OUT_DIR]   (defaults: sqlite 8 target/bench/profile)
# Needs perf (apt-get install -y linux-perf) and wrk; for postgres, psql and a server at
# BENCH_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/postgres). Writes OUT_DIR/profile-<store>.txt
# (a text report: samples by thread, then the hottest functions); the samples stay in
# target/bench/profile-<store>.perf.data for `perf report -i`.
set -euo pipefail
cd "$(dirname "$0")/.."
store=${1:-sqlite}; seconds=${2:-8}; out=${3:-target/bench/profile}
for tool in perf wrk; do command -v $tool >/dev/null || { echo "bench/profile.sh: $tool is missing" >&2; exit 1; }; done
mkdir -p "$out" target/bench
cargo build --release --quiet --bin buy-tracker
work=$(mktemp -d)
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  [ -n "${database:-}" ] && psql "$pg" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

case "$store" in
  sqlite) url="sqlite:$work/profile.db"; scope=(-p) ;;
  postgres)
    pg=${BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
    database="bench_profile_$$"
    psql "$pg" -qc "CREATE DATABASE $database" >/dev/null
    url="${pg%/*}/$database"; scope=(-a) ;;
  *) echo "usage: bench/profile.sh [sqlite|postgres] [SECONDS] [OUT_DIR]" >&2; exit 2 ;;
esac

./target/release/buy-tracker --host 127.0.0.1 --port 0 --database-url "$url" >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do
  base=$(grep -o 'listening on http://[0-9.:]*' "$work/server.log" | head -1 | sed 's/listening on //') && [ -n "$base" ] && break
  sleep 0.1
done
[ -n "${base:-}" ] || { echo "the service did not start: $(cat "$work/server.log")" >&2; exit 1; }

# Warm up, then sample the service alone (SQLite) or the whole machine (PostgreSQL, whose
# backends are other processes) while wrk runs.
wrk -t1 -c64 -d2s -s bench/post_buy.lua "$base/buy" >/dev/null
if [ "$store" = sqlite ]; then target=("${scope[@]}" "$server"); else target=("${scope[@]}"); fi
wrk -t1 -c64 -d"$((seconds + 6))s" -s bench/post_buy.lua "$base/buy" >"$work/wrk.out" &
load=$!
sleep 1
perf record -F 999 -g "${target[@]}" -o "target/bench/profile-$store.perf.data" -- sleep "$seconds" >/dev/null 2>&1
# Listed while wrk still runs. Only this run's processes: the service, its load generator and (for PostgreSQL) the server's.
procs="$server $load"
[ "$store" = postgres ] && procs="$procs $(pgrep -x postgres | tr '\n' ' ')"
pids=$(for p in $procs; do ls "/proc/$p/task" 2>/dev/null; done | paste -sd,)
wait "$load" 2>/dev/null || true

report="$out/profile-$store.txt"
set +o pipefail  # `head` closes perf report's output early
{
  echo "# bench/profile.sh $store $seconds ($(date -u +%FT%TZ), $(git rev-parse --short HEAD)$(git diff --quiet || echo ', dirty tree'))"
  grep "^RESULT" "$work/wrk.out" || echo "(wrk printed no RESULT line)"
  echo
  echo "## CPU samples by thread (comm)"
  # Samples per thread, summed by thread name over this run's threads, as a share of them all.
  perf report -i "target/bench/profile-$store.perf.data" --no-children --sort pid -q -g none --show-nr-samples 2>/dev/null |
    awk -v tids=",$pids," '{ split($3, t, ":"); if (index(tids, "," t[1] ",")) { n[t[2]] += $2; all += $2 } }
      END { for (c in n) printf "%6.1f%%  %7d  %s\n", 100 * n[c] / all, n[c], c }' | sort -rn
  echo
  echo "## Top functions, all threads"
  perf report -i "target/bench/profile-$store.perf.data" --tid "$pids" --no-children --sort comm,sym -q -g none 2>/dev/null | head -40
} >"$report"
cat "$report"
