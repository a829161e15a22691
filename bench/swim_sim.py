"""Heal beyond this machine, by simulation: awareness time and per-node cost against N (issue 10 item 7).

    python bench/swim_sim.py                 # N = 20, 100, 1,000; 2 seeds (about 7 minutes here)
    python bench/swim_sim.py --sizes 20,100 --seeds 1   # about 10 s
    python bench/swim_sim.py --sizes 100 --seeds 1 --json out.json

What runs is the agents' own code, only time and the network are simulated:
- dissemination: tests/mapek/swim_sim.MeshSim, N real `agent.mapek.swim.protocol.Swim` members with the agents'
  defaults (SwimConfig), watching their planned neighbours of the default topology (`auto`: the expander above 8
  members), datagrams delayed 1-10 ms, no loss. All members start at once:
  - startup: when no member has news left to gossip (each member's "I am here"; hearing of a member for the first
    time is not news of its own, it only rides the pings and acks) and the SWIM datagrams sent per node until then;
  - idle cost, after the startup (at least 12 s in, past the startup grace): SWIM datagrams and bytes sent per node
    per second over 10 s;
  - a fault on the middle member for 10 s, `blackhole` (its mesh traffic dropped both ways, its underlay answers,
    as a drill does) and `node-loss` (everything dropped): first detection (the first member to hold it suspect),
    full awareness (the last member to do so), the time until every member holds it dead, and, once the fault
    ends, the time until every member holds it alive again; any other member suspected meanwhile is counted
    (a false suspicion);
- analyze/plan: one member's MAPE-K loop (agent.mapek.loop.MapekLoop.run_tick, via tests/mapek/sim.SimNode) with
  N members in its knowledge, the target suspected by the membership layer: the tick that opens the incident and
  the mean wall time of a tick (all pure phases; the simulator hands it the observation).

Baseline: the smallest N of the same run; ratios = figure / baseline figure. Expected: awareness growing like
log N (dissemination rounds), per-node messages flat (each member probes its degree plus a constant).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent import topology  # noqa: E402
from tests.mapek.sim import SimNode, members  # noqa: E402
from tests.mapek.swim_sim import MeshSim, member_ids  # noqa: E402

WARMUP_S = 12.0
SETTLE_MAX_S = 60.0  # startup backlog not drained by then: idle is measured anyway, and the table says so
IDLE_S = 10.0
FAULT_S = 10.0
BACK_S = 4.0
KINDS = ("blackhole", "node-loss")


@dataclass
class FaultRun:
    kind: str
    seed: int
    first_s: float | None
    median_s: float | None
    full_s: float | None  # None: some member never suspected it
    all_dead_s: float | None
    back_s: float | None  # None: some member does not hold it alive
    false_suspicions: int


@dataclass
class SizeResult:
    n: int
    links: int
    max_degree: int
    msgs_per_node_s: float = 0.0
    bytes_per_node_s: float = 0.0
    max_msgs_node_s: float = 0.0
    startup_s: list[float | None] = field(default_factory=list)  # per seed; None: queues not empty by SETTLE_MAX_S
    startup_msgs_per_node: float = 0.0
    faults: list[FaultRun] = field(default_factory=list)
    tick_ms: float | None = None
    incident_tick: int | None = None
    sim_wall_s: float = 0.0


def _span(values: dict[str, float | None]) -> tuple[float | None, float | None, float | None]:
    got = [v for v in values.values() if v is not None]
    first = min(got) if got else None
    median = statistics.median(got) if got else None
    full = max(got) if got and len(got) == len(values) else None
    return first, median, full


def run_size(n: int, seeds: list[int]) -> SizeResult:
    ids = member_ids(n)
    links = topology.plan_links(ids, "auto")
    degree = max(len(topology.neighbours(links, i)) for i in ids)
    res = SizeResult(n=n, links=len(links), max_degree=degree)
    started = time.monotonic()
    rates, byte_rates, peaks, startup_msgs = [], [], [], []
    for seed in seeds:
        warm = MeshSim(n, seed=seed)
        while any(s.pending_news for s in warm.nodes.values()) and warm.now < SETTLE_MAX_S:
            warm.run_until(warm.now + 0.5)
        drained = not any(s.pending_news for s in warm.nodes.values())
        res.startup_s.append(warm.now if drained else None)
        startup_msgs.append(sum(t.messages for t in warm.sent.values()) / n)
        warm.run_until(max(warm.now, WARMUP_S))
        warm.reset_traffic()
        idle_from = warm.now
        warm.run_until(idle_from + IDLE_S)
        rates.append(sum(t.messages for t in warm.sent.values()) / n / IDLE_S)
        byte_rates.append(sum(t.bytes for t in warm.sent.values()) / n / IDLE_S)
        peaks.append(max(t.messages for t in warm.sent.values()) / IDLE_S)
        for kind in KINDS:
            # Each fault starts from a copy of the same warmed-up, idle mesh (as if it had been run again), which
            # halves the run at 1,000 members.
            sim = copy.deepcopy(warm)
            t0 = sim.now
            target = sim.ids[n // 2]
            (sim.blackhole if kind == "blackhole" else sim.kill)(target)
            sim.run_until(t0 + FAULT_S)
            first, median, full = _span(sim.awareness(target, t0))
            first_dead = sim.first_after(sim.dead_declared, target, t0)
            dead = {o: (first_dead[o] - t0 if o in first_dead else None) for o in sim.ids if o != target}
            all_dead = _span(dead)[2]
            t1 = sim.now
            sim.restore(target)
            sim.run_until(t1 + BACK_S)
            back = _span(sim.recovered(target, t1))[2]
            false = len({(o, m) for t, o, m in sim.downs if m != target and t >= WARMUP_S})
            res.faults.append(FaultRun(kind, seed, first, median, full, all_dead, back, false))
    res.startup_msgs_per_node = statistics.mean(startup_msgs)
    res.msgs_per_node_s = statistics.mean(rates)
    res.bytes_per_node_s = statistics.mean(byte_rates)
    res.max_msgs_node_s = max(peaks)
    res.tick_ms, res.incident_tick = mapek_ticks(ids, links)
    res.sim_wall_s = time.monotonic() - started
    return res


def mapek_ticks(ids: list[str], links: list[tuple[str, str]]) -> tuple[float, int | None]:
    """Mean wall ms of one member's MAPE-K tick with len(ids) members, and the tick that opens the incident about a
    member the membership layer suspects (1 = the first tick that sees it)."""
    me = ids[0]
    target = ids[len(ids) // 2]
    node = SimNode(me, members(ids, [list(link) for link in links]))
    up = set(topology.neighbours(links, me))
    walls = []
    for _ in range(5):
        t = time.perf_counter()
        node.tick(up=up)
        walls.append(time.perf_counter() - t)
    opened = None
    for i in range(1, 6):
        t = time.perf_counter()
        r = node.tick(up=up - {target}, overlay={target: False})
        walls.append(time.perf_counter() - t)
        if opened is None and "member_unreachable" in r.kinds(target):
            opened = i
    return 1000.0 * statistics.mean(walls), opened


def _f(v: float | None, digits: int = 2) -> str:
    return "never" if v is None else f"{v:.{digits}f}"


def _ratio(v: float | None, base: float | None) -> str:
    return "-" if v is None or not base else f"{v / base:.2f}x"


def _worst(values: list[float | None]) -> float | None:
    return None if not values or None in values else max(v for v in values if v is not None)


def table(results: list[SizeResult], seeds: int) -> str:
    base = results[0]

    def stats(r: SizeResult, kind: str) -> dict[str, float | None]:
        fs = [f for f in r.faults if f.kind == kind]
        return {
            "first": _worst([f.first_s for f in fs]),
            "full": _worst([f.full_s for f in fs]),
            "dead": _worst([f.all_dead_s for f in fs]),
            "back": _worst([f.back_s for f in fs]),
            "false": float(sum(f.false_suspicions for f in fs)),
        }

    lines = [
        f"SWIM of the agents (SwimConfig defaults), default topology, {seeds} seed(s) per N; worst over the "
        f"seeds; ratio = figure / N={base.n} figure",
        "",
        "| N | links (max degree) | startup: news sent by, msgs per node until then "
        "| idle msgs/s per node (ratio) | bytes/s per node | busiest node msgs/s | fault | "
        "first detection | full awareness (ratio) | all hold it dead | all hold it alive after | false suspicions "
        "| MAPE-K tick ms (ratio) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for kind in KINDS:
            s, b = stats(r, kind), stats(base, kind)
            lines.append(
                f"| {r.n:,} | {r.links:,} ({r.max_degree}) | {_f(_worst(r.startup_s), 1)} s, "
                f"{r.startup_msgs_per_node:.0f} | {r.msgs_per_node_s:.1f} "
                f"({_ratio(r.msgs_per_node_s, base.msgs_per_node_s)}) | {r.bytes_per_node_s:,.0f} | "
                f"{r.max_msgs_node_s:.1f} | {kind} | {_f(s['first'])} s | {_f(s['full'])} s "
                f"({_ratio(s['full'], b['full'])}) | {_f(s['dead'])} s | {_f(s['back'])} s | {s['false']:.0f} | "
                f"{_f(r.tick_ms)} ({_ratio(r.tick_ms, base.tick_ms)}) |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="SWIM dissemination and MAPE-K analyze/plan of the agents at 20, 100 and 1,000 members on a "
        "simulated network: awareness time and per-node message rate against N, with the smallest N as baseline.",
    )
    p.add_argument("--sizes", default="20,100,1000", help="comma-separated member counts (default 20,100,1000)")
    p.add_argument("--seeds", type=int, default=2, help="simulated runs per N and fault (default 2)")
    p.add_argument("--json", type=Path, default=None, help="also write every figure as JSON to this file")
    args = p.parse_args(argv)
    try:
        sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        p.error(f"--sizes: comma-separated integers, got {args.sizes!r}")
    if not sizes or min(sizes) < 3 or args.seeds < 1:
        p.error("--sizes each >= 3 and --seeds >= 1")
    results = []
    for n in sizes:
        r = run_size(n, list(range(1, args.seeds + 1)))
        results.append(r)
        print(
            f"[N={n}] startup news sent by {', '.join(_f(v, 1) for v in r.startup_s)} s; idle "
            f"{r.msgs_per_node_s:.1f} msgs/s per node; "
            + "; ".join(
                f"{f.kind} seed {f.seed}: first {_f(f.first_s)} s, full {_f(f.full_s)} s, dead {_f(f.all_dead_s)} "
                f"s, back {_f(f.back_s)} s, false {f.false_suspicions}"
                for f in r.faults
            )
            + f"; tick {_f(r.tick_ms)} ms ({r.sim_wall_s:.0f} s)",
            flush=True,
        )
    print()
    print(table(results, args.seeds))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
