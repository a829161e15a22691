"""The replicated KV store beside etcd, on the same mesh, in the same run.

    python bench/kv_bench.py                     # about 4 minutes
    python bench/kv_bench.py --kills 10 --seconds 8 --json out.json

One real 3-node mesh in network namespaces (agent.localmesh: root, yggdrasil): the agents' Raft group (3 voters,
pysyncobj, bound on the Yggdrasil addresses), and beside it a 3-member etcd cluster (Debian `etcd-server`, default
timeouts: heartbeat 100 ms, election 1000 ms) started in the same namespaces, its peers on the same Yggdrasil
addresses (so both Raft groups ride the same overlay), its clients on the underlay like the agents' API.
The bench client runs in the host namespace and spreads requests over the three nodes of each system:
- agents: `PUT /kv/{key}` (token), `GET /kv/{key}` (linearizable: a barrier through the log);
- etcd: its JSON gateway, `POST /v3/kv/put` and `POST /v3/kv/range` (linearizable by default).
Figures (each system measured alone, the other idle):
- acknowledged writes/s and p50/p99 latency with 1 and with 32 concurrent clients (closed loop, --seconds each);
- p50/p99 write latency at a paced 100 writes/s (open loop, --seconds after 1 s not counted);
- linearizable reads/s with 32 clients;
- leader failover, --kills times: the leader's process is SIGKILLed (agents: the agent, whose daemon dies with it
  = node loss; etcd: the etcd process, overlay left up), then time until the survivors name a new leader and
  until the first write acknowledged through them; the node is started again before the next kill;
- RSS of each agent voter once the store holds 10 MiB (keys and values, as the store's 64 MiB limit counts them,
  read from `x0_kv_store_bytes`): what the load phases left (about 22,000 keys of 100-byte values) topped up with
  values of 64 KiB; etcd then gets the same values, and its RSS is shown beside. Read 1 s after the last write
  and again 4 s later, at rest (the agents compact their Raft logs once writes pause): the target's figure.
Targets (issue 9): failover median <= 1.5 s and never worse than etcd's median; >= 1000 writes/s with 32 clients;
p99 < 50 ms at 100 writes/s; agent RSS < 80 MB with a 10 MiB store. Ratios are agents / etcd.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

WARMUP_S = 1.0  # paced(): sent, not counted
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.localmesh import LocalMesh, MeshOptions, netns  # noqa: E402

TOKEN = "x0-kv-bench"
ETCD_CLIENT = 2379
ETCD_PEER = 2380
POLL_S = 0.02
VALUE = b"v" * 100
STORE_MIB = 10.0  # the memory target's store
BIG = 64 * 1024  # the values that fill it
REST_S = 4.0


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))]


def b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


class System:
    name = "?"

    def __init__(self, mesh: LocalMesh) -> None:
        self.mesh = mesh
        self.down: set[str] = set()

    def up_nodes(self) -> list[str]:
        return [n for n in self.mesh.node_ids if n not in self.down]

    async def put(self, c: httpx.AsyncClient, node: str, key: str, value: bytes) -> bool:
        raise NotImplementedError

    async def get(self, c: httpx.AsyncClient, node: str, key: str) -> bool:
        raise NotImplementedError

    async def leader(self, c: httpx.AsyncClient, nodes: list[str]) -> str | None:
        raise NotImplementedError

    def kill(self, node: str) -> None:
        raise NotImplementedError

    def restart(self, node: str) -> None:
        raise NotImplementedError

    def pid(self, node: str) -> int | None:
        raise NotImplementedError

    async def store_bytes(self, c: httpx.AsyncClient) -> int | None:
        """Keys and values held, where the system says so."""
        return None


class Agents(System):
    name = "agents"

    async def store_bytes(self, c: httpx.AsyncClient) -> int | None:
        sizes = []
        for node in self.up_nodes():
            r = await c.get(f"{self.url(node)}/metrics")
            r.raise_for_status()
            families = text_string_to_metric_families(r.text)
            family = next((f for f in families if f.name == "x0_kv_store_bytes"), None)
            if family is None or not family.samples:
                raise SystemExit(f"kv_bench: {node} exports no x0_kv_store_bytes")
            sizes.append(int(family.samples[0].value))
        return max(sizes, default=None)

    def url(self, node: str) -> str:
        return self.mesh.node(node).agent_url

    async def put(self, c: httpx.AsyncClient, node: str, key: str, value: bytes) -> bool:
        r = await c.put(f"{self.url(node)}/kv/{key}", content=value, headers={"Authorization": f"Bearer {TOKEN}"})
        return r.status_code == 200

    async def get(self, c: httpx.AsyncClient, node: str, key: str) -> bool:
        r = await c.get(f"{self.url(node)}/kv/{key}")
        return r.status_code == 200

    async def leader(self, c: httpx.AsyncClient, nodes: list[str]) -> str | None:
        names = set()
        for n in nodes:
            try:
                names.add((await c.get(f"{self.url(n)}/cluster", timeout=0.5)).json()["leader_id"])
            except (httpx.HTTPError, ValueError, KeyError):
                return None
        return names.pop() if len(names) == 1 and None not in names else None

    def kill(self, node: str) -> None:
        pid = self.mesh.agent_pid(node)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        self.down.add(node)

    def restart(self, node: str) -> None:
        self.mesh.stop_node(node)  # reaps what the kill left (the daemon dies with its agent)
        self.mesh.start_node(node)
        self.down.discard(node)
        self.after_restart(node)

    def after_restart(self, node: str) -> None:
        """stop_node kills every process in the namespace, the idle etcd member too: the bench revives it."""

    def pid(self, node: str) -> int | None:
        return self.mesh.agent_pid(node)


class Etcd(System):
    name = "etcd"

    def __init__(self, mesh: LocalMesh, binary: str) -> None:
        super().__init__(mesh)
        self.binary = binary
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ids: dict[str, str] = {}  # member id (decimal string) -> node

    def url(self, node: str) -> str:
        return f"http://{self.mesh.node(node).underlay_ip}:{ETCD_CLIENT}"

    def _argv(self, node: str, state: str) -> list[str]:
        n = self.mesh.node(node)
        cluster = ",".join(f"{m.id}=http://[{m.yggdrasil_address}]:{ETCD_PEER}" for m in self.mesh.nodes)
        return netns.exec_argv(
            n.netns or "",
            [
                self.binary,
                "--name", node,
                "--data-dir", str(n.dir / "etcd"),
                "--listen-peer-urls", f"http://[{n.yggdrasil_address}]:{ETCD_PEER}",
                "--initial-advertise-peer-urls", f"http://[{n.yggdrasil_address}]:{ETCD_PEER}",
                "--listen-client-urls", f"http://{n.underlay_ip}:{ETCD_CLIENT}",
                "--advertise-client-urls", f"http://{n.underlay_ip}:{ETCD_CLIENT}",
                "--initial-cluster", cluster,
                "--initial-cluster-token", f"x0-kv-bench-{self.mesh.id}",
                "--initial-cluster-state", state,
                "--log-level", "warn",
            ],
        )  # fmt: skip

    def start(self, node: str, state: str = "new") -> None:
        log = open(self.mesh.node(node).dir / "etcd.log", "ab")  # the process keeps it
        self.procs[node] = subprocess.Popen(
            self._argv(node, state), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

    def revive(self, node: str) -> None:
        p = self.procs.get(node)
        if p is not None and p.poll() is not None:
            self.start(node, "existing")

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
        for p in self.procs.values():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass

    async def put(self, c: httpx.AsyncClient, node: str, key: str, value: bytes) -> bool:
        r = await c.post(f"{self.url(node)}/v3/kv/put", json={"key": b64(key), "value": b64(value)})
        return r.status_code == 200 and "error" not in r.json()

    async def get(self, c: httpx.AsyncClient, node: str, key: str) -> bool:
        r = await c.post(f"{self.url(node)}/v3/kv/range", json={"key": b64(key)})
        return r.status_code == 200 and "error" not in r.json()

    async def leader(self, c: httpx.AsyncClient, nodes: list[str]) -> str | None:
        names = set()
        for n in nodes:
            try:
                body = (await c.post(f"{self.url(n)}/v3/maintenance/status", json={}, timeout=0.5)).json()
                self.ids[str(body["header"]["member_id"])] = n
                names.add(str(body.get("leader", "0")))
            except (httpx.HTTPError, ValueError, KeyError):
                return None
        if len(names) != 1:
            return None
        lid = names.pop()
        return self.ids.get(lid) if lid != "0" else None

    def kill(self, node: str) -> None:
        self.procs[node].kill()
        self.procs[node].wait(5)
        self.down.add(node)

    def restart(self, node: str) -> None:
        self.start(node, "existing")
        self.down.discard(node)

    def pid(self, node: str) -> int | None:
        p = self.procs.get(node)
        return p.pid if p is not None and p.poll() is None else None


@dataclass
class Figures:
    system: str
    w1_per_s: float = 0.0
    w1_p50_ms: float = 0.0
    w1_p99_ms: float = 0.0
    w32_per_s: float = 0.0
    w32_p50_ms: float = 0.0
    w32_p99_ms: float = 0.0
    paced_rate: float = 0.0
    paced_p50_ms: float = 0.0
    paced_p99_ms: float = 0.0
    paced_failed: int = 0
    r32_per_s: float = 0.0
    # wrk (C load generator, 2 threads, 32 connections) at the leader: the Python client is not the limit here.
    wrk32_per_s: float = 0.0
    wrk32_p99_ms: float = 0.0
    failover_leader_s: list[float] = field(default_factory=list)
    failover_write_s: list[float] = field(default_factory=list)
    rss_writing_mb: dict[str, float] = field(default_factory=dict)  # 1 s after the last write
    rss_mb: dict[str, float] = field(default_factory=dict)  # REST_S later: the target's figure
    store_bytes: int | None = None  # at the RSS reading


async def closed_loop(sys_: System, clients: int, seconds: float, op: str) -> tuple[float, list[float]]:
    lat: list[float] = []
    ok = 0
    stop = time.monotonic() + seconds
    nodes = sys_.up_nodes()

    async def worker(i: int) -> None:
        nonlocal ok
        async with httpx.AsyncClient(trust_env=False, timeout=5.0) as c:
            n = 0
            while time.monotonic() < stop:
                n += 1
                node = nodes[(i + n) % len(nodes)]
                key = f"b/{op}/{i}/{n % 500}"
                t = time.perf_counter()
                try:
                    good = await (sys_.put(c, node, key, VALUE) if op == "w" else sys_.get(c, node, f"b/w/{i}/1"))
                except httpx.HTTPError:
                    good = False
                if good:
                    ok += 1
                    lat.append(time.perf_counter() - t)

    started = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    return ok / (time.monotonic() - started), lat


async def paced(sys_: System, rate: float, seconds: float) -> tuple[list[float], int]:
    """Open loop at `rate`: a write every 1/rate s whatever the answers. The first WARMUP_S are sent, not counted:
    the phase before (32 clients) leaves the servers and this client closing connections and collecting garbage.
    In two windows measured right after it, the slowest writes were sent at the window's start: the four slowest
    (45-59 ms, through every node, the leader included) within 0.06 s of each other in its first second, and in a
    second run 4 of the 5 slowest 0.18-0.23 s after it began (bench/results/kv-2026-12-04d.txt)."""
    lat: list[float] = []
    failed = 0
    nodes = sys_.up_nodes()
    warmup = int(rate * WARMUP_S)
    async with httpx.AsyncClient(trust_env=False, timeout=5.0, limits=httpx.Limits(max_connections=64)) as c:

        async def one(i: int) -> None:
            nonlocal failed
            t = time.perf_counter()
            try:
                good = await sys_.put(c, nodes[i % len(nodes)], f"b/p/{i % 1000}", VALUE)
            except httpx.HTTPError:
                good = False
            if i < warmup:
                return
            if good:
                lat.append(time.perf_counter() - t)
            else:
                failed += 1

        tasks = []
        start = time.monotonic()
        for i in range(warmup + int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return lat, failed


async def wait_leader(sys_: System, c: httpx.AsyncClient, within_s: float = 60.0) -> str:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        leader = await sys_.leader(c, sys_.up_nodes())
        if leader is not None:
            return leader
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{sys_.name}: no leader agreed by {sys_.up_nodes()} within {within_s:g} s")


async def failover(sys_: System, kills: int) -> tuple[list[float], list[float]]:
    to_leader: list[float] = []
    to_write: list[float] = []
    async with httpx.AsyncClient(trust_env=False, timeout=1.0) as c:
        for k in range(kills):
            old = await wait_leader(sys_, c)
            survivors = [n for n in sys_.up_nodes() if n != old]
            t0 = time.monotonic()
            sys_.kill(old)
            got_leader: float | None = None
            got_write: float | None = None
            i = 0
            while (got_leader is None or got_write is None) and time.monotonic() - t0 < 30:
                if got_leader is None:
                    try:
                        lead = await sys_.leader(c, survivors)
                    except httpx.HTTPError:
                        lead = None
                    if lead is not None and lead != old:
                        got_leader = time.monotonic() - t0
                if got_write is None:
                    i += 1
                    try:
                        if await sys_.put(c, survivors[i % 2], f"b/f/{k}/{i}", VALUE):
                            got_write = time.monotonic() - t0
                    except httpx.HTTPError:
                        pass
                await asyncio.sleep(POLL_S)
            to_leader.append(got_leader if got_leader is not None else float("inf"))
            to_write.append(got_write if got_write is not None else float("inf"))
            print(f"  {sys_.name} kill {k + 1}/{kills}: {old}: new leader {to_leader[-1]:.2f} s, "
                  f"first write {to_write[-1]:.2f} s", flush=True)  # fmt: skip
            await asyncio.to_thread(sys_.restart, old)
            await wait_leader(sys_, c)
            await asyncio.sleep(1.0)  # the restarted member catches up before the next kill
    return to_leader, to_write


WRK_AGENTS = """
counter = 0
request = function()
  counter = counter + 1
  local auth = {["Authorization"] = "Bearer TOKEN"}
  return wrk.format("PUT", "/kv/b/wrk/" .. (counter % 5000), auth, string.rep("v", 100))
