"""x0dash polling speed and footprint with 100 agents, beside a baseline measured in the same run.

    python bench/dash_poll.py                # 100 agents, 20 poll cycles, 30 key presses
    python bench/dash_poll.py --agents 300
    python bench/dash_poll.py --mesh 30 --screenshot bench/results/x0dash-30.svg   # a real 30-node mesh

The agents: one local server process of ours answering like N x0-agents on N loopback ports: every endpoint
x0dash polls (/health, /mesh/status, /mesh/peers, /mapek, /mapek/incidents, /mapek/actions, /metrics) with
payloads encoded from the agent's own schemas (agent.mesh.schemas: 4 peers per node, real-sized metrics text,
incident and action records), each reply delayed 2-30 ms at random like agents across a network.

Measured, each in its own process so the memory figures are the process's own:
- poll cycle: MeshSession.update() (inventory refresh, concurrent poll of every agent, merge into the view)
  vs the baseline: a bare httpx AsyncClient gathering the same requests without decoding anything.
- key press -> screen updated: the real X0Dash app (headless driver, 160x50) polling the N agents once a
  second; key events are handed to the driver as a terminal would, and the time runs until the change is drawn:
  an arrow key until the node table's cursor moved and the table was redrawn; `?` until the help screen is
  active and drawn. (Pilot.press is not used: it waits for the whole process to go idle, and the poller's
  thread keeps it busy.) Baseline: the same app and data with polling stopped.
- peak RSS (VmHWM) of the dashboard process vs the bare-httpx baseline process.

`--mesh N`: instead of the fake agents, a real N-node local mesh (netns as root, else loopback; the default
topology: the expander above 8 nodes) with its agents and daemons on this machine, so x0dash competes with them
for the CPU as on an operator's laptop running a test mesh. `--screenshot FILE` saves the overview (topology,
events, node table) as x0dash drew it while polling, as SVG, to judge whether the topology is readable at that
size.

Targets (issue 4): one full poll cycle within 1 s, key press -> screen within 100 ms while polling, < 150 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

ENDPOINTS = ["/health", "/mesh/status", "/mesh/peers", "/mapek", "/mapek/incidents", "/mapek/actions"]
METRICS_EVERY = 5  # as the poller's defaults: /metrics every 5th cycle,
RECORDS_EVERY = 2  # incidents and actions every other cycle in a quiet mesh


# ------------------------------------------------------------------------------------------ fake agents
def _payloads(n: int, base_port: int) -> dict[int, dict[str, bytes]]:
    from agent.mesh.schemas import Health, HealthCheck, MeshPeers, MeshStatus, PeerView, YggdrasilHealth

    now = time.time()
    out: dict[int, dict[str, bytes]] = {}
    enc = msgspec.json.encode
    for i in range(n):
        nid = f"node-{i:03d}"
        peers = [
            PeerView(
                key=f"{(i + d) % n:064x}",
                address=f"200::{(i + d) % n:x}",
                node_id=f"node-{(i + d) % n:03d}",
                remote=f"tls://127.0.0.1:{base_port + (i + d) % n}",
                up=True,
                inbound=d < 0,
                latency_ms=None,
                bytes_recvd=123456,
                bytes_sent=654321,
                uptime_s=3600.0,
                last_error=None,
                planned=True,
                temporary=False,
            )
            for d in (-2, -1, 1, 2)
        ]
        checks = [HealthCheck(name=c, ok=True, detail="ok") for c in ("yggdrasil", "monitor", "members", "peers")]
        incidents = [
            {
                "id": f"inc-{i}-{k}",
                "kind": "peer_lost",
                "subject": f"node-{(i + 1) % n:03d}",
                "detected_at": now - 100 + k,
                "resolved_at": now - 99 + k,
                "count": 1,
                "detail": "link down",
                "actions": [f"act-{i}-{k}"],
            }
            for k in range(3)
        ]
        actions = [
            {
                "id": f"act-{i}-{k}",
                "at": now - 99.5 + k,
                "action": "redial",
                "target": f"node-{(i + 1) % n:03d}",
                "uri": "tls://127.0.0.1:1",
                "outcome": "ok",
                "reason": "planned peer lost",
                "incident_id": f"inc-{i}-{k}",
            }
            for k in range(3)
        ]
        metrics = "".join(
            f'x0_http_request_duration_seconds_bucket{{route="{r}",method="GET",status="200",le="{le}"}} {c}\n'
            for r in ENDPOINTS
            for le, c in (("0.005", 900), ("0.01", 990), ("0.05", 999), ("+Inf", 1000))
        )
        metrics += "".join(
            f'x0_http_request_duration_seconds_count{{route="{r}",method="GET",status="200"}} 1000\n'
            for r in ENDPOINTS
        )
        metrics += "".join(
            f'x0_member_rtt_seconds{{member="{p.node_id}",path="overlay"}} 0.01{i % 10}\n' for p in peers
        )
        metrics += "# filler: the other series an agent exports\n" + "x0_peers_up 4\n" * 150
        out[i] = {
            "/health": enc(
                Health(
                    status="ok",
                    node_id=nid,
                    version="0.1.0",
                    peers_up=4,
                    checks=checks,
                    yggdrasil=YggdrasilHealth(reachable=True, api_version="0.4", endpoint="unix:///s"),
                )
            ),
            "/mesh/status": enc(
                MeshStatus(
                    node_id=nid,
                    key=f"{i:064x}",
                    address=f"200::{i:x}",
                    subnet="300::/64",
                    api_version="0.4",
                    coords=[1, 2, 3],
                    routing_entries=None,
                    peers_up=4,
                    peers_expected=4,
                    members_known=n,
                    uptime_s=3600.0,
                    snapshot_age_s=0.3,
                )
            ),
            "/mesh/peers": enc(MeshPeers(node_id=nid, peers=peers, missing=[])),
            "/mapek": enc(
                {
                    "node_id": nid,
                    "enabled": True,
                    "state": "running",
                    "tick": 3600,
                    "last_tick_at": now,
                    "interval_s": 1.0,
                    "members_total": n,
                    "members_reachable": n,
                    "active_incidents": [],
                    "phase_ms": {"monitor": 1.0, "analyze": 0.2, "plan": 0.1, "execute": 0.0},
                }
            ),
            "/mapek/incidents": enc({"incidents": incidents}),
            "/mapek/actions": enc({"actions": actions}),
            "/metrics": metrics.encode(),
        }
    return out


async def _serve(n: int, base_port: int) -> None:
    payloads = _payloads(n, base_port)
    rng = random.Random(4)

    def handler(idx: int):
        replies = payloads[idx]

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    path = head.split(b" ", 2)[1].decode().split("?", 1)[0]
                    body = replies.get(path)
                    await asyncio.sleep(rng.uniform(0.002, 0.030))  # an agent across a network
                    if body is None:
                        status, body, ctype = b"404 Not Found", b'{"status_code":404,"detail":"no"}', b"json"
                    else:
                        status, ctype = b"200 OK", b"plain" if path == "/metrics" else b"json"
                    writer.write(
                        b"HTTP/1.1 "
                        + status
                        + b"\r\ncontent-type: application/"
                        + ctype
                        + b"\r\ncontent-length: "
                        + str(len(body)).encode()
                        + b"\r\n\r\n"
                        + body
                    )
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        return handle

    servers = [await asyncio.start_server(handler(i), "127.0.0.1", base_port + i, backlog=1024) for i in range(n)]
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


def _free_base(n: int) -> int:
    import socket

    for base in range(41000, 60000, 1000):
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise SystemExit("no free block of ports")


# ------------------------------------------------------------------------------------------ measurements
def _rss_peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _baseline(urls: list[str], cycles: int) -> dict[str, object]:
    import httpx

    # One small pool per agent, as x0dash does: a single httpx pool of ~700 connections is pathologically slow
    # (see dashboard/agent_client.py), and the baseline should measure the HTTP work, not that.
    times = []
    failed = 0
    ctx = ssl.create_default_context()
    clients = {
        u: httpx.AsyncClient(
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=8),
            timeout=1.5,
            trust_env=False,
            verify=ctx,
        )
        for u in urls
    }
    for k in range(cycles):
        paths = (
            ENDPOINTS[:4]
            + (ENDPOINTS[4:] if k % RECORDS_EVERY == 0 else [])
            + (["/metrics"] if k % METRICS_EVERY == 0 else [])
        )
        t0 = time.perf_counter()
        # A real agent may close an idle keep-alive connection as it is reused: counted, as x0dash's poller
        # counts a failed request, not fatal.
        got = await asyncio.gather(*(clients[u].get(u + p) for u in urls for p in paths), return_exceptions=True)
        times.append(time.perf_counter() - t0)
        failed += sum(isinstance(r, BaseException) for r in got)
        await asyncio.sleep(0.2)
    await asyncio.gather(*(c.aclose() for c in clients.values()))
    return {"cycle_s": times, "rss_mb": _rss_peak_mb(), "failed": failed}


async def _press_until_shown(app, key: str, char: str | None, screen_type: type) -> float:
    """Seconds from a key arriving (as from the terminal) until the screen it opens has been drawn."""
    from textual import events

    t0 = time.perf_counter()
    app._driver.send_message(events.Key(key, char))  # what the terminal driver does with a key press
    while not isinstance(app.screen, screen_type):  # noqa: ASYNC110 - polling the app is the measurement
        await asyncio.sleep(0.001)
    drawn = asyncio.Event()
    app.screen.call_after_refresh(drawn.set)
    await drawn.wait()
    return time.perf_counter() - t0


async def _press_until_moved(app, table, key: str) -> float:
    """Seconds from an arrow key arriving until the node table has moved its cursor and been redrawn."""
    from textual import events

    before = table.cursor_row
    t0 = time.perf_counter()
    app._driver.send_message(events.Key(key, None))
    while table.cursor_row == before:  # noqa: ASYNC110 - polling the app is the measurement
        await asyncio.sleep(0.001)
    drawn = asyncio.Event()
    table.call_after_refresh(drawn.set)
    await drawn.wait()
    return time.perf_counter() - t0


def _urls(inventory: Path) -> list[str]:
    return [n["agent_url"] for n in json.loads(inventory.read_text())["nodes"]]


async def _dashboard(inventory: Path, cycles: int, presses: int, screenshot: Path | None) -> dict[str, object]:
    from dashboard.app import X0Dash
    from dashboard.providers.inventory import InventoryProvider
    from dashboard.screens.help import HelpScreen
    from dashboard.screens.overview import OverviewScreen
    from dashboard.session import MeshSession
    from dashboard.widgets.node_table import NodeTable

    session = MeshSession(InventoryProvider(inventory))
    await session.start()
    times, healthy = [], 0
    for _ in range(cycles):
        t0 = time.perf_counter()
        update = await session.update()
        times.append(time.perf_counter() - t0)
        healthy = update.view.nodes_healthy
        await asyncio.sleep(0.2)
    await session.close()

    async def keys(autopoll: bool) -> dict[str, list[float]]:
        # tune_gc as the x0dash command runs it (this child process is the dashboard's alone).
        app = X0Dash(InventoryProvider(inventory), interval=1.0, autopoll=True, tune_gc=True)
        lat: dict[str, list[float]] = {"help": [], "cursor": []}
        async with app.run_test(size=(160, 50)) as pilot:
            # As healthy as the session saw it, or 60 s: on a real mesh that saturates the machine, nodes come and
            # go as silent and the count may not come back within the run.
            deadline = time.monotonic() + 60.0
            while (app.view is None or app.view.nodes_healthy < healthy) and time.monotonic() < deadline:
                await pilot.pause(0.1)
            if not autopoll:
                app.workers.cancel_group(app, "poll")
                await pilot.pause(0.3)
            rng = random.Random(7)
            await _press_until_shown(app, "question_mark", "?", HelpScreen)  # first open composes it
            await _press_until_shown(app, "escape", None, OverviewScreen)
            table = app.screen.query_one(NodeTable)
            for i in range(presses):
                await asyncio.sleep(rng.uniform(0.05, 0.6))  # land anywhere in the poll cycle
                lat["help"].append(await _press_until_shown(app, "question_mark", "?", HelpScreen))
                await _press_until_shown(app, "escape", None, OverviewScreen)
                await asyncio.sleep(rng.uniform(0.05, 0.6))
                lat["cursor"].append(await _press_until_moved(app, table, "up" if i % 2 else "down"))
            if autopoll and screenshot is not None:
                await pilot.pause(1.5)  # one more poll drawn
                app.save_screenshot(filename=screenshot.name, path=str(screenshot.parent))
            await app.background.run(app.session.close())
            app.background.stop()
        return lat

    polling = await keys(True)
    idle = await keys(False)
    return {
        "cycle_s": times,
        "healthy": healthy,
        "help_s": polling["help"],
        "help_idle_s": idle["help"],
        "cursor_s": polling["cursor"],
        "cursor_idle_s": idle["cursor"],
        "rss_mb": _rss_peak_mb(),
    }


def _child(mode: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--base",
        str(args.base),
        "--agents",
        str(args.agents),
        "--cycles",
        str(args.cycles),
        "--presses",
        str(args.presses),
        "--inventory",
        str(args.inventory),
    ]
    if args.screenshot is not None:
        cmd += ["--screenshot", str(args.screenshot)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _p(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=100, help="fake agents (default 100)")
    ap.add_argument("--mesh", type=int, default=0, metavar="N", help="poll a real N-node local mesh instead")
    ap.add_argument("--screenshot", type=Path, default=None, help="save x0dash's overview as SVG here")
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--presses", type=int, default=30)
    ap.add_argument("--child", choices=("serve", "baseline", "dashboard"), help=argparse.SUPPRESS)
    ap.add_argument("--base", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--inventory", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "serve":
        asyncio.run(_serve(args.agents, args.base))
        return
    if args.child == "baseline":
        print(json.dumps(asyncio.run(_baseline(_urls(args.inventory), args.cycles))))
        return
    if args.child == "dashboard":
        print(json.dumps(asyncio.run(_dashboard(args.inventory, args.cycles, args.presses, args.screenshot))))
        return
    if args.screenshot is not None:
        args.screenshot = args.screenshot.resolve()
        args.screenshot.parent.mkdir(parents=True, exist_ok=True)
    if args.mesh:
        base, dash, what = _on_a_real_mesh(args)
    else:
        base, dash = _on_fake_agents(args)
        what = f"{args.agents} agents (one local server, 2-30 ms reply delay)"
    _report(args, base, dash, what)


def _on_a_real_mesh(args: argparse.Namespace) -> tuple[dict, dict, str]:
    from agent.localmesh import LocalMesh, MeshOptions

    with tempfile.TemporaryDirectory(prefix="x0dash-bench-") as tmp:
        with LocalMesh(MeshOptions(nodes=args.mesh, run_dir=Path(tmp))) as mesh:
            assert mesh.inventory_path is not None
            args.inventory = mesh.inventory_path
            args.agents = args.mesh
            t0 = time.monotonic()
            _wait_all_healthy(args.inventory, timeout=180.0)
            formed = time.monotonic() - t0
            base = _child("baseline", args)
            dash = _child("dashboard", args)
            mode = mesh.mode
    return (
        base,
        dash,
        f"a real {args.mesh}-node {mode} mesh (all /health 200 {formed:.1f} s after its start returned)",
    )


def _wait_all_healthy(inventory: Path, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    urls = _urls(inventory)
    while True:
        try:
            if all(httpx.get(u + "/health", timeout=2.0, trust_env=False).status_code == 200 for u in urls):
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"the mesh's agents were not all healthy within {timeout:g} s")
        time.sleep(1.0)


def _on_fake_agents(args: argparse.Namespace) -> tuple[dict, dict]:
    args.base = _free_base(args.agents)
    with tempfile.TemporaryDirectory(prefix="x0dash-bench-") as tmp:
        args.inventory = Path(tmp) / "inventory.json"
        nodes = [
            {"id": f"node-{i:03d}", "agent_url": f"http://127.0.0.1:{args.base + i}"} for i in range(args.agents)
        ]
        args.inventory.write_text(json.dumps({"mesh": "bench", "nodes": nodes, "api_token": "x"}))
        os.chmod(args.inventory, 0o600)
        server = subprocess.Popen(
            [sys.executable, __file__, "--child", "serve", "--base", str(args.base), "--agents", str(args.agents)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            base = _child("baseline", args)
            dash = _child("dashboard", args)
        finally:
            server.terminate()
            server.wait(10)
    return base, dash


def _report(args: argparse.Namespace, base: dict, dash: dict, what: str) -> None:
    b_cycle, d_cycle = statistics.median(base["cycle_s"]), statistics.median(dash["cycle_s"])
    h_poll, h_idle, c_poll, c_idle = dash["help_s"], dash["help_idle_s"], dash["cursor_s"], dash["cursor_idle_s"]
    print(
        f"x0dash poll benchmark: {what}, {args.cycles} cycles, {args.presses} key presses; {os.cpu_count()} CPUs"
    )
    print(f"{'figure':<36}{'x0dash':>12}{'baseline':>12}{'ratio':>8}  target")
    rows = [
        ("poll cycle median (s)", d_cycle, b_cycle, "<= 1 s"),
        ("poll cycle max (s)", max(dash["cycle_s"]), max(base["cycle_s"]), "<= 1 s"),
        (
            "arrow -> table redrawn median (ms)",
            statistics.median(c_poll) * 1e3,
            statistics.median(c_idle) * 1e3,
            "",
        ),
        ("arrow -> table redrawn p95 (ms)", _p(c_poll, 0.95) * 1e3, _p(c_idle, 0.95) * 1e3, "<= 100 ms"),
        ("? -> help drawn median (ms)", statistics.median(h_poll) * 1e3, statistics.median(h_idle) * 1e3, ""),
        ("? -> help drawn p95 (ms)", _p(h_poll, 0.95) * 1e3, _p(h_idle, 0.95) * 1e3, "<= 100 ms"),
        ("peak RSS (MB)", dash["rss_mb"], base["rss_mb"], "< 150 MB"),
    ]
    for name, ours, theirs, target in rows:
        print(f"{name:<36}{ours:>12.3f}{theirs:>12.3f}{ours / theirs:>8.2f}  {target}")
    print(
        "baseline: bare httpx gather of the same requests (cycles, RSS); the same app with polling stopped "
        f"(keys). Nodes healthy in the view: {dash['healthy']}/{args.agents}; baseline requests failed: "
        f"{base.get('failed', 0)}"
    )
    ok = (
        max(dash["cycle_s"]) <= 1.0
        and _p(c_poll, 0.95) <= 0.1
        and _p(h_poll, 0.95) <= 0.1
        and dash["rss_mb"] < 150
        and dash["healthy"] == args.agents
    )
    if args.screenshot is not None:
        print(f"overview drawn while polling: {args.screenshot}")
    print("targets met" if ok else "TARGETS MISSED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
