"""Monitor: who SWIM watches (bounded by degree), link merging, which ports are watched and how many at a time."""

from __future__ import annotations

import asyncio
import json
import socket
import time

from agent.mapek.analyze import analyze
from agent.mapek.knowledge import Knowledge, MemberView, Observation, Probe, Temporary
from agent.mapek.monitor import (
    DIAL_BACKOFF_MAX_S,
    DIAL_IN_FLIGHT,
    DIAL_STEADY_S,
    FRESH_WAIT_S,
    WATCH_ROUND,
    DaemonRead,
    MapekMonitor,
    dial_targets,
    merge_links,
    watch_set,
)
from agent.mapek.swim.protocol import ProbeResult
from agent.members import parse_members
from agent.settings import Settings
from agent.state import AgentState
from agent.yggdrasil.models import DaemonSnapshot, PeerLink, SelfInfo

from .sim import members

IDS = [f"node-{i:02d}" for i in range(20)]


def ring(ids: list[str]) -> list[list[str]]:
    return [[ids[i], ids[(i + 1) % len(ids)]] for i in range(len(ids))]


def test_the_watched_set_is_bounded_by_degree_and_includes_stand_ins() -> None:
    kn = Knowledge("node-00", members(IDS, links=ring(IDS)))
    # SWIM probes the 2 ring neighbours every interval (plus one other in rotation): not the 20-node mesh.
    assert watch_set(kn) == ["node-01", "node-19"]
    kn.temporaries["node-10"] = Temporary(member="node-10", dialer=True, since=0.0, standing_in_for=("node-01",))
    kn.accepting["node-12"] = ("node-19",)
    assert set(watch_set(kn)) == {"node-01", "node-19", "node-10", "node-12"}


def test_merge_links_per_member() -> None:
    owner = {"k1": "node-a", "k2": "node-b"}

    def member_of(link: PeerLink) -> str | None:
        return owner.get(link.key)

    merged = merge_links(
        [
            PeerLink(key="k1", up=True, bytes_recvd=100, latency_ms=3.0, uptime_s=40.0),
            PeerLink(key="k1", up=False, bytes_recvd=7, uptime_s=1.0),  # a 0.5 down link beside the up one
            PeerLink(key="k1", up=True, bytes_recvd=50, latency_ms=2.0, uptime_s=12.5),
            PeerLink(key="k2", up=False),
            PeerLink(key="stranger", up=True, bytes_recvd=1),
        ],
        member_of,
    )
    assert set(merged) == {"node-a", "node-b"}
    a = merged["node-a"]
    assert a.up and a.bytes_recvd == 150 and a.latency_ms == 2.0
    assert a.uptime_s == 12.5  # the youngest up link: it tells a redial apart from one long-lived link
    assert not merged["node-b"].up and merged["node-b"].bytes_recvd is None


def test_ports_watched_only_for_down_links_this_node_dials() -> None:
    kn = Knowledge("node-01", members(IDS[:4]))  # full mesh: node-01 dials node-02 and node-03
    kn.state("node-02").link_up = True
    assert dial_targets(kn) == ["node-03"]
    kn.temporaries["node-00"] = Temporary(member="node-00", dialer=False, since=0.0, standing_in_for=())
    assert dial_targets(kn) == ["node-03"]  # node-00 dials us, not the other way round


def test_ports_watched_for_an_up_link_that_was_stuck() -> None:
    kn = Knowledge("node-01", members(IDS[:4]))
    for m in ("node-02", "node-03"):
        st = kn.state(m)
        st.link_up, st.link_up_since, st.traffic_at = True, 100.0, 200.0
    assert dial_targets(kn, 200.0) == []
    kn.state("node-03").stuck_since = 199.0
    assert dial_targets(kn, 200.0) == ["node-03"]


