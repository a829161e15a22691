"""Pure view builders: which link is which member, what is missing, where routes go, what metrics show."""

from __future__ import annotations

import json

from agent.members import parse_members
from agent.views import (
    MeshContext,
    learn_keys,
    match_peers,
    metrics_view,
    peers_check,
    peers_view,
    planned_status,
    routes_view,
    status_view,
)
from agent.yggdrasil.models import DaemonSnapshot, PeerLink, RouteEntry, SelfInfo

KA, KB, KC, KX = ("a" * 64), ("b" * 64), ("c" * 64), ("e" * 64)


def members(with_c_key: bool = True, links: list | None = None):
    ms = [
        {"node_id": "node-a", "agent_url": "http://h:1", "listen_uri": "tls://127.0.0.1:1001", "public_key": KA},
        {"node_id": "node-b", "agent_url": "http://h:2", "listen_uri": "tls://127.0.0.1:1002", "public_key": KB},
        {"node_id": "node-c", "agent_url": "http://h:3", "listen_uri": "tls://127.0.0.1:1003"},
    ]
    if with_c_key:
        ms[2]["public_key"] = KC
    d: dict = {"mesh": "t", "members": ms}
    if links is not None:
        d["links"] = links
    return parse_members(json.dumps(d).encode())


def ctx(node: str = "node-a", **kw) -> MeshContext:
    return MeshContext(
        node_id=node,
        members=kw.pop("m", None) or members(),
        learned_keys=kw.pop("learned", {}),
        temporary=frozenset(kw.pop("temporary", ())),
        **kw,
    )


def snap(peers: list[PeerLink], routes: list[RouteEntry] = (), version: str = "0.4") -> DaemonSnapshot:
    return DaemonSnapshot(
        api_version=version,  # type: ignore[arg-type]
        self_info=SelfInfo(key=KA, address="200::a", subnet="300::/64", coords=[1]),
        peers=peers,
        routes=list(routes),
        taken_at=1.0,
    )


def link(key: str, port: int, remote: str, **kw) -> PeerLink:
    return PeerLink(
        key=key, up=kw.pop("up", True), port=port, remote=remote, address=kw.pop("address", None), **kw
    )


def test_peers_matched_by_key_planned_temporary_and_missing() -> None:
    s = snap([link(KB, 1, "tls://127.0.0.1:1002", bytes_recvd=5), link(KX, 2, "tcp://127.0.0.1:5555")])
    v = peers_view(s, ctx(temporary={"node-b"}))
    assert [(p.node_id, p.planned, p.temporary) for p in v.peers] == [("node-b", True, True), (None, False, False)]
    assert [(m.node_id, m.reason) for m in v.missing] == [("node-c", "no link")]
    assert v.missing[0].listen_uri == "tls://127.0.0.1:1003" and v.missing[0].key == KC


def test_outbound_link_identifies_a_member_without_key_and_teaches_it() -> None:
    m = members(with_c_key=False)
    s = snap([link(KC, 1, "tls://127.0.0.1:1003")])
    c = ctx(m=m)
    assert [mem.node_id if mem else None for _, mem in match_peers(s, c)] == ["node-c"]
    assert learn_keys(s, m) == {"node-c": KC}
    # an inbound link from an unknown key cannot be attributed; the missing reason says why
    m = members(with_c_key=False, links=[["node-c", "node-b"]])  # node-c dials node-b
    s2 = snap([link(KC, 1, "tls://127.0.0.1:40000", inbound=True)])
    c2 = ctx("node-b", m=m)
    assert planned_status(match_peers(s2, c2), c2)[0].reason.startswith("no link (its key is unknown")
    # once learned (from a probe or our own outbound link), the key identifies it
    c3 = ctx("node-b", m=m, learned={"node-c": KC})
    assert [p.node_id for p in peers_view(s2, c3).peers] == ["node-c"]


def test_down_05_link_reports_its_error() -> None:
    s = snap(
        [PeerLink(key="", up=False, remote="tls://127.0.0.1:1002", inbound=False, last_error="refused")],
        version="0.5",
    )
    v = peers_view(s, ctx())
    assert [(m.node_id, m.reason) for m in v.missing] == [("node-b", "link down: refused"), ("node-c", "no link")]
    assert peers_check(planned_status(match_peers(s, ctx()), ctx())).ok is False


def test_peers_check() -> None:
    assert peers_check([]).ok is True
    s = snap([link(KB, 1, "x://")])
    check = peers_check(planned_status(match_peers(s, ctx()), ctx()))
    assert check.ok is True and check.detail == "1 of 2 planned peers up; missing: node-c"


def test_routes_next_hop_from_port_and_direct_peer_and_self_skipped() -> None:
    routes = [
        RouteEntry(kind="dht", key=KA, address="200::a"),  # self
        RouteEntry(kind="dht", key=KB, address="200::b", next_hop_port=1),
        RouteEntry(kind="path", key=KC, address="200::c", path=[1, 3, 0], next_hop_port=1),
        RouteEntry(kind="session", key=KB, address="200::b"),  # no port: direct peer is its own hop
        RouteEntry(kind="tree", key=KX, address="200::e", parent_key=KB),
    ]
    v = routes_view(snap([link(KB, 1, "tls://127.0.0.1:1002")], routes), ctx())
    got = [(r.kind, r.node_id, r.next_hop_node_id) for r in v.routes]
    assert got == [
        ("dht", "node-b", "node-b"),
        ("path", "node-c", "node-b"),
        ("session", "node-b", "node-b"),
        ("tree", None, None),
    ]
    assert v.routes[1].next_hop_key == KB and v.routes[1].path == [1, 3, 0]


def test_status_and_metrics_view() -> None:
    s = snap(
        [
            link(KB, 1, "r", latency_ms=2.5, bytes_recvd=10, bytes_sent=20),
            link(KB, 2, "r2", bytes_recvd=1, bytes_sent=2),
        ],
        [RouteEntry(kind="dht", key=KB, address="200::b"), RouteEntry(kind="dht", key=KA, address="200::a")],
    )
    st = status_view(s, ctx(), uptime_s=3.0, snapshot_age_s=0.5)
    assert (st.key, st.coords, st.peers_up, st.peers_expected, st.members_known) == (KA, [1], 2, 2, 3)
    mv = metrics_view(s, ctx(), yggdrasil_up=True)
    by_peer = {p.peer: p for p in mv.peers}
    # two links to node-b merge into one series; planned node-c shows as down
    assert by_peer["node-b"].up and by_peer["node-b"].received_bytes == 11 and by_peer["node-b"].sent_bytes == 22
    assert by_peer["node-b"].latency_s == 0.0025
    assert by_peer["node-c"].up is False and by_peer["node-c"].planned
    assert mv.routes == {"dht": 1} and mv.peers_planned == 2 and mv.key == KA
    empty = metrics_view(None, ctx(), yggdrasil_up=False)
    assert [p.peer for p in empty.peers] == ["node-b", "node-c"] and not empty.yggdrasil_up
    down = metrics_view(s, ctx(), yggdrasil_up=False)  # daemon stopped answering: identity kept, links not
    assert down.key == KA and down.peers_up == 0 and down.routes == {}
    assert [(p.peer, p.up) for p in down.peers] == [("node-b", False), ("node-c", False)]
