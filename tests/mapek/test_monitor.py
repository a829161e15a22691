"""Monitor: who SWIM watches (bounded by degree), link merging, which ports are watched and how many at a time."""

from __future__ import annotations

import json
import socket

from agent.mapek.knowledge import Knowledge, Probe, Temporary
from agent.mapek.monitor import DIAL_IN_FLIGHT, WATCH_ROUND, MapekMonitor, dial_targets, merge_links, watch_set
from agent.members import parse_members
from agent.yggdrasil.models import PeerLink

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
            PeerLink(key="k1", up=True, bytes_recvd=100, latency_ms=3.0),
            PeerLink(key="k1", up=False, bytes_recvd=7),  # a 0.5 down link beside the up one
            PeerLink(key="k1", up=True, bytes_recvd=50, latency_ms=2.0),
            PeerLink(key="k2", up=False),
            PeerLink(key="stranger", up=True, bytes_recvd=1),
        ],
        member_of,
    )
    assert set(merged) == {"node-a", "node-b"}
    a = merged["node-a"]
    assert a.up and a.bytes_recvd == 150 and a.latency_ms == 2.0
    assert not merged["node-b"].up and merged["node-b"].bytes_recvd is None


def test_ports_watched_only_for_down_links_this_node_dials() -> None:
    kn = Knowledge("node-01", members(IDS[:4]))  # full mesh: node-01 dials node-02 and node-03
    kn.state("node-02").link_up = True
    assert dial_targets(kn) == ["node-03"]
    kn.temporaries["node-00"] = Temporary(member="node-00", dialer=False, since=0.0, standing_in_for=())
    assert dial_targets(kn) == ["node-03"]  # node-00 dials us, not the other way round


class CountingMonitor(MapekMonitor):
    """The real monitor (real TCP connects); it only counts how many of its probes are open at once."""

    def __init__(self) -> None:
        super().__init__(lambda: None, lambda link: None, None, timeout=2.0)  # type: ignore[arg-type, return-value]
        self.open = self.peak = self.calls = 0

    async def _dial_probe(self, member: str, listen_uri: str) -> Probe:
        self.open += 1
        self.calls += 1
        self.peak = max(self.peak, self.open)
        try:
            return await super()._dial_probe(member, listen_uri)
        finally:
            self.open -= 1


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
        mon = CountingMonitor()
        probes = await mon.dial_probes(kn)
        assert [p.member for p in probes] == ids[1:]
        assert {p.member for p in probes if p.ok} == answering
        assert 1 < mon.peak <= DIAL_IN_FLIGHT
        for p in probes:
            kn.state(p.member).dial = Probe(member=p.member, path="dial", ok=False, at=p.at)
        seen: list[str] = []
        for _ in range(3):
            mon.calls = 0
            seen += await mon.ports_answering(kn)
            assert mon.calls <= WATCH_ROUND
        assert set(seen) == answering  # 3 rounds of 64 cover the 149 waiting ports (the third wraps round)
    finally:
        for sock in [*listeners.values(), closed]:
            sock.close()
