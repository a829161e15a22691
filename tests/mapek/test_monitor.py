"""Monitor's pure parts: who SWIM watches (bounded by degree), link merging, which ports are watched."""

from __future__ import annotations

from agent.mapek.knowledge import Knowledge, Temporary
from agent.mapek.monitor import dial_targets, merge_links, watch_set
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
