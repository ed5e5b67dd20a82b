#!/usr/bin/env bash
# The one-command benchmark: builds release, then bench/harness.py starts every server on a fresh
# store, drives it with wrk / Locust on 127.0.0.1 beside the in-memory baseline, and writes
# target/bench/<UTC time>/ (raw lines, logs, results.json) plus docs/bench/results.md and PNG plots.
#
# Usage: bench/run.sh [--quick] [--rounds N] [--seconds S] [PART...]
#   PART: throughput (= buy-sweep buy-64 view-64 mix batch), buy-sweep, buy-64, view-64, mix, batch, growth, locust,
#         profile (bench/profile.sh: perf samples under POST /buy load, into docs/bench/profile-{sqlite,postgres}.txt),
#         plots (only regenerate docs/bench/ from the latest results.json). Default: everything.
#   --quick: a smoke run for development (1 round, 2 s per run, growth 1000 and 20000 buys,
#            Locust 20 s at 30 and 100 users). Its figures are labelled as such.
# Env: BENCH_POSTGRES_URL (postgres://postgres@127.0.0.1:5432/postgres): the PostgreSQL server on
#      which each scenario creates and drops its own database; unreachable -> SKIP.
#      BENCH_ROUNDS, BENCH_SECONDS, BENCH_GROWTH_SIZES ("1000 1000000 10000000"),
#      BENCH_LOCUST_SECONDS (60); growth.sh's own ROUNDS, SECONDS_PER_RUN, STARTS, CONNS.
# Needs: wrk (apt-get install -y wrk), python3 with venv, curl, psql for PostgreSQL, the Rust
# toolchain. matplotlib and locust are installed from PyPI into target/bench-venv (never globally).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=0
need() { # tool, how to get it
  if ! command -v "$1" >/dev/null; then echo "bench/run.sh: $1 is missing: $2" >&2; missing=1; fi
}
need python3 "apt-get install -y python3 python3-venv"
only_plots=1
for a in "$@"; do case $a in plots|--*|[0-9]*) ;; *) only_plots=0 ;; esac; done
[ $# -gt 0 ] || only_plots=0
if [ $only_plots = 0 ]; then
  need wrk "apt-get install -y wrk"
  need curl "apt-get install -y curl"
  need cargo "install the Rust toolchain (https://rustup.rs)"
  command -v psql >/dev/null || echo "bench/run.sh: psql not found (apt-get install -y postgresql-client): the PostgreSQL scenarios will be skipped" >&2
fi
[ $missing = 0 ] || exit 1

venv=target/bench-venv
if [ ! -x "$venv/bin/python" ]; then
  echo "bench/run.sh: creating the Python venv $venv"
  mkdir -p target
  python3 -m venv "$venv" || { echo "bench/run.sh: python3 -m venv failed (apt-get install -y python3-venv)" >&2; exit 1; }
fi
if ! "$venv/bin/python" -c 'import matplotlib, locust' 2>/dev/null; then
  echo "bench/run.sh: installing bench/requirements.txt (matplotlib, locust) into $venv from PyPI"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
fi

if [ $only_plots = 0 ]; then
  echo "bench/run.sh: cargo build --release --bin buy-tracker --example baseline --example load"
  cargo build --release --quiet --bin buy-tracker --example baseline --example load
fi
# The profile part is bench/profile.sh (perf), outside the harness: with no PART, or when named.
args=()
profile=0
[ $# -gt 0 ] || profile=1
for a in "$@"; do if [ "$a" = profile ]; then profile=1; else args+=("$a"); fi; done
if [ $profile = 1 ]; then
  if command -v perf >/dev/null; then
    bench/profile.sh sqlite 8 docs/bench >/dev/null && echo "bench/run.sh: wrote docs/bench/profile-sqlite.txt"
    if [ "$(psql "${BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}" -Atc 'SELECT 1' 2>/dev/null)" = 1 ]; then
      bench/profile.sh postgres 8 docs/bench >/dev/null && echo "bench/run.sh: wrote docs/bench/profile-postgres.txt"
    else
      echo "SKIP profile postgres: the PostgreSQL server is unreachable"
    fi
  else
    echo "SKIP profile: perf is missing (apt-get install -y linux-perf)"
  fi
  # Only the profile was asked for.
  [ $# -gt 0 ] && [ ${#args[@]} -eq 0 ] && exit 0
fi
BENCH_COMMAND="bench/run.sh${*:+ $*}" exec "$venv/bin/python" bench/harness.py "${args[@]}"