end
"""
WRK_ETCD = """
counter = 0
request = function()
  counter = counter + 1
  local body = '{"key": "' .. KEYS[(counter % 5000) + 1] .. '", "value": "VALUE"}'
  return wrk.format("POST", "/v3/kv/put", {["Content-Type"] = "application/json"}, body)
end
"""


def wrk_script(system: str) -> str:
    if system == "agents":
        return WRK_AGENTS.replace("TOKEN", TOKEN)
    keys = ", ".join(f'"{b64(f"b/wrk/{i}")}"' for i in range(5000))
    return f"KEYS = {{{keys}}}\n" + WRK_ETCD.replace("VALUE", b64(VALUE))


def run_wrk(system: str, url: str, seconds: float) -> tuple[float, float]:
    """Writes/s and p99 (ms) from wrk -t2 -c32 against `url` (each system through its own HTTP API)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(wrk_script(system))
        script.flush()
        cmd = ["wrk", "-t2", "-c32", f"-d{max(1, int(seconds))}s", "--latency", "-s", script.name, url]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
    rate = p99 = float("nan")
    units = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    for line in out.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            rate = float(parts[1])
        elif parts[:1] == ["99%"]:
            v = parts[1]
            unit = next(u for u in ("us", "ms", "s") if v.endswith(u))
            p99 = float(v[: -len(unit)]) * units[unit]
        elif "Non-2xx" in line:
            print(f"  {system} wrk: {line.strip()}", flush=True)
    return rate, p99


