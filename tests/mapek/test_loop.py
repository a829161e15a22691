"""The MAPE-K loop itself (agent.mapek.loop): the simulator runs its real tick, a members reload between ticks,
a failing tick that does not end self-healing. No sockets: the monitor and executor are the stated ones of sim.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import pytest

from agent.mapek.knowledge import Knowledge, Observation, Probe
from agent.mapek.loop import MapekLoop
from agent.settings import Settings
from agent.state import AgentState

from .sim import T0, SimNode, StatedExecutor, members

IDS3 = ["node-a", "node-b", "node-c"]
CHAIN = [["node-a", "node-b"], ["node-b", "node-c"]]


def metric(node: SimNode, line_start: str) -> list[str]:
    return [ln for ln in node.agent.metrics.render().decode().splitlines() if ln.startswith(line_start)]


def test_the_simulator_runs_the_agents_tick() -> None:
    a = SimNode("node-a", members(IDS3, links=CHAIN))
    a.tick(up={"node-b"})
    gone = {"node-b": False}
    a.tick(up=(), overlay={"node-b": False, "node-c": False}, underlay=gone, dt=0.6)
    r = a.tick(up=(), overlay={"node-b": False, "node-c": False}, underlay=gone, dt=1.0)
    (add,) = r.actions("add_peer", executed=True)
    # The loop's own bookkeeping moved: tick count, time of the last tick, what the executor was handed.
    assert (a.loop.tick, a.loop.last_tick_at) == (3, T0 + 2.6)
    assert a.executor.ran == [add]
    assert a.kn.actions[-1].at == a.now  # the loop's clock is the simulated one
    # ... and so did what the loop does on the agent: the stand-in link is marked temporary in /mesh/peers.
    assert a.agent.temporary == {"node-c"} == a.kn.temporary_members()
    assert metric(a, 'x0_mapek_incidents_total{kind="peer_lost"}') == [
        'x0_mapek_incidents_total{kind="peer_lost"} 1.0'
    ]
    assert metric(a, 'x0_mapek_actions_total{action="add_peer",outcome="ok"}') == [
        'x0_mapek_actions_total{action="add_peer",outcome="ok"} 1.0'
    ]
    assert metric(a, "x0_mapek_members_reachable ") == ["x0_mapek_members_reachable 1.0"]
    # Once node-b is back the stand-in goes and the mark with it.
    for _ in range(4):
        a.tick(up={"node-b", "node-c"})
    assert a.agent.temporary == set()


def test_a_members_reload_between_ticks() -> None:
    a = SimNode("node-a", members(IDS3))
    a.tick(up={"node-b", "node-c"})
    assert {ln.split("{")[1].split(",")[0] for ln in metric(a, "x0_member_reachable{")} == {
        'member="node-b"',
        'member="node-c"',
    }
    # node-c leaves the mesh, node-d joins: the next tick probes the new set and forgets node-c's series.
    a.set_members(members(["node-a", "node-b", "node-d"]))
    r = a.tick(up={"node-b"})
    assert {p.member for p in r.record.observation.probes} == {"node-b", "node-d"}
    assert set(a.kn.states) == {"node-b", "node-d"}
    assert not [ln for ln in metric(a, "x0_member") if 'member="node-c"' in ln]
    assert [ln for ln in metric(a, "x0_member_reachable{") if 'member="node-d"' in ln]
    # A reload that changes nothing (same generation) does not reset what the loop knows.
    before = a.kn.state("node-b")
    a.tick(up={"node-b"})
    assert a.kn.state("node-b") is before


class FlakyMonitor:
    """Fails its first observation (a bug, not a daemon error), then reports a quiet healthy mesh."""

    def __init__(self) -> None:
        self.calls = 0

    async def observe(self, kn: Knowledge, *, react: bool = False) -> Observation:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("monitor bug")
        now = time.time()
        probes = [Probe(member=m, path="overlay", ok=True, at=now, rtt_s=0.001) for m in kn.others()]
        return Observation(at=now, daemon_ok=True, api_version="0.4", links={}, probes=probes)

    async def aclose(self) -> None:
        self.closed = True


async def test_a_failing_tick_does_not_end_self_healing(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(node_id="node-a", mapek_interval=0.05, raft_enabled=False)
    agent = AgentState(settings)
    agent.members.members = members(IDS3)
    agent.members.generation += 1
    loop = MapekLoop(settings)
    monitor, executor = FlakyMonitor(), StatedExecutor()
    loop.attach(agent, monitor, executor)
    caplog.set_level(logging.ERROR, logger="x0.mapek")
    task = asyncio.create_task(loop._run())
    try:
        deadline = time.monotonic() + 10
        while loop.tick < 3:
            assert time.monotonic() < deadline, f"only {loop.tick} ticks after a failed one"
            assert not task.done(), "the loop ended"
            await asyncio.sleep(0.02)
        assert loop.running
        assert monitor.calls >= 4  # the failed tick counted no tick, the next ones did
        (failed,) = [r for r in caplog.records if "failed" in r.getMessage()]
        assert failed.getMessage() == "MAPE-K tick 0 failed" and failed.exc_info is not None
        assert loop.kn.members_reachable() == 3
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert not loop.running
    await loop.stop()
    assert monitor.closed


@pytest.mark.parametrize("n", [20, 200])
def test_per_member_series_are_bounded_by_the_degree_not_the_mesh_size(n: int) -> None:
    """Issue 10 item 6: an agent exports per-member detail only for its planned neighbours and members with an
    open incident, so its series count does not grow with the mesh."""
    from agent import topology

    ids = [f"node-{i:03d}" for i in range(n)]
    links = topology.plan_links(ids, "expander")
    me = ids[0]
    a = SimNode(me, members(ids, links=[list(link) for link in links]))
    up = set(topology.neighbours(links, me))
    a.tick(up=up)
    detail = {ln.split('member="')[1].split('"')[0] for ln in metric(a, "x0_member_")}
    assert detail == up  # every probed member is alive: only the neighbours have series
    # incarnation, reachable and rtt by path (overlay, underlay): a constant per neighbour
    assert len(metric(a, "x0_member_")) <= 5 * len(up)
    far = ids[n // 2]
    assert far not in up
    for _ in range(3):
        r = a.tick(up=up, overlay={far: False})
    assert "member_unreachable" in r.kinds(far)
    detail = {ln.split('member="')[1].split('"')[0] for ln in metric(a, "x0_member_")}
    assert detail == up | {far}  # ... plus a member while it has an open incident


class SlowMonitor(FlakyMonitor):
    """A healthy mesh whose first observation takes a while, during which something wakes the loop, as the
    link watch does when the snapshot changes while a tick awaits its port probes."""

    def __init__(self, loop: MapekLoop) -> None:
        super().__init__()
        self.loop = loop
        self.reacts: list[float] = []

    async def observe(self, kn: Knowledge, *, react: bool = False) -> Observation:
        self.calls += 1
        if react:
            self.reacts.append(time.monotonic())
        if self.calls == 1:
            await asyncio.sleep(0.2)
            self.loop._wake.set()
            await asyncio.sleep(0.2)
        now = time.time()
        probes = [Probe(member=m, path="overlay", ok=True, at=now, rtt_s=0.001) for m in kn.others()]
        return Observation(at=now, daemon_ok=True, api_version="0.4", links={}, probes=probes)


async def test_a_change_seen_during_a_tick_wakes_the_next_one() -> None:
    # The wake used to be cleared after each tick, so one set while a tick ran was lost and the change waited for
    # the next regular tick (here 30 s away).
    settings = Settings(node_id="node-a", mapek_interval=30.0, raft_enabled=False)
    agent = AgentState(settings)
    agent.members.members = members(IDS3)
    agent.members.generation += 1
    loop = MapekLoop(settings)
    monitor = SlowMonitor(loop)
    loop.attach(agent, monitor, StatedExecutor())
    start = time.monotonic()
    task = asyncio.create_task(loop._run())
    try:
        deadline = start + 5
        while not monitor.reacts:
            assert time.monotonic() < deadline, f"no reaction tick after {monitor.calls} observation(s)"
            assert not task.done(), "the loop ended"
            await asyncio.sleep(0.02)
        assert monitor.reacts[0] - start < 2.0
        await asyncio.sleep(0.3)
        assert monitor.calls == 2 and loop.tick == 2, "a reaction without a change"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await loop.stop()