async def test_dial_probes_of_a_large_plan_are_bounded_and_rotated() -> None:
    """150 planned peers down at once (issue 11 item 1): every port is probed per tick, at most DIAL_IN_FLIGHT at a
    time, in target order; between ticks a round re-checks at most WATCH_ROUND of them, in rotation."""
    answering = {"m007", "m090", "m140"}
    listeners = {m: socket.socket() for m in answering}
    for sock in listeners.values():
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connects are refused
    dead_port = closed.getsockname()[1]
    ids = [f"m{i:03d}" for i in range(150)]
    doc = {
        "mesh": "big",
        "topology": "full",
        "members": [
            {
                "node_id": m,
                "agent_url": f"http://127.0.1.{n + 1}:8080",
                "listen_uri": f"tcp://127.0.0.1:{listeners[m].getsockname()[1]}"
                if m in answering
                else f"tcp://127.0.2.{n + 1}:{dead_port}",
            }
            for n, m in enumerate(ids)
        ],
    }
    try:
        kn = Knowledge("m000", parse_members(json.dumps(doc).encode()))
        # The real monitor, real TCP connects.
        mon = MapekMonitor(lambda: None, lambda link: None, None, timeout=2.0)  # type: ignore[arg-type, return-value]
        probes = await mon.dial_probes(kn)
        assert [p.member for p in probes] == ids[1:]
        assert {p.member for p in probes if p.ok} == answering
        assert 1 < mon.dial_peak <= DIAL_IN_FLIGHT
        for p in probes:
            kn.state(p.member).dial = Probe(member=p.member, path="dial", ok=False, at=p.at)
        seen: list[str] = []
        for _ in range(3):
            before = mon.dial_checks
            seen += await mon.ports_answering(kn)
            assert mon.dial_checks - before <= WATCH_ROUND
        assert set(seen) == answering  # 3 rounds of 64 cover the 149 waiting ports (the third wraps round)
    finally:
        for sock in [*listeners.values(), closed]:
            sock.close()


# --- a listing older than a failed probe -------------------------------------------------------------------------


class FailedProbes:
    """The membership layer's side: the probe results a tick takes (SWIM itself is tested in test_swim.py)."""

    def __init__(self, results: list[ProbeResult]) -> None:
        self.results = results

    def take_results(self) -> list[ProbeResult]:
        out, self.results = self.results, []
        return out

    def view(self) -> dict[str, MemberView]:
        return {}

    def cut_off(self) -> bool:
        return False


def _snapshot(up: list[str], taken_at: float) -> DaemonSnapshot:
    return DaemonSnapshot(
        api_version="0.4",
        self_info=SelfInfo(key="k-a", address="200::a", subnet="300::/64"),
        peers=[PeerLink(key=f"k-{m}", up=True, bytes_recvd=10) for m in up],
        routes=[],
        taken_at=taken_at,
    )


def _state_with(snapshot: DaemonSnapshot, fresh_peers: list[str] | None) -> tuple[AgentState, list[float]]:
    """A real AgentState holding `snapshot`; its snapshot hook records, as the agent's monitor does, a snapshot
    listing `fresh_peers` a moment later (None: the daemon never answers)."""
    agent = AgentState(Settings(node_id="node-a", raft_enabled=False))
    agent.record_snapshot(snapshot)
    asked: list[float] = []

    def request() -> None:
        asked.append(time.time())
        if fresh_peers is not None:
            asyncio.get_running_loop().call_later(
                0.02, lambda: agent.record_snapshot(_snapshot(fresh_peers, time.time()))
            )

    agent.request_snapshot = request
    return agent, asked


def _monitor(agent: AgentState, results: list[ProbeResult]) -> MapekMonitor:
    def read() -> DaemonRead:
        return DaemonRead(snapshot=agent.snapshot, ok=True)

    def member_of(link: PeerLink) -> str | None:
        return link.key.removeprefix("k-")

    return MapekMonitor(read, member_of, FailedProbes(results), timeout=0.7, fresh=agent.fresh_snapshot)