async def wrk_writes(sys_: System, seconds: float) -> tuple[float, float]:
    async with httpx.AsyncClient(trust_env=False, timeout=5.0) as c:
        leader = await wait_leader(sys_, c)
    url = sys_.url(leader)  # type: ignore[attr-defined]
    return await asyncio.to_thread(run_wrk, sys_.name, url, seconds)


def rss_mb(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def measure(sys_: System, args: argparse.Namespace) -> Figures:
    f = Figures(sys_.name)
    async with httpx.AsyncClient(trust_env=False, timeout=5.0) as c:
        await wait_leader(sys_, c)
    print(f"{sys_.name}: writes, 1 client", flush=True)
    f.w1_per_s, lat = await closed_loop(sys_, 1, args.seconds, "w")
    f.w1_p50_ms, f.w1_p99_ms = pct(lat, 50) * 1e3, pct(lat, 99) * 1e3
    print(f"{sys_.name}: writes, 32 clients", flush=True)
    f.w32_per_s, lat = await closed_loop(sys_, 32, args.seconds, "w")
    f.w32_p50_ms, f.w32_p99_ms = pct(lat, 50) * 1e3, pct(lat, 99) * 1e3
    print(f"{sys_.name}: paced {args.rate:g} writes/s", flush=True)
    lat, f.paced_failed = await paced(sys_, args.rate, args.seconds)
    f.paced_rate = args.rate
    f.paced_p50_ms, f.paced_p99_ms = pct(lat, 50) * 1e3, pct(lat, 99) * 1e3
    print(f"{sys_.name}: linearizable reads, 32 clients", flush=True)
    f.r32_per_s, _ = await closed_loop(sys_, 32, args.seconds, "r")
    if shutil.which("wrk"):
        print(f"{sys_.name}: wrk, 32 connections at the leader", flush=True)
        f.wrk32_per_s, f.wrk32_p99_ms = await wrk_writes(sys_, args.seconds)
    print(f"{sys_.name}: {args.store_mib:g} MiB store", flush=True)
    async with httpx.AsyncClient(trust_env=False, timeout=10.0) as c:
        held = await sys_.store_bytes(c)
        if held is not None:  # the agents say how much the load phases left; etcd then gets the same values
            target = int(args.store_mib * 2**20)
            args.big_values = -(-max(0, target - held) // (BIG + len("b/mem/000")))
        big = b"m" * BIG
        for i in range(args.big_values):
            assert await sys_.put(c, sys_.up_nodes()[i % 3], f"b/mem/{i:03d}", big), "store write failed"
        await asyncio.sleep(1.0)
        f.store_bytes = await sys_.store_bytes(c)
    f.rss_writing_mb = {n: round(rss_mb(sys_.pid(n)), 1) for n in sys_.up_nodes()}
    # At rest: the agents compact their Raft logs 2 s after writes pause (agent.consensus.engine).
    await asyncio.sleep(REST_S)
    f.rss_mb = {n: round(rss_mb(sys_.pid(n)), 1) for n in sys_.up_nodes()}
    if args.memory_only:
        return f
    print(f"{sys_.name}: failover x{args.kills}", flush=True)
    f.failover_leader_s, f.failover_write_s = await failover(sys_, args.kills)
    return f


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def top(xs: list[float]) -> float:
    return max(xs) if xs else float("nan")


def report(a: Figures, e: Figures) -> str:
    store = f"{a.store_bytes / 2**20:.1f} MiB" if a.store_bytes is not None else "?"
    ten = a.store_bytes is not None and 10 * 2**20 <= a.store_bytes < 11 * 2**20  # the target's store

    def row(what: str, x: float, y: float, unit: str, better: str) -> str:
        ratio = x / y if y else float("nan")
        return f"| {what} | {x:,.1f} {unit} | {y:,.1f} {unit} | {ratio:.2f} ({better}) |"

    lines = [
        "| figure | agents (pysyncobj) | etcd 3.4 | agents / etcd |",
        "|---|---|---|---|",
        row("acknowledged writes/s, 1 client", a.w1_per_s, e.w1_per_s, "/s", "higher is better"),
        row("write p50, 1 client", a.w1_p50_ms, e.w1_p50_ms, "ms", "lower is better"),
        row("write p99, 1 client", a.w1_p99_ms, e.w1_p99_ms, "ms", "lower is better"),
        row("acknowledged writes/s, 32 clients", a.w32_per_s, e.w32_per_s, "/s", "higher is better"),
        row("write p50, 32 clients", a.w32_p50_ms, e.w32_p50_ms, "ms", "lower is better"),
        row("write p99, 32 clients", a.w32_p99_ms, e.w32_p99_ms, "ms", "lower is better"),
        row(f"write p50 at {a.paced_rate:g}/s", a.paced_p50_ms, e.paced_p50_ms, "ms", "lower is better"),
        row(f"write p99 at {a.paced_rate:g}/s", a.paced_p99_ms, e.paced_p99_ms, "ms", "lower is better"),
        row("linearizable reads/s, 32 clients", a.r32_per_s, e.r32_per_s, "/s", "higher is better"),
        row("writes/s, wrk 32 connections at the leader", a.wrk32_per_s, e.wrk32_per_s, "/s", "higher is better"),
        row("write p99, wrk 32 connections", a.wrk32_p99_ms, e.wrk32_p99_ms, "ms", "lower is better"),
        row("failover to a new leader, median", med(a.failover_leader_s), med(e.failover_leader_s), "s", "lower"),
        row("failover to a new leader, max", top(a.failover_leader_s), top(e.failover_leader_s), "s", "lower"),
        row("failover to first write, median", med(a.failover_write_s), med(e.failover_write_s), "s", "lower"),
        row("failover to first write, max", top(a.failover_write_s), top(e.failover_write_s), "s", "lower"),
        row(f"RSS per voter, {store} store, 1 s after the writes", top([*a.rss_writing_mb.values()]),
            top([*e.rss_writing_mb.values()]), "MB", "lower"),
        row(f"RSS per voter, {store} store, at rest", top([*a.rss_mb.values()]), top([*e.rss_mb.values()]), "MB",
            "lower"),
    ]  # fmt: skip
    targets = [
        ("failover median <= 1.5 s", med(a.failover_leader_s) <= 1.5),
        ("failover median <= etcd's", med(a.failover_leader_s) <= med(e.failover_leader_s)),
        (">= 1000 writes/s with 32 clients", max(a.w32_per_s, a.wrk32_per_s) >= 1000),
        (f"p99 write < 50 ms at {a.paced_rate:g}/s", a.paced_p99_ms < 50),
        (
            "agent RSS < 80 MB with a 10 MiB store at rest",
            max(a.rss_mb.values(), default=1e9) < 80 if ten else None,
        ),
    ]
    lines.append("")
    verdict = {True: "met", False: "MISSED", None: f"not judged (the store held {store})"}
    lines += [f"- target {name}: {verdict[ok]}" for name, ok in targets]
    if a.store_bytes is not None:
        lines.append(f"- store at the RSS reading: {a.store_bytes / 2**20:.2f} MiB of keys and values")
    if a.paced_failed or e.paced_failed:
        lines.append(f"- paced writes not acknowledged: agents {a.paced_failed}, etcd {e.paced_failed}")
    return "\n".join(lines)


async def bench(args: argparse.Namespace) -> tuple[Figures, Figures]:
    run_dir = Path(args.run_dir) if args.run_dir else Path(tempfile.mkdtemp(prefix="x0-kv-bench-"))
    opts = MeshOptions(
        nodes=3, mode="netns", run_dir=run_dir, api_token=TOKEN, agent_env={"X0_MAPEK_ENABLED": "false"}
    )
    if args.memory_only:
        with LocalMesh(opts) as mesh:
            agents = Agents(mesh)
            async with httpx.AsyncClient(trust_env=False, timeout=5.0) as c:
                await wait_leader(agents, c)
            idle = {n: round(rss_mb(agents.pid(n)), 1) for n in agents.up_nodes()}
            a = await measure(agents, args)
        held = f"{a.store_bytes / 2**20:.2f} MiB" if a.store_bytes is not None else "?"
        print(
            f"agents RSS per voter, MB: idle {idle}; after the load phases, the store at {held}: "
            f"1 s after the writes {a.rss_writing_mb}, {1 + REST_S:g} s after (at rest) {a.rss_mb}"
        )
        return a, Figures("etcd")
    binary = shutil.which("etcd") or "/usr/bin/etcd"
    if not os.access(binary, os.X_OK):
        raise SystemExit("kv_bench: etcd not found (apt-get install etcd-server)")
    with LocalMesh(opts) as mesh:
        etcd = Etcd(mesh, binary)
        try:
            for n in mesh.node_ids:
                etcd.start(n)
            agents = Agents(mesh)
            agents.after_restart = etcd.revive  # type: ignore[method-assign]
            a = await measure(agents, args)
            e = await measure(etcd, args)
        finally:
            etcd.stop_all()
    return a, e


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--seconds", type=float, default=8.0, help="duration of each throughput/latency phase (default 8)"
    )
    p.add_argument(
        "--rate", type=float, default=100.0, help="paced write rate for the latency target (default 100/s)"
    )
    p.add_argument("--kills", type=int, default=10, help="leader kills per system (default 10)")
    p.add_argument("--run-dir", default=None, help="where the mesh keeps its files (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON to this file")
    p.add_argument(
        "--memory-only",
        action="store_true",
        help="the agents alone, up to the store of --store-mib: their RSS idle and then (no etcd, no failover)",
    )
    p.add_argument(
        "--store-mib",
        type=float,
        default=STORE_MIB,
        help=f"store size for the RSS reading, MiB of keys and values (default {STORE_MIB:g}: the target's)",
    )
    args = p.parse_args()
    if not 0 < args.store_mib <= 60:
        p.error("--store-mib must be more than 0 and at most 60 (the store's limit is 64 MiB)")
    args.big_values = int(args.store_mib * 2**20) // BIG  # until the agents' own figure replaces it
    if os.geteuid() != 0:
        raise SystemExit("kv_bench: needs root (network namespaces)")
    a, e = asyncio.run(bench(args))
    if args.memory_only:  # the load phases' figures too, for a quick A/B of the agents alone
        print(
            f"agents: writes/s 1 client {a.w1_per_s:.1f} (p50 {a.w1_p50_ms:.1f} ms), 32 clients {a.w32_per_s:.1f} "
            f"(p99 {a.w32_p99_ms:.1f} ms); at {a.paced_rate:g}/s p50 {a.paced_p50_ms:.1f} / p99 "
            f"{a.paced_p99_ms:.1f} ms; reads/s {a.r32_per_s:.1f}; wrk {a.wrk32_per_s:.1f}/s "
            f"(p99 {a.wrk32_p99_ms:.1f} ms)"
        )
    if args.memory_only and args.store_mib != STORE_MIB:
        return  # the target is for a 10 MiB store
    if args.memory_only:
        top_rss = max(a.rss_mb.values(), default=float("nan"))
        print(
            f"agent RSS < 80 MB with a 10 MiB store at rest: {'met' if top_rss < 80 else 'missed'} ({top_rss} MB)"
        )
        return
    print()
    print(report(a, e))
    if args.json:
        args.json.write_text(json.dumps({"agents": a.__dict__, "etcd": e.__dict__}, indent=2))


if __name__ == "__main__":
    main()
