"""Hostile HTTP clients against a real agent: slow headers, idle connections by the thousand (issue 11 item 3).

    python bench/http_floods.py                      # 3,000 slow-header and 19,000 idle connections, 30 s each
    python bench/http_floods.py --slow 3000 --idle 19000 --seconds 60

A real 3-node loopback mesh (real daemons, agents with default settings, MAPE-K on). node-a is attacked from this
process (loopback only); meanwhile a fresh client reads node-a's /health twice a second (a new connection each
time, 1 s timeout). Phases in one run: baseline (no flood), slow headers (each connection sends a header line
every 5 s and never ends its headers; reopened when the server closes it), idle (connections opened as fast as
the machine allows and held silent; reopened when closed). For each: fresh-client /health p50/p99/max and
timeouts, attacker connections the server closed, node-a's descriptors (peak), MAPE-K `daemon_down` incidents
opened on node-a, agent.log growth, and node-a's RSS before the floods and 20 s after the last one.

Targets (issue 11): /health answers within 1 s throughout (no timeouts, max < 1000 ms), no daemon_down incident,
RSS back within 10 MB of its level before, log growth bounded (rate-limited).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import resource
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.localmesh import LocalMesh, MeshOptions  # noqa: E402

TIMEOUT_S = 1.0
RSS_TARGET_MB = 10.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fd_count(pid: int) -> int:
    try:
        return len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except OSError:
        return -1


@dataclass
class Probe:
    latencies: list[float] = field(default_factory=list)
    timeouts: int = 0
    peak_fds: int = 0

    def row(self) -> str:
        lat = sorted(self.latencies) or [float("nan")]
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
        return f"{statistics.median(lat):>8.1f} {p99:>8.1f} {max(lat):>8.1f} {self.timeouts:>8} {self.peak_fds:>8}"


def fresh_client(url: str, stop: threading.Event, out: Probe, pid: int) -> None:
    parts = urlsplit(url)
    while not stop.is_set():
        started = time.perf_counter()
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=TIMEOUT_S)
        try:
            conn.request("GET", parts.path)
            conn.getresponse().read()
            out.latencies.append((time.perf_counter() - started) * 1000)
        except OSError:
            out.timeouts += 1
            out.latencies.append(TIMEOUT_S * 1000)
        finally:
            conn.close()
        out.peak_fds = max(out.peak_fds, fd_count(pid))
        stop.wait(0.5)


async def flood(host: str, port: int, count: int, seconds: float, slow: bool) -> tuple[int, int]:
    """Hold `count` connections open for `seconds`; returns (connections opened, closed by the server)."""
    opened = closed = 0
    deadline = time.monotonic() + seconds
    gate = asyncio.Semaphore(256)  # connects in flight

    async def one() -> None:
        nonlocal opened, closed
        while time.monotonic() < deadline:
            try:
                async with gate:
                    reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                await asyncio.sleep(0.2)
                continue
            opened += 1
            try:
                if slow:
                    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                while time.monotonic() < deadline:
                    try:
                        async with asyncio.timeout(5 if slow else deadline - time.monotonic()):
                            data = await reader.read(4096)
                        if not data:
                            closed += 1
                            break
                    except TimeoutError:
                        if slow:
                            writer.write(b"X-Slow: 1\r\n")
            except OSError:
                closed += 1
            finally:
                writer.close()

    await asyncio.gather(*(one() for _ in range(count)))
    return opened, closed


def daemon_down_incidents(url: str) -> int:
    r = httpx.get(url + "/mapek/incidents?since=0", timeout=5, trust_env=False)
    return sum(1 for i in r.json()["incidents"] if i["kind"] == "daemon_down")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slow", type=int, default=3000, help="slow-header connections (default 3000)")
    p.add_argument("--idle", type=int, default=19000, help="idle connections (default 19000)")
    p.add_argument("--seconds", type=float, default=30.0, help="per phase (default 30)")
    args = p.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.idle + 200 > hard or args.slow + 200 > hard:
        print(f"this process may open {hard} descriptors: lower --idle/--slow", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="x0t-floods-") as tmp:
        opts = MeshOptions(nodes=3, topology="full", mode="loopback", run_dir=Path(tmp) / "run", start_timeout=60)
        print("starting a 3-node loopback mesh (real daemons and agents, MAPE-K on) ...", flush=True)
        with LocalMesh(opts) as mesh:
            node = mesh.node("node-a")
            pid = mesh.agent_pid("node-a") or 0
            parts = urlsplit(node.agent_url)
            log = node.log_path
            time.sleep(5)  # settled
            rss_before = rss_mb(pid)
            incidents_before = daemon_down_incidents(node.agent_url)
            rows = []
            for name, count, slow in (("baseline", 0, False), ("slow headers", args.slow, True)):
                rows.append(run_phase(name, node.agent_url, parts, pid, log, count, slow, args.seconds))
            rows.append(run_phase("idle", node.agent_url, parts, pid, log, args.idle, False, args.seconds))
            time.sleep(20)
            rss_after = rss_mb(pid)
            incidents = daemon_down_incidents(node.agent_url) - incidents_before

    print()
    print(f"node-a /health from a fresh client every 0.5 s (1 s timeout), {args.seconds:g} s per phase")
    print(
        f"{'phase':<14} {'conns':>6} {'opened':>7} {'closed':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'timeouts':>8} {'peak fds':>8} {'log KB':>7}"
    )
    ok = True
    base = rows[0][1]
    for name, probe, count, opened, closed, log_kb in rows:
        print(f"{name:<14} {count:>6} {opened:>7} {closed:>7} {probe.row()} {log_kb:>7.1f}")
        if name != "baseline":
            ok &= probe.timeouts == 0 and max(probe.latencies) < TIMEOUT_S * 1000
    p99_base = sorted(base.latencies)[int(0.99 * len(base.latencies))]
    print(
        "p99 ratio to baseline: "
        + ", ".join(
            f"{r[0]} {sorted(r[1].latencies)[int(0.99 * len(r[1].latencies))] / p99_base:.1f}" for r in rows[1:]
        )
    )
    rss_ok = rss_after - rss_before <= RSS_TARGET_MB
    ok &= rss_ok and incidents == 0
    print(
        f"node-a RSS {rss_before:.1f} MB before, {rss_after:.1f} MB 20 s after the floods: "
        f"{'PASS' if rss_ok else 'FAIL'} (within {RSS_TARGET_MB:g} MB)"
    )
    print(
        f"daemon_down incidents opened on node-a during the floods: {incidents} "
        f"({'PASS' if incidents == 0 else 'FAIL'})"
    )
    print(
        f"fresh client answered within {TIMEOUT_S:g} s throughout: "
        f"{'PASS' if all(r[1].timeouts == 0 for r in rows[1:]) else 'FAIL'}"
    )
    return 0 if ok else 1


def run_phase(name, url, parts, pid, log, count, slow, seconds):
    stop = threading.Event()
    probe = Probe()
    log_before = log.stat().st_size if log.exists() else 0
    t = threading.Thread(target=fresh_client, args=(url + "/health", stop, probe, pid), daemon=True)
    t.start()
    if count:
        opened, closed = asyncio.run(flood(parts.hostname or "", parts.port or 0, count, seconds, slow))
    else:
        time.sleep(seconds)
        opened = closed = 0
    stop.set()
    t.join(5)
    log_kb = ((log.stat().st_size if log.exists() else 0) - log_before) / 1024
    print(f"{name}: done", flush=True)
    return name, probe, count, opened, closed, log_kb


if __name__ == "__main__":
    sys.exit(main())
