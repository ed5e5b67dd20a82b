#!/usr/bin/env bash
# Growth benchmark: how reads, start-up, memory and export behave as the store grows.
#
# For each size (default 1000 1000000 10000000 buys) it fills a fresh SQLite store with the bulk
# loader (bench/load.rs, which commits through the service's own log in transactions of 8192 buys,
# then builds the views as `buy-tracker rebuild-views` does), starts the real binary on it and
# measures:
#   - start-up: exec -> "listening on" log line, and exec -> first 200 from /health (median of
#     STARTS starts; the last server stays up);
#   - read latency with wrk (-t1 -c$CONNS -d${SECONDS_PER_RUN}s) of /stats,
#     /stats?timeframe_hours=168, /promotions/{most popular}/stats, /promotions and
#     /stats/timeseries?bucket=minute&timeframe_hours=24. All stores are served at once and the
#     runs alternate between them (ROUNDS rounds of every endpoint on every size), so a busy
#     neighbour on the machine slows every size alike and the p99 ratios stay meaningful;
#   - server RSS (VmRSS, VmHWM) idle and after the reads;
#   - GET /export?format=csv streamed to a line counter: rows/s and peak RSS growth (VmHWM is
#     reset to the current RSS through /proc/PID/clear_refs first, where the kernel allows it).
# Then it prints median tables, the ratios p99(largest) / p99(smallest) and the targets.
#
# Usage: bench/growth.sh [SIZE[:DAYS]...]   e.g. bench/growth.sh 1000 100000   (a quick run)
#        A size may name the days its buys span (default 7, ending now): 10000000:70 has the
#        buy rate of 1000000 over 7 days, which separates "more buys stored" from "more buys
#        per second in the window".
# Env:   ROUNDS (5), SECONDS_PER_RUN (5), STARTS (3), CONNS (8), RAW=FILE (keep the raw lines),
#        VIEWS_PER_BUY (0: page views the loader records beside each buy)
# Needs wrk (apt-get install -y wrk), curl and python3. Everything runs on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000 1000000 10000000)
rounds=${ROUNDS:-5}; seconds=${SECONDS_PER_RUN:-5}; starts=${STARTS:-3}; conns=${CONNS:-8}
for tool in curl python3; do command -v $tool >/dev/null || { echo "$tool is missing" >&2; exit 1; }; done
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 1; }

cargo build --release --quiet --bin buy-tracker --example load
work=$(mktemp -d)
results="$work/results"
: >"$results"
declare -A pid url promo
cleanup() {
  for p in "${pid[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pid[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "${RAW:-}" ] && [ -f "$results" ]; then cp "$results" "$RAW"; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_ns() { date +%s%N; }
status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

# Start the server for size $1 on store $3 (start number $2): sets pid[$1] and url[$1].
start_server() {
  local log="$work/server-${1/:/-}-$2.log" t0 listen_ms="" health_ms="" text p
  : >"$log"
  t0=$(now_ns)
  ./target/release/buy-tracker --host 127.0.0.1 --port 0 --database-url "sqlite:$3" >"$log" 2>&1 &
  p=$!
  pid[$1]=$p
  for _ in $(seq 5000); do
    text=$(<"$log")
    if [[ $text == *"listening on http://"* ]]; then listen_ms=$(( ($(now_ns) - t0) / 1000000 )); break; fi
    kill -0 "$p" 2>/dev/null || { echo "server exited: $text" >&2; exit 1; }
    sleep 0.002
  done
  [ -n "$listen_ms" ] || { echo "server did not start in time: $(cat "$log")" >&2; exit 1; }
  url[$1]=$(grep -o 'listening on http://[0-9.:]*' "$log" | head -1 | sed 's/listening on //')
  for _ in $(seq 5000); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "${url[$1]}/health")" = 200 ]; then
      health_ms=$(( ($(now_ns) - t0) / 1000000 )); break; fi
    sleep 0.002
  done
  [ -n "$health_ms" ] || { echo "/health never answered 200" >&2; exit 1; }
  echo "start size=$1 round=$2 listen_ms=$listen_ms health_ms=$health_ms" | tee -a "$results"
}

stop_server() { # size
  kill -TERM "${pid[$1]}"; wait "${pid[$1]}" || true; unset "pid[$1]"
}

