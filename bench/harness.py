#!/usr/bin/env python3
"""The benchmark harness behind bench/run.sh (stdlib + matplotlib; run it through bench/run.sh,
which builds the binaries and provides a venv with matplotlib and locust).

It starts every process itself on 127.0.0.1 with --port 0, measures, and writes everything of a
run to target/bench/<UTC time>/ (raw RESULT lines, logs, results.json), then docs/bench/results.md
and the PNG plots. Each throughput figure comes with the in-memory axum baseline
(bench/baseline.rs) measured in the same rounds: baseline run, then each service run, repeated
ROUNDS times; medians are reported, and the ratio is service median / baseline median.

    bench/harness.py [--quick] [--rounds N] [--seconds S] [PART ...]

PART: buy-sweep, buy-64, view-64, mix, batch (together: throughput), growth, locust, plots. Parts not
measured in this run are carried over from the previous results.json, with their own date.
"""
import argparse
import csv
import datetime
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SERVICE_BIN = ROOT / "target/release/buy-tracker"
BASELINE_BIN = ROOT / "target/release/examples/baseline"
OUT_ROOT = ROOT / "target/bench"
DOCS = ROOT / "docs/bench"

THROUGHPUT = ["buy-sweep", "buy-64", "view-64", "mix", "batch"]
PARTS = THROUGHPUT + ["growth", "locust"]
SWEEP = [5, 10, 50, 100, 200, 300]
BATCH = 100  # buys per POST /buys request, as in bench/batch.lua
NAMES = {"baseline": "baseline (in memory)", "sqlite": "SQLite (durable)", "postgres": "PostgreSQL, 1 replica",
         "postgres-1": "PostgreSQL, 1 replica", "postgres-2": "PostgreSQL, 2 replicas (total)",
         "postgres-2-apart": "control: 2 processes, a database each (total)",
         "sqlite-2-apart": "control: 2 SQLite processes, a file each (total)",
         "sqlite-buy": "SQLite, POST /buy", "sqlite-view": "SQLite, POST /view",
         "postgres-buy": "PostgreSQL, POST /buy", "postgres-view": "PostgreSQL, POST /view",
         "sqlite-buys-100": "SQLite, POST /buys of 100", "sqlite-views-100": "SQLite, POST /views of 100"}
GROWTH_READS = {"stats": "GET /stats", "stats_168h": "GET /stats?timeframe_hours=168",
                "promo_stats": "GET /promotions/{top}/stats", "promotions": "GET /promotions",
                "timeseries": "GET /stats/timeseries (minute, 24 h)",
                "customers": "GET /promotions/{top}/customers", "timing": "GET /stats/timing (Europe/Paris)"}
BUY_BODY = b'{"user_id": 1, "promotion_id": 1, "product_id": 1, "product_quantity": 1}'


class BenchError(Exception):
    pass


def log(msg):
    print(f"[bench {datetime.datetime.now(datetime.UTC):%H:%M:%S}] {msg}", flush=True)


def utc_now():
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# ---------------------------------------------------------------- processes