async def test_a_failed_probe_of_a_listed_peer_is_judged_on_a_snapshot_taken_after_it() -> None:
    """node-b's daemon was killed: the probe failed, but the snapshot (taken before the kill) still lists the
    link. CI failed test_kill_daemon_drill_detected_and_healed so: node-a judged node-b silent on that old listing.
    The monitor asks for a snapshot now, and the link is seen down (peer_lost, not peer_silent)."""
    kn = Knowledge("node-a", members(["node-a", "node-b", "node-c"]))
    agent, asked = _state_with(_snapshot(["node-b", "node-c"], time.time() - 0.5), fresh_peers=["node-c"])
    monitor = _monitor(agent, [])
    await monitor.observe(kn)  # the tick before: the snapshot is news, nothing failed
    assert asked == []
    kn.observe(await monitor.observe(kn))
    failed = ProbeResult("node-b", "mesh", False, time.time() - 0.7, error="no ack within 0.70 s")
    monitor.membership = FailedProbes([failed])
    obs = await monitor.observe(kn)
    assert len(asked) == 1
    assert "node-b" not in obs.links and obs.links["node-c"].up
    assert obs.links_before is not None and obs.links_before["node-b"].up  # the old listing is the one before
    assert [f.kind for f in analyze(obs, kn) if f.subject == "node-b"] == ["peer_lost"]


async def test_no_snapshot_is_asked_for_without_a_failed_probe_of_a_listed_peer() -> None:
    kn = Knowledge("node-a", members(["node-a", "node-b", "node-c"]))
    agent, asked = _state_with(_snapshot(["node-c"], time.time() - 0.5), fresh_peers=["node-c"])
    results = [
        ProbeResult("node-c", "mesh", True, time.time() - 0.3, rtt_s=0.01),  # answered
        ProbeResult("node-b", "mesh", False, time.time() - 0.7, error="no ack"),  # not listed: already down
        ProbeResult("node-c", "underlay", False, time.time() - 0.7, error="no ack"),  # not the mesh path
    ]
    obs = await _monitor(agent, results).observe(kn)
    assert asked == []
    assert set(obs.links) == {"node-c"}


async def test_a_daemon_that_gives_no_fresh_snapshot_leaves_the_old_one_after_a_bounded_wait() -> None:
    kn = Knowledge("node-a", members(["node-a", "node-b"]))
    agent, asked = _state_with(_snapshot(["node-b"], time.time() - 0.5), fresh_peers=None)
    failed = ProbeResult("node-b", "mesh", False, time.time() - 0.7, error="no ack")
    started = time.monotonic()
    obs = await _monitor(agent, [failed]).observe(kn)
    waited = time.monotonic() - started
    assert len(asked) == 1 and obs.links["node-b"].up
    assert FRESH_WAIT_S <= waited < FRESH_WAIT_S + 1.0


def test_a_port_failing_for_long_is_rechecked_less_often_and_at_once_when_it_answered() -> None:
    kn = Knowledge("node-01", members(IDS[:4]))  # node-01 dials node-02 and node-03, both down
    t0 = 1_000.0

    def dial(member: str, at: float, ok: bool) -> None:
        kn.observe(Observation(at=at, daemon_ok=True, probes=[Probe(member=member, path="dial", ok=ok, at=at)]))

    for k in range(int(DIAL_STEADY_S) + 1):  # one failed check a second, as the ticks do
        dial("node-02", t0 + k, ok=False)
        dial("node-03", t0 + k, ok=False)
    last = t0 + DIAL_STEADY_S
    assert dial_targets(kn, last + 0.5) == []  # failing for 30 s: next check 1.5 s after the last one
    assert dial_targets(kn, last + 2.0) == ["node-02", "node-03"]
    assert dial_targets(kn) == ["node-02", "node-03"]  # without a time: every down link, as before
    dial("node-03", last + 2.0, ok=True)
    dial("node-02", last + 2.0, ok=False)
    assert dial_targets(kn, last + 2.5) == ["node-03"]  # answered: checked every time again until linked
    for k in range(3, 400):
        dial("node-02", last + k, ok=False)
    assert dial_targets(kn, last + 402.0) == ["node-03"]  # the back-off stops at DIAL_BACKOFF_MAX_S
    assert dial_targets(kn, last + 399 + DIAL_BACKOFF_MAX_S) == ["node-02", "node-03"]