# 1. Load every size and measure start-up; the last start of each stays up.
for size in "${sizes[@]}"; do
  n=${size%%:*}; days=7; [[ $size == *:* ]] && days=${size#*:}
  echo "== $n buys over $days days"
  dir="$work/store-${size/:/-}"; mkdir -p "$dir"
  load=$(./target/release/examples/load "sqlite:$dir/store.db" "$n" "$days" 42 "${VIEWS_PER_BUY:-0}" | grep '^RESULT')
  echo "load size=$size ${load#RESULT } db_mib=$(du -sm "$dir" | cut -f1)" | tee -a "$results"
  for r in $(seq "$starts"); do
    start_server "$size" "$r" "$dir/store.db"
    if [ "$r" -lt "$starts" ]; then stop_server "$size"; fi
  done
  promo[$size]=$(curl -sf "${url[$size]}/promotions?limit=1" | grep -o '"promotion_id":[0-9]*' | head -1 | cut -d: -f2)
  echo "idle size=$size promo=${promo[$size]} idle_rss_kib=$(status_kib "${pid[$size]}" VmRSS)" | tee -a "$results"
done

# 2. Reads, interleaved across sizes.
names=(stats stats_168h promo_stats promotions timeseries customers timing)
path() { # name size
  case $1 in
    stats) echo "/stats" ;;
    stats_168h) echo "/stats?timeframe_hours=168" ;;
    promo_stats) echo "/promotions/${promo[$2]}/stats" ;;
    promotions) echo "/promotions" ;;
    timeseries) echo "/stats/timeseries?bucket=minute&timeframe_hours=24" ;;
    customers) echo "/promotions/${promo[$2]}/customers?order_by=units" ;;
    timing) echo "/stats/timing?tz=Europe/Paris&promotion_id=${promo[$2]}" ;;
  esac
}
for size in "${sizes[@]}"; do # every endpoint must answer 200 before it is timed
  for name in "${names[@]}"; do
    curl -sf -o /dev/null "${url[$size]}$(path "$name" "$size")" || { echo "GET $(path "$name" "$size") failed" >&2; exit 1; }
  done
done
for r in $(seq "$rounds"); do
  for name in "${names[@]}"; do
    for size in "${sizes[@]}"; do
      out=$(wrk -t1 -c"$conns" -d"${seconds}s" -s bench/growth.lua "${url[$size]}$(path "$name" "$size")" | grep '^RESULT')
      echo "read size=$size round=$r ep=$name ${out#RESULT }" | tee -a "$results"
    done
  done
done

# 3. Memory after the reads, then the export, one size at a time.
for size in "${sizes[@]}"; do
  p=${pid[$size]}
  echo "rss size=$size rss_kib=$(status_kib "$p" VmRSS) hwm_kib=$(status_kib "$p" VmHWM)" | tee -a "$results"
  hwm_reset=0
  if echo 5 2>/dev/null >"/proc/$p/clear_refs"; then hwm_reset=1; fi
  rss_before=$(status_kib "$p" VmRSS)
  t0=$(now_ns)
  lines=$(curl -sfN "${url[$size]}/export?format=csv" | wc -l)
  t1=$(now_ns)
  echo "export size=$size rows=$((lines - 1)) ms=$(( (t1 - t0) / 1000000 )) rss_before_kib=$rss_before hwm_after_kib=$(status_kib "$p" VmHWM) hwm_reset=$hwm_reset rss_after_kib=$(status_kib "$p" VmRSS)" | tee -a "$results"
  stop_server "$size"
  rm -rf "$work/store-${size/:/-}"
done

python3 - "$results" <<'PY'
import statistics, sys
recs = []
for line in open(sys.argv[1]):
    kind, *parts = line.split()
    recs.append((kind, dict(p.split("=", 1) for p in parts)))
sizes = list(dict.fromkeys(f["size"] for _, f in recs))
def pick(kind, size, **match):
    return [f for k, f in recs if k == kind and f["size"] == size and all(f.get(a) == b for a, b in match.items())]
def title(size):
    n, _, days = size.partition(":")
    return f"{int(n):,} buys" + (f" over {days} days" if days else "")
med = statistics.median
mib = lambda kib: int(kib) / 1024
names = ["stats", "stats_168h", "promo_stats", "promotions", "timeseries", "customers", "timing"]
label = {"stats": "GET /stats", "stats_168h": "GET /stats?timeframe_hours=168",
         "promo_stats": "GET /promotions/{top}/stats", "promotions": "GET /promotions",
         "timeseries": "GET /stats/timeseries?bucket=minute&timeframe_hours=24",
         "customers": "GET /promotions/{top}/customers?order_by=units",
         "timing": "GET /stats/timing?tz=Europe/Paris&promotion_id={top}"}