class Procs:
    """Every child process of the run, so that an error or Ctrl-C still stops them all. Each child
    leads its own process group and is stopped as a group: growth.sh's loader, wrk and servers go
    with it even while bash, which runs its traps only between commands, is still waiting."""

    def __init__(self):
        self.live = []

    def start(self, argv, log_path=None, env=None):
        out = open(log_path, "ab") if log_path else subprocess.PIPE
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT, env=env,
                             start_new_session=True, text=not log_path)
        if log_path:
            out.close()
        self.live.append(p)
        return p

    def stop(self, p, timeout=15):
        if p.poll() is None:
            self._signal(p, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(p, signal.SIGKILL)
                p.wait()
        self.forget(p)

    def forget(self, p):
        if p in self.live:
            self.live.remove(p)

    @staticmethod
    def _signal(p, sig):
        try:
            os.killpg(p.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop_all(self):
        for p in list(self.live):
            self.stop(p)


PROCS = Procs()


class Server:
    def __init__(self, name, proc, url, log_path):
        self.name, self.proc, self.url, self.log = name, proc, url, log_path

    @property
    def pid(self):
        return self.proc.pid


def start_server(run, name, argv, timeout=30):
    """Starts argv and waits for its `listening on http://ADDR:PORT` line (buy-tracker logs it on
    stdout as JSON, the baseline prints it plainly; both streams go to one log)."""
    log_path = run.dir / f"{name}.log"
    p = PROCS.start(argv, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        m = re.search(r"listening on (http://[0-9.]+:[0-9]+)", text)
        if m:
            return Server(name, p, m.group(1), log_path)
        if p.poll() is not None:
            raise BenchError(f"{name} exited with {p.returncode} before listening:\n{text[-3000:]}")
        time.sleep(0.02)
    PROCS.stop(p)
    raise BenchError(f"{name} did not log 'listening on' within {timeout} s (log: {log_path})")


def start_baseline(run, name):
    return start_server(run, name, [str(BASELINE_BIN), "0"])


def start_service(run, name, database_url, extra=()):
    return start_server(run, name, [str(SERVICE_BIN), "--host", "127.0.0.1", "--port", "0",
                                    "--database-url", database_url, *extra])


def stop_servers(servers):
    for s in servers:
        PROCS.stop(s.proc)


def http(url, body=None, timeout=10):
    req = urllib.request.Request(url, data=body, headers={"content-type": "application/json"} if body else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read().decode()


def check_buy(server, path="/buy", body=BUY_BODY):
    """One request must succeed before anything is timed: a broken server would otherwise show
    up as a fast error rate."""
    status, text = http(server.url + path, body)
    if status != 200:
        raise BenchError(f"{server.name}: POST {path} answered {status}: {text}")


# ---------------------------------------------------------------- memory (/proc)


def reset_hwm(pid):
    """Resets VmHWM to the current RSS, so the next VmHWM is the peak of what follows."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid):
    """User + system CPU seconds a process has used so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def postgres_cpu_s():
    """CPU seconds of every PostgreSQL server process (backends serve the service's connections)."""
    total = 0.0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if "(postgres)" in stat:
                total += proc_cpu_s(d)
    return total


def machine_cpu_s():
    """(busy, all) CPU seconds of the whole machine, summed over cores, from /proc/stat."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / CLK_TCK, sum(ticks) / CLK_TCK


def cpu_snapshot(servers):
    busy, total = machine_cpu_s()
    return {"service": sum(proc_cpu_s(s.pid) for s in servers), "postgres": postgres_cpu_s(),
            "busy": busy, "all": total}


def cpu_per_request(before, after, requests):
    """CPU microseconds per request: the service's processes, PostgreSQL, and the rest of the
    machine (the load generator and any neighbour), plus the machine's idle share."""
    d = {k: after[k] - before[k] for k in before}
    n = max(requests, 1)
    return {"service_us": 1e6 * d["service"] / n, "postgres_us": 1e6 * d["postgres"] / n,
            "other_us": 1e6 * max(d["busy"] - d["service"] - d["postgres"], 0) / n,
            "idle_share": 1 - d["busy"] / d["all"] if d["all"] else None}


def status_kib(pid, key):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


# ---------------------------------------------------------------- PostgreSQL


class Postgres:
    """Creates a fresh database per scenario target on BENCH_POSTGRES_URL and drops it after."""

    def __init__(self, url):
        self.url = url
        self.created = []
        self._skip = None
        self.version = None

    def psql(self, sql):
        env = dict(os.environ, PGCONNECT_TIMEOUT="3")
        return subprocess.run(["psql", self.url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql], env=env,
                              capture_output=True, text=True, timeout=60)

    def skip_reason(self):
        """None when the server answers, else why the PostgreSQL scenarios are skipped."""
        if self._skip is None:
            if not shutil.which("psql"):
                self._skip = "psql not found (apt-get install -y postgresql-client)"
            else:
                try:
                    r = self.psql("SHOW server_version")
                    self._skip = "" if r.returncode == 0 else f"{self.url} unreachable: {r.stderr.strip()}"
                    self.version = r.stdout.strip() or None
                except subprocess.TimeoutExpired:
                    self._skip = f"{self.url} did not answer in 60 s"
        return self._skip or None

    def create(self, name):
        r = self.psql(f'CREATE DATABASE "{name}"')
        if r.returncode != 0:
            raise BenchError(f"CREATE DATABASE {name}: {r.stderr.strip()}")
        self.created.append(name)
        u = urllib.parse.urlsplit(self.url)
        return urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + name, u.query, u.fragment))

    def drop(self, name):
        r = self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if r.returncode != 0:
            print(f"warning: DROP DATABASE {name}: {r.stderr.strip()}", file=sys.stderr)
        if name in self.created:
            self.created.remove(name)

    def drop_all(self):
        for name in list(self.created):
            self.drop(name)


# ---------------------------------------------------------------- wrk


def parse_result(text):
    for line in text.splitlines():
        if line.startswith("RESULT "):
            return {k: float(v) for k, v in (p.split("=", 1) for p in line.split()[1:])}
    return None


def wrk_many(run, jobs, seconds, label):
    """Runs one wrk per (url, connections, lua) at the same time; returns their RESULT fields."""
    procs = []
    for i, (url, conns, lua) in enumerate(jobs):
        argv = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "-s", str(lua), url]
        out = run.dir / f"wrk-{i}.out"
        procs.append((argv, out, PROCS.start(argv, out)))
    results = []
    for argv, out, p in procs:
        try:
            p.wait(seconds + 60)
        except subprocess.TimeoutExpired:
            PROCS.stop(p)
        PROCS.forget(p)
        text = out.read_text(errors="replace")
        out.unlink()
        res = parse_result(text)
        if res is None:
            raise BenchError(f"{' '.join(argv)} printed no RESULT line:\n{text[-2000:]}")
        line = next(x for x in text.splitlines() if x.startswith("RESULT "))
        with open(run.dir / "raw.txt", "a") as raw:
            raw.write(f"{label} url={argv[-1]} conns={argv[2][2:]} {line[len('RESULT '):]}\n")
        results.append(res)
    return results


class Target:
    """What one row measures: one server, or several replicas driven by one wrk each at once."""

    def __init__(self, key, servers, lua, path="/"):
        self.key, self.servers, self.lua, self.path = key, servers, lua, path


def settle(max_wait=120.0, idle_share=0.85):
    """Let the previous run's after-effects end before the next is measured: write the dirty
    pages it left (the kernel would otherwise flush them under the next run's fsyncs), then wait
    until the machine is mostly idle for half a second (the servers' checkpoints and view stages
    catching up), at most `max_wait` seconds. Returns the seconds waited. The bound is generous:
    10 s of `POST /buys` of 100 leave about 4 million buys for the view stage, and with 20 s the
    `POST /views` run that follows still shared the cores with it (settled_s 20.02)."""
    started = time.monotonic()
    os.sync()
    while time.monotonic() - started < max_wait:
        busy0, all0 = machine_cpu_s()
        time.sleep(0.5)
        busy1, all1 = machine_cpu_s()
        if all1 > all0 and 1 - (busy1 - busy0) / (all1 - all0) >= idle_share:
            break
    return time.monotonic() - started


def measure(run, scenario, targets, conns, rounds, seconds):
    """ROUNDS rounds of every target in turn (the baseline first), each with its peak RSS. Each
    run starts on a settled machine (`settle`), so no target pays for the one before it."""
    runs = {t.key: [] for t in targets}
    for r in range(1, rounds + 1):
        for t in targets:
            waited = settle()
            per = max(1, conns // len(t.servers))
            hwm_reset = all([reset_hwm(s.pid) for s in t.servers])
            cpu_before = cpu_snapshot(t.servers)
            res = wrk_many(run, [(s.url + t.path, per, t.lua) for s in t.servers], seconds,
                           f"{scenario} target={t.key} round={r}")
            cpu = cpu_per_request(cpu_before, cpu_snapshot(t.servers), sum(x["requests"] for x in res))
            rss = [status_kib(s.pid, "VmHWM") for s in t.servers]
            for x, kib in zip(res, rss):
                x["rss_kib"] = kib
            one = {"round": r, "conns": conns, "hwm_reset": hwm_reset,
                   "rps": sum(x["rps"] for x in res), "requests": sum(x["requests"] for x in res),
                   # Across replicas the slowest replica's percentile: an upper bound for the total.
                   **{k: max(x[k] for x in res) for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")},
                   **{k: sum(x[k] for x in res) for k in ("errors", "non2xx", "timeouts", "connect_errors")},
                   "rss_kib": sum(rss), "cpu": cpu, "settled_s": round(waited, 2)}
            if len(res) > 1:
                one["replicas"] = res
            runs[t.key].append(one)
            log(f"{scenario} c={conns} round {r}/{rounds} {t.key:10} {one['rps']:>9,.0f} req/s  "
                f"p50 {one['p50_ms']:.2f}  p99 {one['p99_ms']:.2f} ms  errors {one['errors']:.0f}+{one['non2xx']:.0f}"
                f"  peak RSS {one['rss_kib'] / 1024:.1f} MiB")
    return runs


# ---------------------------------------------------------------- Prometheus histograms


def scrape_histograms(url):
    """{route: [(le_seconds, cumulative count), ...]} of the service's request-duration histogram
    (found by its suffix, so a renamed prefix still works)."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"(\w*request_duration_seconds)_bucket\{(.*)\}\s+(\S+)$", line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2)))
        le = float("inf") if labels.get("le") == "+Inf" else float(labels.get("le", "nan"))
        out.setdefault(labels.get("route", "?"), []).append((le, float(m.group(3))))
    return {route: sorted(b) for route, b in out.items()}


def hist_quantile(buckets, q):
    """Prometheus-style estimate (linear within the bucket), in ms; None without data. Past the
    last finite bucket it returns that bound, a lower bound of the truth."""
    total = buckets[-1][1] if buckets else 0
    if total == 0:
        return None
    rank, prev_le, prev_c = q * total, 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if le == float("inf"):
                return prev_le * 1000
            return (prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-9)) * 1000
        prev_le, prev_c = le, c
    return prev_le * 1000


def hist_share_le(buckets, seconds):
    total = buckets[-1][1] if buckets else 0
    at = [c for le, c in buckets if abs(le - seconds) < 1e-12]
    return at[0] / total if total and at else None


def hist_summary(buckets):
    return {"count": buckets[-1][1] if buckets else 0, "p50_ms": hist_quantile(buckets, 0.50),
            "p95_ms": hist_quantile(buckets, 0.95), "p99_ms": hist_quantile(buckets, 0.99),
            "share_le_2_5ms": hist_share_le(buckets, 0.0025), "share_le_5ms": hist_share_le(buckets, 0.005)}


# ---------------------------------------------------------------- the run


class Run:
    def __init__(self, args):
        self.args = args
        self.started = datetime.datetime.now(datetime.UTC)
        self.id = self.started.strftime("%Y%m%dT%H%M%SZ")
        self.dir = OUT_ROOT / self.id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pg = Postgres(os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
        self.stores = []

    def sqlite_url(self, label):
        d = Path(tempfile.mkdtemp(prefix=f"store-{label}-", dir=self.dir))
        self.stores.append(d)
        return f"sqlite:{d}/buys.db"

    def pg_url(self, label):
        """A fresh database, or None (with a SKIP line) when the server cannot be reached."""
        reason = self.pg.skip_reason()
        if reason:
            log(f"SKIP PostgreSQL {label}: {reason}")
            return None
        return self.pg.create(f"bench_{self.id.lower()}_{label}".replace("-", "_"))

    def cleanup(self):
        PROCS.stop_all()
        self.pg.drop_all()
        for d in self.stores:
            shutil.rmtree(d, ignore_errors=True)
        self.stores = []

    def meta(self, part):
        a = self.args
        if part == "growth":
            settings = "growth.sh's ROUNDS, SECONDS_PER_RUN (see below)"
        elif part == "locust":
            settings = f"{a.locust_seconds} s per user count"
        else:
            settings = f"{a.rounds} round(s) × {a.seconds} s per run"
        return {"measured_at": utc_now(), "run_id": self.id, "command": command_line(), "quick": a.quick,
                "settings": settings, "git": git_info(), "loadavg": os.getloadavg()}


def command_line():
    return os.environ.get("BENCH_COMMAND") or " ".join(["bench/harness.py", *sys.argv[1:]])


def sh(argv, strip=True):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.strip() if strip else out


def git_info():
    # Not stripped: the first porcelain line starts with a space (" M path").
    dirty = sh(["git", "status", "--porcelain", "--untracked-files=no"], strip=False)
    return {"commit": sh(["git", "rev-parse", "HEAD"]), "dirty": bool(dirty.strip()),
            "dirty_files": [line[3:] for line in dirty.splitlines() if line.strip()]}


def machine_info(pg):
    pg.skip_reason()  # sets pg.version when the server answers
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text(), re.M)
    try:
        import locust
        locust_version = locust.__version__
    except ImportError:
        locust_version = None
    return {"nproc": os.cpu_count(), "cpu": model.group(1) if model else "?",
            "memory_gib": round(int(mem.group(1)) / 1024 / 1024, 1) if mem else None,
            "kernel": os.uname().release, "rustc": sh(["rustc", "--version"]),
            "wrk": sh(["sh", "-c", "wrk --version 2>&1 | head -1"]).split(" Copyright")[0],
            "locust": locust_version, "postgres": pg.version, "python": sys.version.split()[0]}


# ---------------------------------------------------------------- scenarios


def lua(name):
    return BENCH / f"{name}.lua"


def scenario_buy_sweep(run):
    a = run.args
    base = start_baseline(run, "buy-sweep-baseline")
    servers, targets, skipped = [base], [Target("baseline", [base], lua("post_buy"))], {}
    sq = start_service(run, "buy-sweep-sqlite", run.sqlite_url("sweep"))
    servers.append(sq)
    targets.append(Target("sqlite", [sq], lua("post_buy")))
    pg_url = run.pg_url("sweep")
    if pg_url:
        pg = start_service(run, "buy-sweep-postgres", pg_url)
        servers.append(pg)
        targets.append(Target("postgres", [pg], lua("post_buy")))
    else:
        skipped["postgres"] = run.pg.skip_reason()
    for s in servers:
        check_buy(s)
    levels = {}
    for conns in a.levels:
        levels[str(conns)] = measure(run, "buy-sweep", targets, conns, a.rounds, a.seconds)
    stop_servers(servers)
    return {"levels": levels, "skipped": skipped}


def scenario_buy_64(run):
    a = run.args
    base = start_baseline(run, "buy-64-baseline")
    sq = start_service(run, "buy-64-sqlite", run.sqlite_url("buy64"))
    # A second control, without PostgreSQL: two SQLite processes, each on a file of its own, share
    # nothing but the cores. What they lose against one is the price of a second process alone.
    sq2 = [start_service(run, f"buy-64-sqlite-2-apart{i}", run.sqlite_url(f"buy64_apart{i}")) for i in (1, 2)]
    servers = [base, sq, *sq2]
    targets = [Target("baseline", [base], lua("post_buy")), Target("sqlite", [sq], lua("post_buy")),
               Target("sqlite-2-apart", sq2, lua("post_buy"))]
    skipped = {}
    pg1_url = run.pg_url("buy64_1")
    if pg1_url:
        # Two databases, so both PostgreSQL rows start empty and grow at the same pace.
        pg2_url = run.pg_url("buy64_2")
        pg1 = start_service(run, "buy-64-postgres-1", pg1_url)
        pg2 = [start_service(run, f"buy-64-postgres-2-replica{i}", pg2_url) for i in (1, 2)]
        # The control: the same two processes on the same server, but each on a database of its
        # own, so they share no counter, no rows and no locks. What two replicas lose against it
        # is what sharing one database costs; what it loses against one replica is what running
        # two processes on these 2 cores costs.
        apart = [start_service(run, f"buy-64-postgres-2-apart{i}", run.pg_url(f"buy64_apart{i}")) for i in (1, 2)]
        servers += [pg1, *pg2, *apart]
        targets += [Target("postgres-1", [pg1], lua("post_buy")), Target("postgres-2", pg2, lua("post_buy")),
                    Target("postgres-2-apart", apart, lua("post_buy"))]
    else:
        skipped["postgres-1"] = skipped["postgres-2"] = skipped["postgres-2-apart"] = run.pg.skip_reason()
    for s in servers:
        check_buy(s)
    runs = measure(run, "buy-64", targets, 64, a.rounds, a.seconds)
    stop_servers(servers)
    return {"conns": 64, "runs": runs, "skipped": skipped}


def scenario_view_64(run):
    """POST /view (text/plain, as sendBeacon sends it) against POST /buy on the same store kind,
    beside the baseline, at 64 connections: a view must cost no more than a buy to record."""
    a = run.args
    base = start_baseline(run, "view-64-baseline")
    sq_buy = start_service(run, "view-64-sqlite-buy", run.sqlite_url("view64_buy"))
    sq_view = start_service(run, "view-64-sqlite-view", run.sqlite_url("view64_view"))
    sq_buys = start_service(run, "view-64-sqlite-buys-100", run.sqlite_url("view64_buys100"))
    sq_views = start_service(run, "view-64-sqlite-views-100", run.sqlite_url("view64_views100"))
    servers = [base, sq_buy, sq_view, sq_buys, sq_views]
    targets = [Target("baseline", [base], lua("post_buy")), Target("sqlite-buy", [sq_buy], lua("post_buy")),
               Target("sqlite-view", [sq_view], lua("post_view")),
               Target("sqlite-buys-100", [sq_buys], lua("batch")), Target("sqlite-views-100", [sq_views], lua("views_batch"))]
    skipped = {}
    buy_url = run.pg_url("view64_buy")
    if buy_url:
        pg_buy = start_service(run, "view-64-postgres-buy", buy_url)
        pg_view = start_service(run, "view-64-postgres-view", run.pg_url("view64_view"))
        servers += [pg_buy, pg_view]
        targets += [Target("postgres-buy", [pg_buy], lua("post_buy")), Target("postgres-view", [pg_view], lua("post_view"))]
    else:
        skipped["postgres-buy"] = skipped["postgres-view"] = run.pg.skip_reason()
    for s in servers:
        check_buy(s)
    runs = measure(run, "view-64", targets, 64, a.rounds, a.seconds)
    stop_servers(servers)
    return {"conns": 64, "runs": runs, "skipped": skipped}


def scenario_mix(run):
    return store_scenario(run, "mix", lua("mix"), "/")


def scenario_batch(run):
    return store_scenario(run, "batch", lua("batch"), "/", check=("/buys", b'{"buys": [' + BUY_BODY + b"]}"))


def store_scenario(run, name, service_lua, path, check=("/buy", BUY_BODY)):
    """Baseline (POST /buy: it serves no other route) against both stores at 64 connections,
    with the server-side latency of each route from /metrics afterwards."""
    a = run.args
    base = start_baseline(run, f"{name}-baseline")
    check_buy(base)
    sq = start_service(run, f"{name}-sqlite", run.sqlite_url(name))
    stores, skipped = [("sqlite", sq)], {}
    pg_url = run.pg_url(name)
    if pg_url:
        stores.append(("postgres", start_service(run, f"{name}-postgres", pg_url)))
    else:
        skipped["postgres"] = run.pg.skip_reason()
    for _, s in stores:
        check_buy(s, *check)
    targets = [Target("baseline", [base], lua("post_buy"))] + [Target(k, [s], service_lua, path) for k, s in stores]
    runs = measure(run, name, targets, 64, a.rounds, a.seconds)
    routes = {k: {route: hist_summary(b) for route, b in scrape_histograms(s.url).items()} for k, s in stores}
    stop_servers([base] + [s for _, s in stores])
    return {"conns": 64, "runs": runs, "skipped": skipped, "server_routes": routes,
            "batch_size": BATCH if name == "batch" else None}


def scenario_growth(run):
    a = run.args
    raw = run.dir / "growth-raw.txt"
    env = dict(os.environ, RAW=str(raw))
    if a.quick:  # growth.sh's own knobs; whatever the caller set still wins
        for k, v in (("ROUNDS", "1"), ("SECONDS_PER_RUN", "2"), ("STARTS", "1")):
            env.setdefault(k, v)
    argv = ["bash", str(BENCH / "growth.sh"), *a.growth_sizes]
    log(f"growth: {' '.join(argv[1:])} (ROUNDS={env.get('ROUNDS', '5')} SECONDS_PER_RUN="
        f"{env.get('SECONDS_PER_RUN', '5')} STARTS={env.get('STARTS', '3')} CONNS={env.get('CONNS', '8')})")
    out_lines = []
    with open(run.dir / "growth.log", "w") as logf:
        p = PROCS.start(argv, env=env)
        for line in p.stdout:
            logf.write(line)
            out_lines.append(line.rstrip("\n"))
            print("  growth| " + line, end="", flush=True)
        p.wait()
        PROCS.forget(p)
    if p.returncode != 0:
        raise BenchError(f"bench/growth.sh exited with {p.returncode} (log: {run.dir / 'growth.log'})")
    records = []
    for line in raw.read_text().splitlines():
        kind, *fields = line.split()
        records.append([kind, dict(f.split("=", 1) for f in fields)])
    first = next((i for i, x in enumerate(out_lines) if x.startswith("### ")), len(out_lines))
    return {"sizes": a.growth_sizes, "records": records, "summary_md": "\n".join(out_lines[first:]).strip(),
            "env": {k: env[k] for k in ("ROUNDS", "SECONDS_PER_RUN", "STARTS", "CONNS") if k in env}}


def scenario_locust(run):
    a = run.args
    levels = {}
    for users, rate in a.locust_users:
        srv = start_service(run, f"locust-u{users}-sqlite", run.sqlite_url(f"locust{users}"))
        check_buy(srv)
        prefix = run.dir / f"locust-u{users}"
        argv = [sys.executable, "-m", "locust", "-f", str(BENCH / "locustfile.py"), "--host", srv.url, "--headless",
                "-u", str(users), "-r", str(rate), "-t", f"{a.locust_seconds}s", "--csv", str(prefix),
                "--only-summary"]
        log(f"locust: {users} users, spawn rate {rate}/s, {a.locust_seconds} s")
        before = scrape_histograms(srv.url)
        p = PROCS.start(argv, run.dir / f"locust-u{users}.log")
        try:
            p.wait(a.locust_seconds + 180)
        except subprocess.TimeoutExpired:
            PROCS.stop(p)
            raise BenchError(f"locust at {users} users did not finish (log: {run.dir}/locust-u{users}.log)")
        PROCS.forget(p)
        after = scrape_histograms(srv.url)
        stop_servers([srv])
        endpoints = {}
        with open(f"{prefix}_stats.csv", newline="") as f:
            for row in csv.DictReader(f):
                num = lambda k: float(row[k]) if row.get(k) not in (None, "", "N/A") else None  # noqa: E731
                endpoints[f"{row['Type']} {row['Name']}".strip()] = {
                    "requests": num("Request Count"), "failures": num("Failure Count"), "rps": num("Requests/s"),
                    "p50_ms": num("50%"), "p95_ms": num("95%"), "p99_ms": num("99%"), "max_ms": num("Max Response Time")}
        # The server's own view of /buy during the run (the check request above excluded).
        b0 = dict(before.get("/buy", []))
        server_buy = hist_summary([(le, c - b0.get(le, 0.0)) for le, c in after.get("/buy", [])])
        levels[str(users)] = {"users": users, "spawn_rate": rate, "seconds": a.locust_seconds,
                              "exit_code": p.returncode, "endpoints": endpoints, "server_buy": server_buy}
        e = endpoints.get("Aggregated", {})
        log(f"locust {users} users: {e.get('requests') or 0:,.0f} requests, {e.get('failures') or 0:,.0f} failures")
    return {"levels": levels}


SCENARIOS = {"buy-sweep": scenario_buy_sweep, "buy-64": scenario_buy_64, "view-64": scenario_view_64, "mix": scenario_mix,
             "batch": scenario_batch, "growth": scenario_growth, "locust": scenario_locust}


# ---------------------------------------------------------------- summaries

med = statistics.median


def summarize(runs, base=None):
    """Medians of a target's rounds; errors summed; peak RSS the highest of the rounds."""
    if not runs:
        return None
    s = {k: med(r[k] for r in runs) for k in ("rps", "p50_ms", "p90_ms", "p99_ms")}
    s["errors"] = sum(r["errors"] + r["non2xx"] for r in runs)
    s["rss_mib"] = max(r["rss_kib"] for r in runs) / 1024
    s["rounds"] = len(runs)
    if base:
        b = med(r["rps"] for r in base)
        s["ratio"] = s["rps"] / b if b else None
        s["round_ratios"] = [r["rps"] / x["rps"] for r, x in zip(runs, base) if x["rps"]]
    return s


def growth_tables(data):
    """Per size: median p99 (and more) of each read, start-up, memory, export."""
    recs = data["records"]

    def pick(kind, size, **match):
        return [f for k, f in recs if k == kind and f["size"] == size and all(f.get(a) == b for a, b in match.items())]

    out = {}
    for size in data["sizes"]:
        reads = {}
        for ep in GROWTH_READS:
            rs = pick("read", size, ep=ep)
            if rs:
                reads[ep] = {k: med(float(r[k]) for r in rs) for k in ("rps", "p50_ms", "p90_ms", "p99_ms")}
                reads[ep]["rounds"] = {r["round"]: float(r["p99_ms"]) for r in rs}
        start, rss, ex = pick("start", size), pick("rss", size), pick("export", size)
        load = pick("load", size)
        out[size] = {
            "rebuild_s": float(load[0]["rebuild_seconds"]) if load and "rebuild_seconds" in load[0] else None,
            "buys": int(size.split(":")[0]), "reads": reads,
            "health_ms": med(int(f["health_ms"]) for f in start) if start else None,
            "listen_ms": med(int(f["listen_ms"]) for f in start) if start else None,
            "rss_mib": int(rss[0]["rss_kib"]) / 1024 if rss else None,
            "hwm_mib": int(rss[0]["hwm_kib"]) / 1024 if rss else None,
            "export_rows": int(ex[0]["rows"]) if ex else None,
            "export_growth_mib": (int(ex[0]["hwm_after_kib"]) - int(ex[0]["rss_before_kib"])) / 1024 if ex else None,
        }
    return out


def size_label(size):
    n, _, days = size.partition(":")
    return f"{int(n):,}" + (f" over {days} days" if days else "")


def short_count(n):
    for div, unit in ((1_000_000, "M"), (1_000, "k")):
        if n >= div:
            return f"{n / div:g}{unit}"
    return str(n)


def verdict(ok):
    return "—" if ok is None else ("**PASS**" if ok else "**MISS**")


def targets_table(parts):
    rows = []  # (target, measured, verdict)
    b64 = parts.get("buy-64", {}).get("data")
    if b64:
        base = b64["runs"].get("baseline")
        sq = summarize(b64["runs"].get("sqlite"), base)
        if sq:
            rows.append(("POST /buy, SQLite durable, 64 connections: ≥ 70% of the baseline's req/s (same run)",
                         f"{sq['rps']:,.0f} req/s = {sq['ratio']:.0%} of {summarize(base)['rps']:,.0f}", verdict(sq["ratio"] >= 0.70)))
            rows.append(("POST /buy, SQLite durable, 64 connections: p99 ≤ 5 ms", f"{sq['p99_ms']:.2f} ms",
                         verdict(sq["p99_ms"] <= 5)))
        p1, p2 = summarize(b64["runs"].get("postgres-1"), base), summarize(b64["runs"].get("postgres-2"))
        if p1:
            rows.append(("POST /buy, PostgreSQL 1 replica, 64 connections: ≥ 45% of the baseline",
                         f"{p1['rps']:,.0f} req/s = {p1['ratio']:.0%}", verdict(p1["ratio"] >= 0.45)))
        else:
            rows.append(("POST /buy, PostgreSQL 1 replica: ≥ 45% of the baseline", "skipped: " + str(b64["skipped"].get("postgres-1")), "—"))
        if p2:
            apart = summarize(b64["runs"].get("postgres-2-apart"))
            rows.append(("POST /buy, PostgreSQL 2 replicas on one database: total ≥ the two-process control",
                         f"{p2['rps']:,.0f} vs {apart['rps']:,.0f} req/s" if apart else f"{p2['rps']:,.0f} req/s",
                         verdict(apart is not None and p2["rps"] >= apart["rps"])))
            if p1:
                rows.append(("(explains the row above) 2 replicas against 1", f"{p2['rps']:,.0f} vs {p1['rps']:,.0f} req/s "
                             f"({p2['rps'] / p1['rps']:.2f}x)", "—"))
        sq2 = summarize(b64["runs"].get("sqlite-2-apart"))
        if sq and sq2:
            rows.append(("(explains the rows above) 2 SQLite processes, a file each, against 1: a second process alone costs",
                         f"{sq2['rps']:,.0f} vs {sq['rps']:,.0f} req/s ({sq2['rps'] / sq['rps']:.2f}x)", "—"))
    else:
        rows.append(("POST /buy targets (SQLite ratio and p99, PostgreSQL 1 and 2 replicas)", "buy-64 not measured", "—"))
    gr = parts.get("growth", {}).get("data")
    if gr:
        g = growth_tables(gr)
        sizes = gr["sizes"]
        small, large = sizes[0], sizes[-1]
        gs, gl = g[small], g[large]
        at = "" if gl["buys"] >= 10_000_000 else f" (largest size measured: {gl['buys']:,}, not 10 M)"
        at_10m = gl["buys"] >= 10_000_000
        for ep in ("stats", "stats_168h", "promo_stats"):
            if small != large and ep in gs["reads"] and ep in gl["reads"]:
                ratio = gl["reads"][ep]["p99_ms"] / gs["reads"][ep]["p99_ms"]
                rows.append((f"{GROWTH_READS[ep]} p99 at 10 M within 1.5x of 1 k{at}",
                             f"{gs['reads'][ep]['p99_ms']:.2f} → {gl['reads'][ep]['p99_ms']:.2f} ms = {ratio:.2f}x",
                             verdict(ratio <= 1.5) + ("" if at_10m else " (smaller store)")))
        if gl["health_ms"] is not None:
            rows.append((f"start-up at 10 M < 1 s (exec → first 200 from /health){at}", f"{gl['health_ms']:.0f} ms",
                         verdict(gl["health_ms"] < 1000) + ("" if at_10m else " (smaller store)")))
        if gl["hwm_mib"] is not None:
            rows.append((f"server RSS at 10 M < 150 MiB (peak over start-up and reads){at}",
                         f"{gl['hwm_mib']:.1f} MiB (after the reads {gl['rss_mib']:.1f})",
                         verdict(gl["hwm_mib"] < 150) + ("" if at_10m else " (smaller store)")))
        if gl["rebuild_s"] is not None:
            rows.append((f"rebuilding every view from 10 M buys (`rebuild-views`' code, `bench/load.rs`) < 1 min{at}",
                         f"{gl['rebuild_s']:.1f} s", verdict(gl["rebuild_s"] < 60) + ("" if at_10m else " (smaller store)")))
        big_export = [x for x in g.values() if (x["export_rows"] or 0) >= 1_000_000]
        if big_export:
            x = big_export[0]
            rows.append(("export of 1 M rows: peak RSS growth < 50 MiB",
                         f"{x['export_growth_mib']:.1f} MiB ({x['export_rows']:,} rows)", verdict(x["export_growth_mib"] < 50)))
        else:
            biggest = max(g.values(), key=lambda x: x["export_rows"] or 0)
            rows.append(("export of 1 M rows: peak RSS growth < 50 MiB",
                         f"no store of 1 M rows; {biggest['export_rows'] or 0:,} rows: {biggest['export_growth_mib'] or 0:.1f} MiB", "—"))
    else:
        rows.append(("growth targets (/stats and promotion stats p99, start-up, RSS, export)", "growth not measured", "—"))
    lc = parts.get("locust", {}).get("data")
    if lc:
        for users, lv in lc["levels"].items():
            agg = lv["endpoints"].get("Aggregated", {})
            fails = agg.get("failures") or 0
            rows.append((f"Locust {int(users):,} users: 0 errors", f"{fails:,.0f} of {agg.get('requests') or 0:,.0f}",
                         verdict(fails == 0)))
            buy = lv["endpoints"].get("POST /buy", {})
            if buy.get("p95_ms") is not None:
                rows.append((f"Locust {int(users):,} users: POST /buy p95 ≤ 5 ms, as Locust measures it",
                             f"{buy['p95_ms']:.0f} ms", verdict(buy["p95_ms"] <= 5)))
            sb = lv["server_buy"]
            if sb.get("share_le_5ms") is not None:
                rows.append((f"Locust {int(users):,} users: POST /buy p95 ≤ 5 ms, as the server measures it (`/metrics`)",
                             f"{sb['share_le_5ms']:.1%} ≤ 5 ms (p95 ≈ {sb['p95_ms']:.2f} ms)", verdict(sb["share_le_5ms"] >= 0.95)))
    else:
        rows.append(("Locust targets (0 errors, /buy p95 ≤ 5 ms)", "locust not measured", "—"))
    return rows


# ---------------------------------------------------------------- markdown


def f_ms(x):
    return "—" if x is None else f"{x:.2f}"


def f_int(x):
    return "—" if x is None else f"{x:,.0f}"


def settings(meta):
    return meta.get("settings") or f"{meta.get('rounds')} round(s) × {meta.get('seconds')} s per run"


def part_line(part):
    m = part["meta"]
    g = m.get("git", {})
    dirty = " with uncommitted changes" if g.get("dirty") else ""
    quick = " — **quick smoke run (`--quick`): not a measurement**" if m.get("quick") else ""
    return (f"*Measured {m['measured_at']}, commit `{g.get('commit', '?')[:10]}`{dirty}, `{m['command']}`, "
            f"{settings(m)}; load average at start "
            f"{', '.join(f'{x:.1f}' for x in m['loadavg'])}*{quick}")


def throughput_table(runs, keys, label=lambda k: NAMES.get(k, k)):
    lines = ["| target | req/s | p50 ms | p90 ms | p99 ms | errors | peak RSS MiB | ratio to baseline | ratio by round |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    base = runs.get("baseline")
    for k in keys:
        s = summarize(runs.get(k), base if k != "baseline" else None)
        if not s:
            continue
        ratio = "1.00" if k == "baseline" else f"{s['ratio']:.2f}"
        by_round = "" if k == "baseline" else ", ".join(f"{x:.2f}" for x in s["round_ratios"])
        lines.append(f"| {label(k)} | {f_int(s['rps'])} | {f_ms(s['p50_ms'])} | {f_ms(s['p90_ms'])} | {f_ms(s['p99_ms'])} "
                     f"| {s['errors']:,.0f} | {s['rss_mib']:.1f} | {ratio} | {by_round} |")
    return lines


def cpu_table(runs, keys):
    """Where the CPU went, per request (medians over rounds): what bounds throughput on 2 cores."""
    rows = [(k, [r["cpu"] for r in runs.get(k, []) if r.get("cpu")]) for k in keys]
    rows = [(k, c) for k, c in rows if c]
    if not rows:
        return []
    out = ["", "CPU time per request (user + system, from `/proc`; medians over the rounds). \"Other\" is "
           "the rest of the machine's busy time: the load generator, the kernel's share not charged to a "
           "process, and any neighbour. On 2 cores, 2 s of CPU per second is all there is, so "
           "2,000,000 µs / (sum per request) is the ceiling these costs allow.", "",
           "| target | service µs | PostgreSQL µs | other µs | sum µs | machine idle |",
           "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for k, cs in rows:
        m = {f: med(c[f] for c in cs) for f in ("service_us", "postgres_us", "other_us")}
        idle = [c["idle_share"] for c in cs if c["idle_share"] is not None]
        out.append(f"| {NAMES.get(k, k)} | {m['service_us']:.1f} | {m['postgres_us']:.1f} | {m['other_us']:.1f} | "
                   f"{sum(m.values()):.1f} | {med(idle):.0%} |" if idle else "| — |")
    return out


def throughput_and_cpu(runs, keys):
    return throughput_table(runs, keys) + cpu_table(runs, keys)


def skipped_lines(data):
    return [f"SKIP {NAMES.get(k, k)}: {why}" for k, why in sorted(data.get("skipped", {}).items())]


def md_buy_sweep(part):
    d = part["data"]
    out = ["POST /buy (`bench/post_buy.lua`) at each number of connections (`wrk -t1 -cN`). One server "
           "process per target for the whole sweep, so the store grows from level to level; the peak "
           "RSS of a level is `VmHWM` after resetting it through `/proc/PID/clear_refs` before each run "
           "(memory kept from an earlier level counts).", ""]
    out += [x + "  " for x in skipped_lines(d)]
    out += ["| connections | target | req/s | p50 ms | p90 ms | p99 ms | errors | peak RSS MiB | ratio to baseline |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for conns, runs in d["levels"].items():
        for k in ("baseline", "sqlite", "postgres"):
            s = summarize(runs.get(k), runs.get("baseline") if k != "baseline" else None)
            if s:
                ratio = "1.00" if k == "baseline" else f"{s['ratio']:.2f}"
                out.append(f"| {conns} | {NAMES[k]} | {f_int(s['rps'])} | {f_ms(s['p50_ms'])} | {f_ms(s['p90_ms'])} | "
                           f"{f_ms(s['p99_ms'])} | {s['errors']:,.0f} | {s['rss_mib']:.1f} | {ratio} |")
    out += ["", "![POST /buy req/s against connections](throughput-vs-concurrency.png)",
            "![POST /buy p99 against connections](p99-vs-concurrency.png)"]
    return out


def md_buy_64(part):
    d = part["data"]
    out = ["POST /buy at 64 connections, the targets' setting. The two-replica row is two buy-tracker processes "
           "on one database, each driven by its own wrk with 32 connections at the same time: req/s summed, "
           "percentiles the slower replica's, RSS summed. The control row runs two processes the same way, each on a "
           "database of its own (no shared counter, rows or locks): the two-replica row against it is the cost of "
           "sharing one database; it against one replica is the cost of a second process on the same 2 cores. "
           "The SQLite control does the same without PostgreSQL (two processes, a file each, 32 connections each): "
           "against the SQLite row it is what a second process costs when nothing at all is shared. "
           "Each PostgreSQL row has its own fresh databases.", ""]
    out += [x + "  " for x in skipped_lines(d)]
    out += throughput_and_cpu(d["runs"], ["baseline", "sqlite", "sqlite-2-apart", "postgres-1", "postgres-2",
                                          "postgres-2-apart"])
    reps = d["runs"].get("postgres-2")
    if reps:
        out += ["", "Each replica of the two-replica row (medians over the rounds):", "",
                "| replica | req/s | p50 ms | p90 ms | p99 ms | errors | peak RSS MiB |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for i in range(len(reps[0]["replicas"])):
            rs = [r["replicas"][i] for r in reps]
            m = {k: med(r[k] for r in rs) for k in ("rps", "p50_ms", "p90_ms", "p99_ms")}
            out.append(f"| {i + 1} | {f_int(m['rps'])} | {f_ms(m['p50_ms'])} | {f_ms(m['p90_ms'])} | {f_ms(m['p99_ms'])} | "
                       f"{sum(r['errors'] + r['non2xx'] for r in rs):,.0f} | {max(r['rss_kib'] for r in rs) / 1024:.1f} |")
    return out


def md_view_64(part):
    d = part["data"]
    out = ["POST /view (`bench/post_view.lua`: `text/plain` holding JSON, as `navigator.sendBeacon` sends it, "
           "a new user each time) against POST /buy (`bench/post_buy.lua`) at 64 connections, each on a fresh "
           "store of its own, beside the baseline in the same run. The target: a view costs no more than a buy.", ""]
    out += [x + "  " for x in skipped_lines(d)]
    out += throughput_and_cpu(d["runs"], ["baseline", "sqlite-buy", "sqlite-view", "postgres-buy", "postgres-view",
                                          "sqlite-buys-100", "sqlite-views-100"])
    out += ["", "The batch rows are requests of 100 records each (`bench/batch.lua`, `bench/views_batch.lua`): "
            "records per second are 100 × their req/s."]
    return out


def md_routes(d):
    out = []
    for store, routes in d.get("server_routes", {}).items():
        out += ["", f"Server-side latency by route, {NAMES[store]} (from the `/metrics` histogram, whole scenario; "
                "estimated within the buckets, so coarse):", "",
                "| route | requests | p50 ms | p99 ms | ≤ 5 ms |", "| --- | ---: | ---: | ---: | ---: |"]
        for route, h in sorted(routes.items(), key=lambda x: -x[1]["count"]):
            share = "—" if h["share_le_5ms"] is None else f"{h['share_le_5ms']:.1%}"
            out.append(f"| `{route}` | {f_int(h['count'])} | {f_ms(h['p50_ms'])} | {f_ms(h['p99_ms'])} | {share} |")
    return out


def md_mix(part):
    d = part["data"]
    out = ["`bench/mix.lua` at 64 connections: 90% POST /buy, 10% reads (GET /stats, /stats?timeframe_hours=24, "
           "/promotions, /promotions/{id}/stats, /stats/timeseries?bucket=minute&timeframe_hours=1, 2% each). "
           "The baseline serves only POST /buy, so its row is `bench/post_buy.lua`, as in every scenario.", ""]
    out += [x + "  " for x in skipped_lines(d)]
    out += throughput_and_cpu(d["runs"], ["baseline", "sqlite", "postgres"])
    return out + md_routes(d)


def md_batch(part):
    d = part["data"]
    n = d.get("batch_size") or BATCH
    out = [f"`bench/batch.lua`: POST /buys with {n} buys per request at 64 connections. The baseline row is "
           "single POST /buy requests (its only route); buys/s ratio = service buys/s ÷ baseline req/s.", ""]
    out += [x + "  " for x in skipped_lines(d)]
    out += ["| target | requests/s | buys/s | p50 ms | p90 ms | p99 ms | errors | peak RSS MiB | buys/s ratio to baseline |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    base = summarize(d["runs"].get("baseline"))
    for k in ("baseline", "sqlite", "postgres"):
        s = summarize(d["runs"].get(k))
        if not s:
            continue
        buys = s["rps"] * (1 if k == "baseline" else n)
        out.append(f"| {NAMES[k]} | {f_int(s['rps'])} | {f_int(buys)} | {f_ms(s['p50_ms'])} | {f_ms(s['p90_ms'])} | "
                   f"{f_ms(s['p99_ms'])} | {s['errors']:,.0f} | {s['rss_mib']:.1f} | {buys / base['rps']:.2f} |")
    out += cpu_table(d["runs"], ["baseline", "sqlite", "postgres"])
    return out + md_routes(d)


def md_growth(part):
    d = part["data"]
    g = growth_tables(d)
    env = " ".join(f"{k}={v}" for k, v in d.get("env", {}).items())
    conns = d.get("env", {}).get("CONNS", "8")
    out = [f"`bench/growth.sh {' '.join(d['sizes'])}`{' with ' + env if env else ''}: stores filled by the bulk "
           "loader (`bench/load.rs`), every read measured on every size in alternation (`wrk -t1 "
           f"-c{conns}`). p99 in ms of each read (median of the rounds) against the number of stored buys:", "",
           "| stored buys | " + " | ".join(GROWTH_READS.values()) + " | start-up ms | RSS MiB (peak) |",
           "| ---: | " + " | ".join("---:" for _ in GROWTH_READS) + " | ---: | ---: |"]
    for size, x in g.items():
        cells = [f_ms(x["reads"].get(ep, {}).get("p99_ms")) for ep in GROWTH_READS]
        rss = "—" if x["rss_mib"] is None else f"{x['rss_mib']:.1f} ({x['hwm_mib']:.1f})"
        out.append(f"| {size_label(size)} | " + " | ".join(cells) + f" | {f_int(x['health_ms'])} | {rss} |")
    out += ["", "![p99 of each read against stored buys](latency-vs-stored-buys.png)", "",
            "What `bench/growth.sh` printed (its own tables and verdicts):", ""]
    return out + [d["summary_md"].replace("\n### ", "\n#### ").replace("### ", "#### ", 1)]


def md_locust(part):
    d = part["data"]
    out = ["`locust -f bench/locustfile.py --headless -u USERS -r RATE -t SECONDS --csv ...` against a fresh SQLite "
           "server (the original's traffic mix). Locust is one Python process sharing the cores with the server, so "
           "its tail percentiles include its own scheduling; the server-side `/buy` latency comes from the "
           "service's `/metrics` histogram (estimated within its buckets).", "",
           "| users | spawn rate/s | seconds | requests | failures | /buy req/s | /buy p50 / p95 / p99 ms (Locust) | "
           "/buy server-side p50 / p95 / p99 ms | /buy server-side ≤ 5 ms |",
           "| ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: |"]
    for users, lv in d["levels"].items():
        agg, buy, sb = lv["endpoints"].get("Aggregated", {}), lv["endpoints"].get("POST /buy", {}), lv["server_buy"]
        share = "—" if sb.get("share_le_5ms") is None else f"{sb['share_le_5ms']:.1%}"
        out.append(f"| {int(users):,} | {lv['spawn_rate']} | {lv['seconds']} | {f_int(agg.get('requests'))} | "
                   f"{f_int(agg.get('failures'))} | {f_int(buy.get('rps'))} | {f_int(buy.get('p50_ms'))} / "
                   f"{f_int(buy.get('p95_ms'))} / {f_int(buy.get('p99_ms'))} | {f_ms(sb.get('p50_ms'))} / "
                   f"{f_ms(sb.get('p95_ms'))} / {f_ms(sb.get('p99_ms'))} | {share} |")
    for users, lv in d["levels"].items():
        out += ["", f"Per endpoint at {int(users):,} users (Locust's figures):", "",
                "| endpoint | requests | failures | p50 ms | p95 ms | p99 ms |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for name, e in lv["endpoints"].items():
            out.append(f"| {name} | {f_int(e['requests'])} | {f_int(e['failures'])} | {f_int(e['p50_ms'])} | "
                       f"{f_int(e['p95_ms'])} | {f_int(e['p99_ms'])} |")
    return out


SECTIONS = [("buy-sweep", "POST /buy against concurrency", md_buy_sweep), ("buy-64", "POST /buy at 64 connections", md_buy_64),
            ("view-64", "POST /view against POST /buy", md_view_64),
            ("mix", "Realistic mix", md_mix), ("batch", "Batches: POST /buys", md_batch),
            ("growth", "Growth: reads, start-up and memory against stored buys", md_growth),
            ("locust", "Locust (the original's traffic mix)", md_locust)]


def render_markdown(results):
    run, parts = results["run"], results["parts"]
    mach = run["machine"]
    out = ["# Benchmark results", "",
           "Generated by `bench/harness.py` through `bench/run.sh`; do not edit by hand. `bench/run.sh plots` "
           "regenerates this page and the plots from the latest `results.json`; the raw wrk lines and logs are in "
           f"`target/bench/{run['id']}/` on the machine that ran it. Everything runs on 127.0.0.1: load generator and "
           "servers share the machine's cores.", ""]
    if any(p.get("meta", {}).get("quick") for p in parts.values()):
        out += ["> **Some parts below come from a quick smoke run (`--quick`: 1 round of 2 s, small stores, short "
                "Locust runs). Their figures only show that the harness works; they are not measurements.**", ""]
    out += ["## Machine and command", "", "| | |", "| --- | --- |",
            f"| CPU | {mach['nproc']} × {mach['cpu']} |", f"| memory | {mach['memory_gib']} GiB |",
            f"| kernel | Linux {mach['kernel']} |", f"| rustc | {mach['rustc']} (release build) |",
            f"| tools | {mach['wrk']}; Locust {mach['locust']}; Python {mach['python']}; PostgreSQL "
            f"{mach['postgres'] or 'not reached'} |",
            f"| date | {run['started']} |", f"| command | `{run['command']}` |",
            f"| commit | `{run['git']['commit']}`" + (" with uncommitted changes in " + ", ".join(f"`{f}`" for f in run['git']['dirty_files'])
                                                      if run['git']['dirty'] else "") + " |", "",
            "Which run measured each part (parts not measured by the latest command are kept from the previous "
            "results):", "", "| part | measured | commit | command | settings |", "| --- | --- | --- | --- | --- |"]
    for key, title, _ in SECTIONS:
        p = parts.get(key)
        if not p:
            out.append(f"| {key} | never | | | |")
            continue
        m = p["meta"]
        state = " (**failed**)" if p.get("error") else (" (quick)" if m.get("quick") else "")
        out.append(f"| {key} | {m['measured_at']}{state} | `{m['git']['commit'][:10]}`{'+dirty' if m['git']['dirty'] else ''} | "
                   f"`{m['command']}` | {settings(m)} |")
    out += ["", "## Targets", "", "| target | measured | result |", "| --- | --- | --- |"]
    out += [f"| {t} | {m} | {v} |" for t, m, v in targets_table({k: p for k, p in parts.items() if not p.get('error')})]
    for key, title, fn in SECTIONS:
        p = parts.get(key)
        out += ["", f"## {title}", ""]
        if not p:
            out.append(f"Not measured yet: `bench/run.sh {key}`.")
            continue
        out += [part_line(p), ""]
        if p.get("error"):
            out.append(f"**This part failed**: {p['error']}")
            continue
        out += fn(p)
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- plots


def plots(results):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    made = []
    parts = {k: p for k, p in results["parts"].items() if not p.get("error")}
    colors = {"baseline": "tab:gray", "sqlite": "tab:blue", "postgres": "tab:orange"}
    sweep = parts.get("buy-sweep")
    if sweep:
        levels = sweep["data"]["levels"]
        quick = " (quick smoke run)" if sweep["meta"].get("quick") else ""
        for metric, fname, ylabel, title in (
                ("rps", "throughput-vs-concurrency.png", "requests per second (median of rounds)", "POST /buy throughput"),
                ("p99_ms", "p99-vs-concurrency.png", "p99 latency, ms (median of rounds, log scale)", "POST /buy p99 latency")):
            fig, ax = plt.subplots(figsize=(10, 5), dpi=110)
            for k in ("baseline", "sqlite", "postgres"):
                pts = [(int(c), summarize(r[k])[metric]) for c, r in levels.items() if r.get(k)]
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=NAMES[k], color=colors[k])
            if metric == "p99_ms":
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
                ax.yaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "235" else ""))
                ax.axhline(5, color="tab:red", linestyle="--", linewidth=1, label="target: p99 ≤ 5 ms (at 64 connections)")
            else:
                ax.set_ylim(bottom=0)
            ax.set_xscale("log")
            xs = [int(c) for c in levels]
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.xaxis.set_minor_locator(ticker.NullLocator())
            if metric == "rps":
                ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
            ax.set_xlabel("concurrent connections (wrk -t1, log scale)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{title} against concurrency{quick}\n{sweep['meta']['measured_at']}, "
                         f"{results['run']['machine']['nproc']} cores, loopback")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))  # never over the data
            fig.tight_layout()
            fig.savefig(DOCS / fname)
            plt.close(fig)
            made.append(fname)
    growth = parts.get("growth")
    if growth:
        g = growth_tables(growth["data"])
        quick = " (quick smoke run)" if growth["meta"].get("quick") else ""
        fig, ax = plt.subplots(figsize=(10, 5), dpi=110)
        for ep, label in GROWTH_READS.items():
            # Sizes spread over other days (SIZE:DAYS) would share an x with SIZE: table only.
            pts = sorted((x["buys"], x["reads"][ep]["p99_ms"]) for size, x in g.items()
                         if ep in x["reads"] and ":" not in size)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        xs = sorted({x["buys"] for x in g.values()})
        ax.set_xticks(xs, [short_count(x) for x in xs])
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "235" else ""))
        ax.set_xlabel("buys in the store (log scale)")
        ax.set_ylabel("p99 latency, ms (median of rounds, log scale)")
        ax.set_title(f"Read latency against stored buys (SQLite){quick}\n{growth['meta']['measured_at']}, "
                     f"wrk -c{growth['data'].get('env', {}).get('CONNS', 8)}, loopback")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
        fig.tight_layout()
        fig.savefig(DOCS / "latency-vs-stored-buys.png")
        plt.close(fig)
        made.append("latency-vs-stored-buys.png")
    return made


# ---------------------------------------------------------------- main


def latest_results(exclude=None):
    for d in sorted(OUT_ROOT.glob("*/results.json"), reverse=True):
        if d.parent != exclude:
            return json.loads(d.read_text()), d
    docs = DOCS / "results.json"
    if docs.exists():
        return json.loads(docs.read_text()), docs
    return None, None


def publish(results):
    DOCS.mkdir(parents=True, exist_ok=True)
    (DOCS / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    made = plots(results)
    (DOCS / "results.md").write_text(render_markdown(results))
    log(f"wrote docs/bench/results.md, docs/bench/results.json{''.join(', docs/bench/' + m for m in made)}")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parts", nargs="*", help="throughput, buy-sweep, buy-64, view-64, mix, batch, growth, locust, plots (default: all)")
    ap.add_argument("--quick", action="store_true", help="short smoke run for development")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--seconds", type=int, default=None)
    a = ap.parse_args()
    wanted = []
    for p in a.parts or ["all"]:
        if p == "all":
            wanted += PARTS
        elif p == "throughput":
            wanted += THROUGHPUT
        elif p in PARTS or p == "plots":
            wanted.append(p)
        else:
            ap.error(f"unknown part {p!r}")
    a.plots_only = set(wanted) == {"plots"}
    a.parts = [p for p in PARTS if p in wanted]
    env_int = lambda k, d: int(os.environ.get(k, d))  # noqa: E731
    a.rounds = a.rounds or env_int("BENCH_ROUNDS", 1 if a.quick else 3)
    a.seconds = a.seconds or env_int("BENCH_SECONDS", 2 if a.quick else 10)
    a.levels = SWEEP
    a.growth_sizes = os.environ.get("BENCH_GROWTH_SIZES", "1000 20000" if a.quick else "1000 1000000 10000000").split()
    a.locust_seconds = env_int("BENCH_LOCUST_SECONDS", 20 if a.quick else 60)
    a.locust_users = [(30, 10), (100, 50)] if a.quick else [(300, 100), (3000, 500)]
    return a


def main():
    a = parse_args()
    if a.plots_only:
        results, path = latest_results()
        if not results:
            sys.exit("bench: no results.json in target/bench/ or docs/bench/: run a measurement first")
        log(f"regenerating docs/bench/ from {path.relative_to(ROOT)}")
        publish(results)
        return 0

    # Locust at 3,000 users and wrk at 300 connections need more descriptors than a default 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))
    # Signals unwind as KeyboardInterrupt (SIGINT too: a shell may start us with it ignored), so the
    # finally below stops every server and drops the databases.
    def interrupted(*_):
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)

    run = Run(a)
    log(f"run {run.id}: parts {' '.join(a.parts)}; {a.rounds} round(s) × {a.seconds} s; output {run.dir.relative_to(ROOT)}")
    previous, prev_path = latest_results(exclude=run.dir)
    parts = dict(previous["parts"]) if previous else {}
    if previous:
        log(f"parts not measured now are kept from {prev_path.relative_to(ROOT)}")
    failed = []
    try:
        for name in a.parts:
            meta = run.meta(name)
            log(f"== {name}")
            try:
                parts[name] = {"meta": meta, "data": SCENARIOS[name](run)}
            except (BenchError, OSError, subprocess.SubprocessError, urllib.error.URLError) as e:
                log(f"FAILED {name}: {e}")
                parts[name] = {"meta": meta, "error": str(e)}
                failed.append(name)
            finally:
                run.cleanup()
    except KeyboardInterrupt:
        log("interrupted: stopping every process and dropping the databases")
        run.cleanup()
        return 130
    finally:
        run.cleanup()

    results = {"version": 1, "run": {"id": run.id, "started": run.started.strftime("%Y-%m-%d %H:%M:%S UTC"),
                                     "command": command_line(), "git": git_info(), "machine": machine_info(run.pg),
                                     "parts_measured": a.parts}, "parts": parts}
    (run.dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    publish(results)
    if failed:
        log(f"failed parts: {' '.join(failed)} (see {run.dir.relative_to(ROOT)})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
