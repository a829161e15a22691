"""A members file of hundreds of members: /health latency and agent CPU, and what is left dialled afterwards.

    python bench/large_members.py                  # 1,000 members, 20 s per phase
    python bench/large_members.py --members 500 --seconds 30

Reproduces issue 11 items 1 and 2 on a real 3-node loopback mesh (real daemons, agents with default settings,
MAPE-K on). Phases, all in one run:
1. baseline: the mesh's own 3-member file; node-a's /health is read 20 times a second (a new connection each
   time, 1 s timeout: a probe or a scraper) while the agents' CPU is sampled.
2. large: the file gets N members (the 3 real nodes plus N-3 that do not exist, listening nowhere on 127.1.x.y,
   ids after node-*) and no `links`, like the Nomad template writes it: the default plan (auto: the expander
   above 8 members, at most 4 links a node), or with `--topology full` the full plan (node-a and node-b dial
   all of them: the worst case, issue 11's original report). Same measurement.
3. restored: the original file again; same measurement, then after a settle time every daemon is asked, through
   its admin socket, whether it still has any of the fake peers configured (`removePeer` succeeds only for a
   configured peer; those are removed by this check).

Targets (issue 11): /health p99 < 50 ms with the large file and no timeouts; after restoring, no daemon keeps a
fake peer. The baseline phase is printed beside each phase as a ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.localmesh import LocalMesh, MeshOptions  # noqa: E402
from agent.yggdrasil.client import AdminClient  # noqa: E402
from agent.yggdrasil.errors import AdminCommandError, AdminError  # noqa: E402

P99_TARGET_MS = 50.0
RATE_HZ = 20.0
TIMEOUT_S = 1.0


@dataclass
class Phase:
    name: str
    latencies_ms: list[float]
    timeouts: int
    non_200: int
    cpu_pct: dict[str, float]

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, int(q * len(data)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")

    @property
    def p99(self) -> float:
        return self.pct(0.99)

    @property
    def max(self) -> float:
        return max(self.latencies_ms) if self.latencies_ms else float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime in clock ticks (USER_HZ = 100)


def measure(name: str, url: str, seconds: float, pids: dict[str, int]) -> Phase:
    lat: list[float] = []
    timeouts = non_200 = 0
    cpu0 = {n: cpu_seconds(p) for n, p in pids.items()}
    t0 = time.monotonic()
    next_at = t0
    parts = urlsplit(url)
    while time.monotonic() - t0 < seconds:
        start = time.perf_counter()
        # A new connection per request, as a health checker or another agent's probe makes; http.client, whose
        # own cost is far below a millisecond, so the figure is the server's.
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=TIMEOUT_S)
        try:
            conn.request("GET", parts.path)
            resp = conn.getresponse()
            resp.read()
            lat.append((time.perf_counter() - start) * 1000)
            if resp.status != 200:
                non_200 += 1
        except TimeoutError:
            timeouts += 1
            lat.append(TIMEOUT_S * 1000)
        except OSError:
            timeouts += 1
            lat.append(TIMEOUT_S * 1000)
        finally:
            conn.close()
        next_at += 1 / RATE_HZ
        time.sleep(max(0.0, next_at - time.monotonic()))
    wall = time.monotonic() - t0
    cpu = {n: 100 * (cpu_seconds(p) - cpu0[n]) / wall for n, p in pids.items()}
    return Phase(name, lat, timeouts, non_200, cpu)


def large_doc(original: dict, n: int, topology: str | None) -> dict:
    members = list(original["members"])
    for i in range(n - len(members)):
        # Distinct hosts in 127.1/16 on port 9: nothing listens there, every dial is refused at once.
        members.append(
            {
                "node_id": f"x-{i:04d}",
                "agent_url": f"http://127.1.{i // 250}.{i % 250 + 1}:9",
                "listen_uri": f"tls://127.1.{i // 250}.{i % 250 + 1}:9",
            }
        )
    doc = {"mesh": original.get("mesh"), "members": members}  # no "links", as Nomad writes it
    if topology is not None:
        doc["topology"] = topology
    return doc


def write_atomically(path: Path, doc: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


async def configured_fakes(endpoint: str, uris: list[str]) -> int:
    """How many of `uris` the daemon still has configured (removePeer succeeds only for those)."""
    count = 0
    client = AdminClient(endpoint, timeout=5)
    async with client.session() as s:
        for uri in uris:
            try:
                await s.remove_peer(uri)
                count += 1
            except AdminCommandError:
                pass
    return count


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, default=1000, help="members in the large file (default 1000)")
    p.add_argument("--seconds", type=float, default=20.0, help="measurement per phase (default 20)")
    p.add_argument("--settle", type=float, default=30.0, help="wait after restoring before the leftover check")
    p.add_argument(
        "--mapek",
        choices=("on", "off"),
        default="on",
        help="off: X0_MAPEK_ENABLED=false, to separate the agent's own refresh from MAPE-K's per-tick probing",
    )
    p.add_argument(
        "--topology",
        choices=("auto", "full", "expander", "ring", "chain"),
        default=None,
        help="the large file's topology (default: none written, so the members file's default, auto); "
        "full: every member dials every other, the worst case",
    )
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="x0t-members-bench-") as tmp:
        opts = MeshOptions(
            nodes=3,
            topology="full",
            mode="loopback",
            run_dir=Path(tmp) / "run",
            start_timeout=60,
            agent_env={"X0_MAPEK_ENABLED": "true" if args.mapek == "on" else "false"},
        )
        print(f"starting a 3-node loopback mesh (real daemons and agents, MAPE-K {args.mapek}) ...", flush=True)
        with LocalMesh(opts) as mesh:
            assert mesh.members_path is not None
            path = mesh.members_path
            original = json.loads(path.read_text())
            pids = {n.id: mesh.agent_pid(n.id) or 0 for n in mesh.nodes}
            url = mesh.node("node-a").agent_url + "/health"
            base = measure("baseline (3 members)", url, args.seconds, pids)
            big = large_doc(original, args.members, args.topology)
            fake_uris = [m["listen_uri"] for m in big["members"][len(original["members"]) :]]
            write_atomically(path, big)
            large = measure(f"large ({args.members}, {args.topology or 'default'})", url, args.seconds, pids)
            write_atomically(path, original)
            restored = measure("restored (3 members)", url, args.seconds, pids)
            time.sleep(max(0.0, args.settle - args.seconds))
            leftovers = {}
            for n in mesh.nodes:
                try:
                    leftovers[n.id] = asyncio.run(configured_fakes(n.admin_endpoint, fake_uris))
                except AdminError as exc:
                    print(f"{n.id}: admin socket: {exc}")
                    leftovers[n.id] = -1

    print()
    print(
        f"/health on node-a, {RATE_HZ:g} req/s, new connection each, {TIMEOUT_S:g} s timeout, {args.seconds:g} s"
    )
    cpu_names = list(base.cpu_pct)
    head = f"{'phase':<26} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'timeouts':>8} {'non-200':>7}"
    print(head + "".join(f" {'cpu ' + n[-1]:>7}" for n in cpu_names) + "  p99 ratio")
    ok = True
    for ph in (base, large, restored):
        line = f"{ph.name:<26} {ph.p50:>8.2f} {ph.p99:>8.2f} {ph.max:>8.1f} {ph.timeouts:>8} {ph.non_200:>7}"
        line += "".join(f" {ph.cpu_pct[n]:>6.0f}%" for n in cpu_names)
        line += f"  {ph.p99 / base.p99:.2f}"
        if ph is large:
            passed = ph.p99 < P99_TARGET_MS and ph.timeouts == 0
            ok &= passed
            line += f"  {'PASS' if passed else 'FAIL'} (p99 < {P99_TARGET_MS:g} ms, no timeouts)"
        print(line)
    total = sum(v for v in leftovers.values() if v > 0)
    left_ok = all(v == 0 for v in leftovers.values())
    ok &= left_ok
    print(
        f"fake peers still configured {args.settle:g} s after restoring: "
        + ", ".join(f"{n} {v}" for n, v in leftovers.items())
        + f" (total {total}): {'PASS' if left_ok else 'FAIL'} (0)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
