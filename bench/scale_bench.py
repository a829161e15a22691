"""Heal at scale: formation, idle cost and drills on 3-, 10-, 20- (30-, given room) node netns meshes, in one run.

    python bench/scale_bench.py                             # N = 3, 10, 20; 3 runs of each drill (about 40 min)
    python bench/scale_bench.py --sizes 3,20 --runs 1 --kinds blackhole
    python bench/scale_bench.py --sizes 20 --topology ring --cases scale       # the issue's reproduction
    python bench/scale_bench.py --cases short,repeat                           # 3-node short/repeated faults

Cases (`--cases`, comma-separated; default all):
- `scale`: for each N in --sizes, a real netns mesh (agent.localmesh, default topology unless --topology):
  - formation: `LocalMesh.start()` begins -> every planned link is up at both ends and every agent's MAPE-K sees
    every member reachable (`/mapek` members_reachable == members_total);
  - idle: CPU of every agent and every daemon over --idle-s (utime+stime from /proc, in % of one core), and the
    MAPE-K monitor phase per tick (x0_mapek_tick_duration_seconds{phase="monitor"} sum/count over the window);
  - drills: `x0dash --inventory … drill KIND --target T --json` (the operator's own path, headless) for each of
    --kinds, --runs times, T the middle node (node-j at 20): first detection (earliest observer), full awareness
    (last observer to detect), worst repair (latest observer, after the fault ends), PASS/FAIL.
- `short`: a 3-node mesh, blackhole faults of each of --short-faults seconds, --runs times each.
- `repeat`: a 3-node mesh, --repeat drills (partition) started 3 s after the previous one ended.

Baseline: the smallest N of the same run. Per-node figures (CPU per agent and per daemon, monitor ms/tick) and
times are printed beside it with the ratio N/baseline: a ratio near 1 is a cost that stays flat as the mesh grows.
Targets of issue 10 (at 20 nodes) are printed with the figures. Needs root, yggdrasil and nft. Run it under
`x0-bench` on a shared machine: the figures mean nothing while other tests load the CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.localmesh import LocalMesh, MeshOptions  # noqa: E402
from agent.localmesh.naming import MAX_NODES  # noqa: E402
from agent.yggdrasil.client import AdminClient  # noqa: E402
from agent.yggdrasil.errors import AdminError  # noqa: E402

KINDS = ("node-loss", "blackhole", "partition")
CASES = ("scale", "short", "repeat")
TOKEN = "x0-scale-bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Issue 10's targets at 20 nodes.
TARGETS = {
    "formation_s": 10.0,
    "agents_cpu": 40.0,
    "daemons_cpu": 20.0,
    "first_detect_s": 1.0,
    "full_awareness_s": 2.0,
    "worst_repair_s": 2.0,
}


@dataclass
class Drill:
    kind: str
    target: str
    duration_s: int
    exit_code: int
    passed: bool
    first_detect_s: float | None = None
    full_awareness_s: float | None = None  # None: some observer never detected
    worst_repair_s: float | None = None  # None: some observer never repaired
    no_path: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    guards: list[str] = field(default_factory=list)
    wall_s: float = 0.0


@dataclass
class Size:
    nodes: int
    topology: str
    links: int = 0
    formation_links_s: float | None = None
    formation_s: float | None = None  # links up and every member reachable for every agent
    agents_cpu: float | None = None  # % of one core, all agents together
    daemons_cpu: float | None = None
    daemons_alone_cpu: float | None = None  # --daemons-alone: the same daemons, agents stopped
    monitor_ms: float | None = None  # mean over agents of the mean monitor phase per tick
    ticks_per_s: float | None = None
    drills: list[Drill] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- measuring


def cpu_ticks(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)


_SAMPLE = re.compile(r'^x0_mapek_tick_duration_seconds_(sum|count)\{phase="monitor"\} (\S+)$', re.M)


def monitor_sample(text: str) -> tuple[float, float] | None:
    got = {m.group(1): float(m.group(2)) for m in _SAMPLE.finditer(text)}
    if "sum" not in got or "count" not in got:
        return None
    return got["sum"], got["count"]


class Bench:
    def __init__(self, args: argparse.Namespace, run_dir: Path) -> None:
        self.args = args
        self.run_dir = run_dir
        self.http = httpx.AsyncClient(trust_env=False, timeout=3.0)

    async def aclose(self) -> None:
        await self.http.aclose()

    def mesh(self, nodes: int, topology: str | None) -> LocalMesh:
        opts: dict = dict(
            nodes=nodes,
            mode="netns",
            run_dir=self.run_dir,
            api_token=TOKEN,
            log_level="warning",
            start_timeout=180.0,
        )
        if topology:
            opts["topology"] = topology
        return LocalMesh(MeshOptions(**opts))

    async def links_up(self, mesh: LocalMesh, admin: dict[str, AdminClient], keys: dict[str, str]) -> bool:
        by_key = {k: i for i, k in keys.items()}

        async def one(node_id: str) -> set[str]:
            try:
                peers = await admin[node_id].get_peers()
            except AdminError:
                return set()
            return {by_key[p.key] for p in peers if p.up and p.key in by_key}

        got = dict(zip(mesh.node_ids, await asyncio.gather(*(one(i) for i in mesh.node_ids)), strict=True))
        return all(b in got[a] and a in got[b] for a, b in mesh.links)

    async def all_aware(self, mesh: LocalMesh) -> bool:
        async def one(url: str) -> bool:
            try:
                st = (await self.http.get(f"{url}/mapek")).json()
            except (httpx.HTTPError, ValueError):
                return False
            return st.get("members_reachable") == st.get("members_total") and not st.get("active_incidents")

        return all(await asyncio.gather(*(one(n.agent_url) for n in mesh.nodes)))

    async def formation(self, mesh: LocalMesh, size: Size) -> None:
        t0 = time.monotonic()
        await asyncio.to_thread(mesh.start)
        inv = mesh.inventory
        keys = {n["id"]: n["public_key"] for n in inv["nodes"]}
        admin = {n.id: AdminClient(n.admin_endpoint, timeout=1.0) for n in mesh.nodes}
        size.links = len(mesh.links)
        deadline = t0 + 180.0
        while time.monotonic() < deadline:
            if size.formation_links_s is None and await self.links_up(mesh, admin, keys):
                size.formation_links_s = time.monotonic() - t0
            if size.formation_links_s is not None and await self.all_aware(mesh):
                size.formation_s = time.monotonic() - t0
                return
            await asyncio.sleep(0.2)

    async def metrics_monitor(self, mesh: LocalMesh) -> dict[str, tuple[float, float]]:
        async def one(n) -> tuple[str, tuple[float, float] | None]:  # type: ignore[no-untyped-def]
            try:
                return n.id, monitor_sample((await self.http.get(n.metrics_url)).text)
            except httpx.HTTPError:
                return n.id, None

        got = await asyncio.gather(*(one(n) for n in mesh.nodes))
        return {k: v for k, v in got if v is not None}

    async def idle(self, mesh: LocalMesh, size: Size) -> None:
        await asyncio.sleep(self.args.settle_s)
        ids = mesh.node_ids
        agent_pids = {i: mesh.agent_pid(i) for i in ids}
        daemon_pids = {i: mesh.daemon_pid(i) for i in ids}
        m0 = await self.metrics_monitor(mesh)
        a0 = {i: cpu_ticks(p) for i, p in agent_pids.items()}
        d0 = {i: cpu_ticks(p) for i, p in daemon_pids.items()}
        t0 = time.monotonic()
        await asyncio.sleep(self.args.idle_s)
        a1 = {i: cpu_ticks(p) for i, p in agent_pids.items()}
        d1 = {i: cpu_ticks(p) for i, p in daemon_pids.items()}
        elapsed = time.monotonic() - t0
        m1 = await self.metrics_monitor(mesh)

        def pct(before: dict[str, int | None], after: dict[str, int | None]) -> float:
            ticks = sum((after[i] or 0) - (before[i] or 0) for i in ids if before[i] is not None)
            return 100.0 * ticks / CLK_TCK / elapsed

        size.agents_cpu = pct(a0, a1)
        size.daemons_cpu = pct(d0, d1)
        if self.args.daemons_alone:
            # The same daemons with their agents stopped (SIGSTOP): what Yggdrasil costs by itself, apart from the
            # overlay traffic the agents send through it (SWIM, Raft) and their admin calls.
            live = [p for p in agent_pids.values() if p is not None]
            for p in live:
                os.kill(p, signal.SIGSTOP)
            try:
                await asyncio.sleep(2.0)
                d0 = {i: cpu_ticks(p) for i, p in daemon_pids.items()}
                t0 = time.monotonic()
                await asyncio.sleep(self.args.idle_s)
                d1 = {i: cpu_ticks(p) for i, p in daemon_pids.items()}
                elapsed = time.monotonic() - t0
                size.daemons_alone_cpu = pct(d0, d1)
            finally:
                for p in live:
                    os.kill(p, signal.SIGCONT)
            await asyncio.sleep(self.args.settle_s)
        per_tick = []
        rates = []
        for i in ids:
            if i in m0 and i in m1 and m1[i][1] > m0[i][1]:
                per_tick.append(1000.0 * (m1[i][0] - m0[i][0]) / (m1[i][1] - m0[i][1]))
                rates.append((m1[i][1] - m0[i][1]) / elapsed)
        size.monitor_ms = statistics.mean(per_tick) if per_tick else None
        size.ticks_per_s = statistics.mean(rates) if rates else None

    async def drill(self, mesh: LocalMesh, kind: str, target: str, duration_s: int) -> Drill:
        reports = self.run_dir / "reports"
        argv = [
            sys.executable,
            "-m",
            "dashboard.cli",
            "--inventory",
            str(mesh.inventory_path),
            "--reports-dir",
            str(reports),
            "drill",
            kind,
            "--target",
            target,
            "--duration",
            str(duration_s),
            "--json",
            "--steady-timeout",
            str(self.args.steady_timeout),
        ]
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()},
        )
        out, err = await proc.communicate()
        result = Drill(
            kind=kind,
            target=target,
            duration_s=duration_s,
            exit_code=proc.returncode or 0,
            passed=proc.returncode == 0,
            wall_s=time.monotonic() - started,
        )
        if proc.returncode == 2 or not out.strip():
            tail = err.decode(errors="replace").strip().splitlines()[-3:]
            result.failures = ["refused or no report: " + " | ".join(tail)]
            return result
        report = json.loads(out)
        fill_from_report(result, report)
        return result

    async def scale_case(self, nodes: int) -> Size:
        topology = self.args.topology
        mesh = self.mesh(nodes, topology)
        size = Size(nodes=nodes, topology=topology or "default")
        try:
            await self.formation(mesh, size)
            size.topology = str(mesh.options.topology) if topology else f"default ({mesh.options.topology})"
            print(
                f"[N={nodes}] formation: links {_f(size.formation_links_s)} s, aware {_f(size.formation_s)} s "
                f"({size.links} links)",
                flush=True,
            )
            await self.idle(mesh, size)
            print(
                f"[N={nodes}] idle: agents {_f(size.agents_cpu)} %, daemons {_f(size.daemons_cpu)} %, "
                f"monitor {_f(size.monitor_ms)} ms/tick"
                + (
                    f"; daemons with the agents stopped {_f(size.daemons_alone_cpu)} %"
                    if size.daemons_alone_cpu is not None
                    else ""
                ),
                flush=True,
            )
            target = mesh.node_ids[max(0, nodes // 2 - 1)]
            for kind in self.args.kinds:
                for i in range(self.args.runs):
                    d = await self.drill(mesh, kind, target, self.args.fault_s)
                    size.drills.append(d)
                    print(f"[N={nodes}] {kind} #{i + 1}: {describe(d)}", flush=True)
        finally:
            await asyncio.to_thread(mesh.stop)
        return size

    async def short_case(self) -> list[Drill]:
        out: list[Drill] = []
        mesh = self.mesh(3, self.args.topology)
        try:
            await self.formation(mesh, Size(nodes=3, topology=""))
            for seconds in self.args.short_faults:
                for i in range(self.args.runs):
                    d = await self.drill(mesh, "blackhole", "node-c", seconds)
                    out.append(d)
                    print(f"[short] blackhole {seconds} s #{i + 1}: {describe(d)}", flush=True)
        finally:
            await asyncio.to_thread(mesh.stop)
        return out

    async def repeat_case(self) -> list[Drill]:
        out: list[Drill] = []
        mesh = self.mesh(3, self.args.topology)
        try:
            await self.formation(mesh, Size(nodes=3, topology=""))
            for i in range(self.args.repeat):
                if i:
                    await asyncio.sleep(3.0)
                d = await self.drill(mesh, "partition", "node-c", 5)
                out.append(d)
                print(f"[repeat] partition #{i + 1}: {describe(d)}", flush=True)
        finally:
            await asyncio.to_thread(mesh.stop)
        return out


def fill_from_report(result: Drill, report: dict) -> None:
    """Mesh-wide figures from one x0dash JSON report (its own fields when it has them, else its observer rows)."""
    observers = report.get("observers", [])
    no_path = {n["observer"] for n in report.get("no_path", []) or []}
    result.no_path = sorted(no_path)
    seen = [o for o in observers if o["observer"] not in no_path]
    detects = [o["detect_s"] for o in seen]
    repairs = [o["repair_s"] for o in seen]
    found = [d for d in detects if d is not None]
    result.first_detect_s = report.get("first_detect_s", min(found) if found else None)
    result.full_awareness_s = report.get(
        "full_awareness_s", max(detects) if detects and None not in detects else None
    )
    result.worst_repair_s = max(repairs) if repairs and None not in repairs else None
    result.failures = list(report.get("failures", []))
    result.guards = [
        f"{g['observer']}: {g['action']} {g['target']} held by {g['guard']}" for g in report.get("guards", [])
    ]


# --------------------------------------------------------------------------------------------- reporting


def _f(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def describe(d: Drill) -> str:
    verdict = "PASS" if d.passed else ("REFUSED" if d.exit_code == 2 else "FAIL")
    text = (
        f"{verdict} first {_f(d.first_detect_s)} s, aware {_f(d.full_awareness_s)} s, "
        f"worst repair {_f(d.worst_repair_s)} s ({d.wall_s:.0f} s)"
    )
    if d.no_path:
        text += f"; no path: {', '.join(d.no_path)}"
    if d.guards:
        text += f"; guards: {'; '.join(d.guards)}"
    if not d.passed and d.failures:
        text += "; " + "; ".join(d.failures[:4])
    return text


def worst(values: list[float | None]) -> float | None:
    """The largest value; None (never) wins."""
    if not values or any(v is None for v in values):
        return None
    return max(v for v in values if v is not None)


def drill_stats(drills: list[Drill]) -> dict[str, float | None]:
    firsts = [d.first_detect_s for d in drills]
    return {
        "pass": sum(d.passed for d in drills) / len(drills) * 100 if drills else None,
        "first_median": statistics.median([v for v in firsts if v is not None]) if any(firsts) else None,
        "first_max": worst(firsts),
        "aware_max": worst([d.full_awareness_s for d in drills]),
        "repair_max": worst([d.worst_repair_s for d in drills]),
    }


def ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or base == 0:
        return "-"
    return f"{value / base:.2f}x"


def table(sizes: list[Size], kinds: list[str]) -> str:
    if not sizes:
        return ""
    base = sizes[0]
    lines = [
        f"baseline: N={base.nodes} of the same run; ratio = figure / baseline figure "
        "(per-node figures: near 1.00x is flat in N)",
        "",
        f"{'N':>3} {'topology':<18} {'links':>5} {'formation':>10} {'agents %':>9} {'per agent':>10} "
        f"{'ratio':>6} {'daemons %':>10} {'per daemon':>11} {'ratio':>6} {'monitor ms':>11} {'ratio':>6}",
    ]
    for s in sizes:
        pa = s.agents_cpu / s.nodes if s.agents_cpu is not None else None
        pd = s.daemons_cpu / s.nodes if s.daemons_cpu is not None else None
        ba = base.agents_cpu / base.nodes if base.agents_cpu is not None else None
        bd = base.daemons_cpu / base.nodes if base.daemons_cpu is not None else None
        lines.append(
            f"{s.nodes:>3} {s.topology:<18} {s.links:>5} {_f(s.formation_s):>9}s {_f(s.agents_cpu, 1):>9} "
            f"{_f(pa):>10} {ratio(pa, ba):>6} {_f(s.daemons_cpu, 1):>10} {_f(pd):>11} {ratio(pd, bd):>6} "
            f"{_f(s.monitor_ms):>11} {ratio(s.monitor_ms, base.monitor_ms):>6}"
        )
    lines.append("")
    lines.append(
        f"{'N':>3} {'drill':<10} {'runs':>4} {'PASS %':>7} {'first med':>10} {'first max':>10} {'ratio':>6} "
        f"{'aware max':>10} {'ratio':>6} {'repair max':>11} {'ratio':>6}"
    )
    for kind in kinds:
        b = drill_stats([d for d in base.drills if d.kind == kind])
        for s in sizes:
            ds = [d for d in s.drills if d.kind == kind]
            if not ds:
                continue
            st = drill_stats(ds)
            lines.append(
                f"{s.nodes:>3} {kind:<10} {len(ds):>4} {_f(st['pass'], 0):>7} {_f(st['first_median']):>10} "
                f"{_f(st['first_max']):>10} {ratio(st['first_max'], b['first_max']):>6} "
                f"{_f(st['aware_max']):>10} {ratio(st['aware_max'], b['aware_max']):>6} "
                f"{_f(st['repair_max']):>11} {ratio(st['repair_max'], b['repair_max']):>6}"
            )
    lines.append("('-' in a max column: some observer never detected / never repaired within the window)")
    t = TARGETS
    lines.append(
        f"targets at 20 nodes: formation <= {t['formation_s']:g} s, agents <= {t['agents_cpu']:g} % and daemons "
        f"<= {t['daemons_cpu']:g} % of one core in all, first detection <= {t['first_detect_s']:g} s, full "
        f"awareness <= {t['full_awareness_s']:g} s, worst repair <= {t['worst_repair_s']:g} s, 100 % PASS"
    )
    return "\n".join(lines)


def drills_table(title: str, drills: list[Drill]) -> str:
    if not drills:
        return ""
    lines = [title]
    for d in drills:
        lines.append(f"  {d.kind} {d.duration_s:>2} s on {d.target}: {describe(d)}")
    st = drill_stats(drills)
    lines.append(
        f"  PASS {sum(d.passed for d in drills)}/{len(drills)}, first detection max {_f(st['first_max'])} s, "
        f"worst repair max {_f(st['repair_max'])} s (SLO 2 s)"
    )
    return "\n".join(lines)


async def bench(args: argparse.Namespace) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix="x0-scale-bench-", dir=args.run_dir))
    b = Bench(args, run_dir)
    out: dict = {"sizes": [], "short": [], "repeat": []}
    try:
        if "scale" in args.cases:
            for n in args.sizes:
                out["sizes"].append(await b.scale_case(n))
        if "short" in args.cases:
            out["short"] = await b.short_case()
        if "repeat" in args.cases:
            out["repeat"] = await b.repeat_case()
    finally:
        await b.aclose()
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            print(f"kept {run_dir}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Heal at scale: formation, idle CPU, monitor cost and drills (first detection, full "
        "awareness, worst repair) on netns meshes of several sizes, with the smallest as the baseline of the "
        "same run.",
        epilog="Needs root (network namespaces), yggdrasil and nft. Run under x0-bench on a shared machine.",
    )
    p.add_argument(
        "--sizes",
        default="3,10,20",
        help="comma-separated mesh sizes (default 3,10,20; 30 saturated the 2-core test machine, never settling)",
    )
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated cases (default {','.join(CASES)})")
    p.add_argument("--topology", default=None, help="planned topology (default: local-mesh's default for N)")
    p.add_argument("--runs", type=int, default=3, help="runs per drill kind and size (default 3)")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"drill kinds (default {','.join(KINDS)})")
    p.add_argument("--fault-s", type=int, default=10, help="drill duration in the scale case (default 10 s)")
    p.add_argument("--short-faults", default="1,5", help="short case: blackhole durations (default 1,5 s)")
    p.add_argument("--repeat", type=int, default=5, help="repeat case: drills 3 s apart (default 5)")
    p.add_argument("--idle-s", type=float, default=30.0, help="idle CPU window (default 30 s)")
    p.add_argument(
        "--daemons-alone",
        action="store_true",
        help="after the idle window, measure the daemons again for --idle-s with their agents stopped (SIGSTOP)",
    )
    p.add_argument("--settle-s", type=float, default=5.0, help="wait after formation before idle (default 5 s)")
    p.add_argument("--steady-timeout", type=float, default=90.0, help="x0dash --steady-timeout (default 90 s)")
    p.add_argument("--run-dir", default=None, help="where meshes keep their files (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the run dir (agent/daemon logs, reports)")
    p.add_argument("--json", type=Path, default=None, help="also write every figure as JSON to this file")
    args = p.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    args.short_faults = [int(s) for s in args.short_faults.split(",") if s.strip()]
    if bad := [c for c in args.cases if c not in CASES]:
        p.error(f"unknown case(s) {', '.join(bad)}; choose from {', '.join(CASES)}")
    if bad := [k for k in args.kinds if k not in KINDS]:
        p.error(f"unknown drill kind(s) {', '.join(bad)}; choose from {', '.join(KINDS)}")
    if any(not 1 <= n <= MAX_NODES for n in args.sizes) or args.runs < 1:
        p.error(f"--sizes each 1..{MAX_NODES} (node-a..node-z, node-aa, ...) and --runs >= 1")
    if os.geteuid() != 0:
        p.error("needs root: the meshes run in network namespaces and the drills use nftables")
    for tool in ("yggdrasil", "nft", "ip"):
        if shutil.which(tool) is None and not os.access(f"/usr/sbin/{tool}", os.X_OK):
            p.error(f"{tool} not found")
    started = time.monotonic()
    if args.run_dir is not None:
        Path(args.run_dir).mkdir(parents=True, exist_ok=True)  # --keep --run-dir new/dir: made, not refused
    out = asyncio.run(bench(args))
    print()
    print(f"scale_bench: {time.monotonic() - started:.0f} s, sizes {args.sizes}, {args.runs} run(s) per drill")
    print(table(out["sizes"], args.kinds))
    for title, key in (("short blackholes on 3 nodes:", "short"), ("drills 3 s apart on 3 nodes:", "repeat")):
        text = drills_table(title, out[key])
        if text:
            print()
            print(text)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {k: [asdict(x) for x in v] for k, v in out.items()},
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
