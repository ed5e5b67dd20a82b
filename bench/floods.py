#!/usr/bin/env python3
"""Read floods: what a burst of exports or thousands of open dashboards cost the rest.

Starts target/release/buy-tracker on a fresh store, records BUYS buys through POST /buys, then
  1. exports: wrk opens EXPORTS connections to GET /export for 10 s while another wrk reads
     GET /stats with 10 connections; prints /stats req/s, the exports answered 200 and 503, and
     the server's resident memory afterwards;
  2. events: STREAMS clients each hold GET /events open for 10 s; prints the stats events each
     received per second and the CPU the service (and PostgreSQL's processes) spent.
Usage: bench/floods.py [--database-url URL] [--binary PATH] [--buys N] [--exports N] [--streams N ...]
Needs wrk and a release build (cargo build --release). Only loopback is used.
"""
import argparse, asyncio, json, os, re, socket, subprocess, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ticks(pids=None, comm=None):
    """User + system ticks of the given pids, or of every process named `comm`."""
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit() or (pids is not None and int(d) not in pids):
            continue
        try:
            raw = open(f"/proc/{d}/stat").read()
        except OSError:
            continue
        if comm is not None and raw[raw.index("(") + 1:raw.rindex(")")] != comm:
            continue
        fields = raw.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024


def wrk(url, conns, seconds):
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "30s", url],
                         capture_output=True, text=True).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


async def hold_events(port, streams, seconds):
    counts = []

    async def one():
        n = 0
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /events HTTP/1.1\r\nhost: bench\r\n\r\n")
            await writer.drain()
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                line = await asyncio.wait_for(reader.readline(), 5)
                n += line.startswith(b"event: stats")
            writer.close()
        except (OSError, asyncio.TimeoutError):
            pass
        counts.append(n)

    await asyncio.gather(*[one() for _ in range(streams)])
    return counts


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--database-url", help="default: a SQLite file in a temp dir")
    p.add_argument("--binary", default=os.path.join(ROOT, "target/release/buy-tracker"),
                   help="the service to measure (another build, to compare)")
    p.add_argument("--buys", type=int, default=140_000)
    p.add_argument("--exports", type=int, default=100)
    p.add_argument("--streams", type=int, nargs="+", default=[500, 2000, 5000])
    a = p.parse_args()
    tmp = tempfile.TemporaryDirectory()
    url = a.database_url or f"sqlite://{tmp.name}/floods.db"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([a.binary, "--host", "127.0.0.1",
                               "--port", str(port), "--database-url", url], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(base + "/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        for start in range(0, a.buys, 1000):
            buys = [{"user_id": i, "promotion_id": i % 50, "product_id": i % 500, "product_quantity": 1}
                    for i in range(start, min(start + 1000, a.buys))]
            req = urllib.request.Request(base + "/buys", json.dumps({"buys": buys}).encode(),
                                         {"Content-Type": "application/json"})
            urllib.request.urlopen(req, timeout=30).read()
        print(f"store: {url.split('?')[0]} with {a.buys:,} buys; idle RSS {rss_mib(server.pid):.0f} MiB")
        alone = wrk(base + "/stats", 10, 5)
        flood = subprocess.Popen(["wrk", "-t1", f"-c{a.exports}", "-d10s", "--timeout", "30s", base + "/export"],
                                 stdout=subprocess.DEVNULL)
        time.sleep(2)
        during = wrk(base + "/stats", 10, 6)
        flood.wait()
        metrics = urllib.request.urlopen(base + "/metrics").read().decode()
        answered = {s: sum(float(v) for v in re.findall(
            rf'http_requests_total{{method="GET",route="/export",status="{s}"}} (\S+)', metrics)) for s in ("200", "503")}
        time.sleep(2)
        print(f"exports: {a.exports} connections for 10 s: {answered['200']:.0f} answered 200, {answered['503']:.0f} "
              f"answered 503; GET /stats at 10 connections {alone:,.0f} req/s alone, {during:,.0f} during; "
              f"RSS afterwards {rss_mib(server.pid):.0f} MiB")
        for streams in a.streams:
            own0, pg0 = cpu_ticks({server.pid}), cpu_ticks(comm="postgres")
            counts = asyncio.run(hold_events(port, streams, 10))
            own1, pg1 = cpu_ticks({server.pid}), cpu_ticks(comm="postgres")
            hz = os.sysconf("SC_CLK_TCK")
            print(f"events: {streams} streams for 10 s: {sum(counts) / streams / 10:.2f} stats events a second each; "
                  f"CPU service {(own1 - own0) / hz / 10:.2f} cores, PostgreSQL processes {(pg1 - pg0) / hz / 10:.2f}")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