p99, summary = {}, {}
print()
for size in sizes:
    load, idle, rss, ex = pick("load", size)[0], pick("idle", size)[0], pick("rss", size)[0], pick("export", size)[0]
    st = pick("start", size)
    health = med(int(f["health_ms"]) for f in st)
    rows, secs = int(ex["rows"]), max(int(ex["ms"]), 1) / 1000
    growth = mib(ex["hwm_after_kib"]) - mib(ex["rss_before_kib"])
    summary[size] = dict(health=health, rss=mib(rss["rss_kib"]), hwm=mib(rss["hwm_kib"]), rows=rows, growth=growth)
    print(f"### {title(size)}\n")
    rebuild = f"; views rebuilt in {load['rebuild_seconds']} s" if "rebuild_seconds" in load else ""
    print(f"- load: {float(load['buys_per_s']):,.0f} buys/s ({load['seconds']} s){rebuild}; store and views on disk "
          f"{load['db_mib']} MiB")
    print(f"- start-up, median of {len(st)}: exec -> `listening on` {med(int(f['listen_ms']) for f in st):.0f} ms, "
          f"exec -> first 200 from /health {health:.0f} ms (each start: "
          f"{', '.join(f['listen_ms'] + '/' + f['health_ms'] for f in st)} ms)")
    print(f"- server RSS: idle {mib(idle['idle_rss_kib']):.1f} MiB; after the reads {mib(rss['rss_kib']):.1f} MiB, "
          f"peak {mib(rss['hwm_kib']):.1f} MiB (top promotion: {idle['promo']})\n")
    print("| endpoint | req/s | p50 ms | p90 ms | p99 ms | errors |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for n in names:
        rs = pick("read", size, ep=n)
        m = {k: med(float(r[k]) for r in rs) for k in ("rps", "p50_ms", "p90_ms", "p99_ms")}
        bad = sum(int(r["errors"]) + int(r["non2xx"]) for r in rs)
        p99[(size, n)] = m["p99_ms"]
        print(f"| {label[n]} | {m['rps']:,.0f} | {m['p50_ms']:.2f} | {m['p90_ms']:.2f} | {m['p99_ms']:.2f} | {bad} |")
    note = "" if ex["hwm_reset"] == "1" else " (VmHWM could not be reset, so this is an upper bound)"
    print(f"\n- export (csv): {rows:,} rows in {secs:.2f} s = {rows / secs:,.0f} rows/s; RSS before "
          f"{mib(ex['rss_before_kib']):.1f} MiB, peak during {mib(ex['hwm_after_kib']):.1f} MiB: "
          f"peak growth {growth:.1f} MiB{note}\n")
verdict = lambda ok: "PASS" if ok else "MISS"
small, large = sizes[0], sizes[-1]
if small != large:
    print(f"### p99 at {title(large)} / p99 at {title(small)} (target for the first three: at most 1.5)\n")
    for n in names:
        ratio = p99[(large, n)] / p99[(small, n)]
        v = verdict(ratio <= 1.5) if n in ("stats", "stats_168h", "promo_stats") else "no target"
        print(f"- {label[n]}: {p99[(small, n)]:.2f} ms -> {p99[(large, n)]:.2f} ms, ratio {ratio:.2f} ({v})")
    per_round = {}
    for n in ("stats", "stats_168h", "promo_stats"):
        s = {f["round"]: float(f["p99_ms"]) for f in pick("read", small, ep=n)}
        l = {f["round"]: float(f["p99_ms"]) for f in pick("read", large, ep=n)}
        per_round[n] = [l[r] / s[r] for r in s if r in l]
    print("- the same ratio round by round (adjacent runs): " + "; ".join(
        f"{label[n]}: " + ", ".join(f"{x:.2f}" for x in v) for n, v in per_round.items()))
big = summary[large]
print(f"\n### Targets at {title(large)}\n")
print(f"- start-up (exec -> first 200 from /health, median) {big['health']:.0f} ms, target under 1000 ms: "
      f"{verdict(big['health'] < 1000)}")
print(f"- server RSS after the reads {big['rss']:.1f} MiB (peak {big['hwm']:.1f} MiB), target under 150 MiB: "
      f"{verdict(big['hwm'] < 150)}")
for size, s in summary.items():
    if s["rows"] >= 1_000_000:
        print(f"- export of {s['rows']:,} rows ({title(size)}): peak RSS growth {s['growth']:.1f} MiB, target under 50 MiB: "
              f"{verdict(s['growth'] < 50)}")
PY
