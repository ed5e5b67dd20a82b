#!/usr/bin/env python3
"""Time the analytics SQL of src/store/sqlite/read.rs directly on a store file, without HTTP.

Usage: python3 bench/growth_sql.py STORE.db [STORE.db ...]
       (make a store with: cargo run --release --example load -- sqlite:STORE.db 10000000)

The windowed queries (RECENT_ALL, RECENT_PROMOTION) are read from read.rs itself, so this follows
the code; "now" is 30 s after the newest buy, as in bench/growth.sh right after a load. Python's
sqlite3 is a different SQLite build from the one bundled in the binary, so treat plans and times
as a guide; the HTTP figures come from bench/growth.sh.
"""
import re
import sqlite3
import sys
import time
from pathlib import Path

US = 10**6
READ_RS = (Path(__file__).resolve().parent.parent / "src/store/sqlite/read.rs").read_text()


def sql_const(name):
    return re.search(name + r': &str = "(.*?)";', READ_RS, re.S).group(1)


RECENT_ALL, RECENT_PROMOTION = sql_const("RECENT_ALL"), sql_const("RECENT_PROMOTION")


def edges(since):
    second = since // US + (1 if since % US else 0)
    ceil_to = lambda x, g: x + (g - x % g) % g
    minute = ceil_to(second, 60)
    return second, minute, ceil_to(minute, 3600)


def timed(label, f, n):
    f()
    t0 = time.perf_counter()
    for _ in range(n):
        result = f()
    print(f"  {label:58s} {1e3 * (time.perf_counter() - t0) / n:8.3f} ms  ({result})")


def main(path):
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    (last,) = conn.execute("SELECT max(timestamp_us) FROM buys").fetchone()
    (total,) = conn.execute("SELECT total FROM counter").fetchone()
    now = last + 30 * US
    top = conn.execute("SELECT promotion_id FROM promotion_totals ORDER BY total_buys DESC, promotion_id LIMIT 1")
    top = top.fetchone()[0]
    print(f"{path}: {total:,} buys, top promotion {top}")

    def recent(hours, promotion=None):
        since = now - int(hours * 3600 * US)
        s, m, h = edges(since)
        if promotion is None:
            return conn.execute(RECENT_ALL, (since, s * US, s, m, h)).fetchone()
        return conn.execute(RECENT_PROMOTION, (since, s * US, s, m, h, promotion)).fetchone()

    def promotions_page():
        page = conn.execute(
            "SELECT promotion_id FROM promotion_totals ORDER BY total_buys DESC, promotion_id LIMIT 50"
        ).fetchall()
        return sum(recent(1, p)[0] or 0 for (p,) in page)

    def top_products():
        return len(conn.execute(
            "SELECT product_id, buys, units FROM promotion_products WHERE promotion_id = ?"
            " ORDER BY units DESC, product_id LIMIT 10", (top,)).fetchall())

    def timeseries():
        to, frm = now // US // 60 * 60, (now - 24 * 3600 * US) // US // 60 * 60
        return len(conn.execute(
            "SELECT bucket_s, buys, units FROM rollup WHERE granularity_s = 60 AND bucket_s >= ? AND bucket_s <= ?"
            " ORDER BY bucket_s", (frm, to)).fetchall())

    timed("/stats: RECENT_ALL, 1 h", lambda: recent(1), 200)
    timed("/stats?timeframe_hours=168: RECENT_ALL, 168 h", lambda: recent(168), 200)
    timed("promotion stats: RECENT_PROMOTION, 1 h, top promotion", lambda: recent(1, top), 50)
    timed("promotion stats: top 10 products of the top promotion", top_products, 50)
    timed("/promotions: 50 x RECENT_PROMOTION, 1 h", promotions_page, 5)
    timed("/stats/timeseries minute 24 h: rollup rows", timeseries, 20)
    plan = conn.execute("EXPLAIN QUERY PLAN " + RECENT_PROMOTION, (0, 0, 0, 0, 0, top)).fetchall()
    print("  plan of RECENT_PROMOTION:")
    for row in plan:
        if "promotion_rollup" in row[3]:
            print("    " + row[3])


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for p in sys.argv[1:]:
        main(p)
