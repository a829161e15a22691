"""Soak: 30 minutes of mixed load on a real 3-node mesh; is anything creeping? (issue 11, `just soak`)

    python bench/soak.py                 # 30 minutes (run it under x0-test: it measures memory, not speed)
    python bench/soak.py --minutes 5

A 3-node mesh (netns as root, so drills are real; loopback otherwise, without drills), agents with default
settings. For the whole run:
- readers: every agent's /health, /mesh/status, /mesh/peers, /mesh/routes, /metrics, /mapek, a few per second;
- a drill every 2 minutes (blackhole, partition, kill-daemon in turn, 10 s, on each node in turn), counted as
  passed when it ends `reverted` and every agent's /health is 200 again within 60 s;
- members-file churn: every 45 s a member that does not exist is added, and removed 20 s later.
At the start (after a warm-up) and at the end: RSS and open descriptors of every agent. At the end: anything left
(active drills, nft tables, watchdog processes, fake peers still configured in a daemon).

Targets: no reader errors (transport errors or 5xx other than /health's 503 during a drill), every drill passed,
RSS within 10 MB and descriptors within 50 of their start, nothing left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.localmesh import LocalMesh, MeshOptions  # noqa: E402
from agent.yggdrasil.client import AdminClient  # noqa: E402
from agent.yggdrasil.errors import AdminCommandError, AdminError  # noqa: E402

RSS_MB = 10.0
FDS = 50
PATHS = ("/health", "/mesh/status", "/mesh/peers", "/mesh/routes", "/metrics", "/mapek")
KINDS = ("blackhole", "partition", "kill-daemon")
FAKE_URI = "tls://127.1.0.77:9"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Readers(threading.Thread):
    def __init__(self, urls: list[str], drilling: threading.Event, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.urls, self.drilling, self.stop = urls, drilling, stop
        self.requests = 0
        self.errors: Counter[str] = Counter()

    def run(self) -> None:
        with httpx.Client(timeout=5, trust_env=False) as c:
            while not self.stop.is_set():
                for url in self.urls:
                    for path in PATHS:
                        self.requests += 1
                        try:
                            r = c.get(url + path)
                        except httpx.HTTPError as exc:
                            self.errors[f"{path}: {type(exc).__name__}"] += 1
                            continue
                        if r.status_code >= 500 and not (r.status_code == 503 and self.drilling.is_set()):
                            self.errors[f"{path}: HTTP {r.status_code}"] += 1
                self.stop.wait(0.5)


def all_healthy(c: httpx.Client, urls: list[str]) -> bool:
    try:
        return all(c.get(u + "/health").status_code == 200 for u in urls)
    except httpx.HTTPError:
        return False


def leftovers(mesh: LocalMesh, c: httpx.Client, drill_ids: list[str]) -> list[str]:
    out = []
    for n in mesh.nodes:
        active = c.get(n.agent_url + "/drills").json()["active"]
        if active:
            out.append(f"{n.id}: active drills {[d['id'] for d in active]}")
        if n.netns:
            tables = subprocess.run(
                ["ip", "netns", "exec", n.netns, "nft", "list", "tables"], capture_output=True, text=True
            ).stdout
            if "x0_drill" in tables or "x0_hold" in tables:
                out.append(f"{n.id}: nft tables {tables.strip()}")
        try:
            if asyncio.run(still_configured(n.admin_endpoint, FAKE_URI)):
                out.append(f"{n.id}: daemon still has {FAKE_URI} configured")
        except AdminError as exc:
            out.append(f"{n.id}: admin socket: {exc}")
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    # Only this run's watchdogs (they name their drill): other meshes on the machine have their own.
    out += [f"watchdog left: {line.strip()}" for line in ps.splitlines() if any(i in line for i in drill_ids)]
    return out


async def still_configured(endpoint: str, uri: str) -> bool:
    async with AdminClient(endpoint, timeout=5).session() as s:
        try:
            await s.remove_peer(uri)
            return True
        except AdminCommandError:
            return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--drill-every", type=float, default=120.0, help="seconds between drills (default 120)")
    args = p.parse_args(argv)
    mode = "netns" if os.geteuid() == 0 else "loopback"
    with tempfile.TemporaryDirectory(prefix="x0t-soak-") as tmp:
        opts = MeshOptions(nodes=3, topology="full", mode=mode, run_dir=Path(tmp) / "run", start_timeout=60)
        print(f"starting a 3-node {mode} mesh for a {args.minutes:g}-minute soak ...", flush=True)
        with LocalMesh(opts) as mesh, httpx.Client(timeout=10, trust_env=False) as c:
            mesh.wait_healthy(timeout=60)
            urls = [n.agent_url for n in mesh.nodes]
            auth = {"Authorization": f"Bearer {mesh.api_token}"}
            assert mesh.members_path is not None
            original = json.loads(mesh.members_path.read_text())
            with_fake = dict(original)
            with_fake["members"] = [
                *original["members"],
                {"node_id": "zz-fake", "agent_url": "http://127.1.0.77:9", "listen_uri": FAKE_URI},
            ]
            if "links" in original:
                with_fake["links"] = [*original["links"], ["node-a", "zz-fake"]]
            stop, drilling = threading.Event(), threading.Event()
            readers = Readers(urls, drilling, stop)
            readers.start()
            time.sleep(30)
            pids = {n.id: mesh.agent_pid(n.id) or 0 for n in mesh.nodes}
            start = {i: (rss_mb(p), fds(p)) for i, p in pids.items()}
            began = time.monotonic()
            end_at = began + args.minutes * 60
            next_drill, next_churn, fake_in = began + 10, began + 45, None
            drills_run = drills_passed = churns = 0
            drill_ids: list[str] = []
            failures: list[str] = []
            while time.monotonic() < end_at:
                now = time.monotonic()
                if fake_in is not None and now - fake_in >= 20:
                    mesh.members_path.write_text(json.dumps(original))
                    fake_in = None
                elif fake_in is None and now >= next_churn:
                    mesh.members_path.write_text(json.dumps(with_fake))
                    fake_in, next_churn, churns = now, now + 45, churns + 1
                if mode == "netns" and now >= next_drill and now + 75 < end_at:
                    node = mesh.nodes[drills_run % 3]
                    kind = KINDS[drills_run % len(KINDS)]
                    drills_run += 1
                    next_drill = now + args.drill_every
                    drilling.set()
                    r = c.post(f"{node.agent_url}/drills", json={"kind": kind, "duration_s": 10}, headers=auth)
                    if r.status_code != 202:
                        failures.append(f"{kind} on {node.id}: HTTP {r.status_code} {r.text[:200]}")
                        drilling.clear()
                        continue
                    drill_id = r.json()["id"]
                    drill_ids.append(drill_id)
                    time.sleep(11)
                    deadline = time.monotonic() + 60
                    state = None
                    while time.monotonic() < deadline:
                        listing = c.get(f"{node.agent_url}/drills").json()
                        state = next(
                            (d["state"] for d in listing["active"] + listing["past"] if d["id"] == drill_id), None
                        )
                        if state != "active" and all_healthy(c, urls):
                            break
                        time.sleep(0.5)
                    if state == "reverted" and all_healthy(c, urls):
                        drills_passed += 1
                    else:
                        failures.append(f"{kind} on {node.id}: state {state}, mesh not healthy within 60 s")
                    drilling.clear()
                time.sleep(0.5)
            if fake_in is not None:
                mesh.members_path.write_text(json.dumps(original))
            time.sleep(20)
            stop.set()
            readers.join(10)
            end = {i: (rss_mb(p), fds(p)) for i, p in pids.items()}
            left = leftovers(mesh, c, drill_ids)
            alive = all(mesh.is_running(n.id) for n in mesh.nodes)

    print()
    print(f"soak: {args.minutes:g} min, {readers.requests} reads, {drills_run} drills, {churns} member churns")
    print(f"{'agent':<8} {'RSS start':>9} {'RSS end':>8} {'fds start':>9} {'fds end':>7}")
    ok = True
    for i in start:
        print(f"{i:<8} {start[i][0]:>9.1f} {end[i][0]:>8.1f} {start[i][1]:>9} {end[i][1]:>7}")
        ok &= end[i][0] - start[i][0] <= RSS_MB and end[i][1] - start[i][1] <= FDS
    errors = sum(readers.errors.values())
    print(f"reader errors: {errors} {dict(readers.errors) if errors else ''}")
    print(f"drills passed: {drills_passed}/{drills_run}" + (f"; {failures}" if failures else ""))
    print(f"left behind: {left or 'nothing'}; agents all running: {alive}")
    ok &= errors == 0 and drills_passed == drills_run and not left and alive
    print(
        f"{'PASS' if ok else 'FAIL'} (RSS within {RSS_MB:g} MB, fds within {FDS}, no errors, every drill passed, "
        "nothing left)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
