"""Issue 11 item 1: a refresh costs O(members + links), not O(neighbours x links).

A 1,000-member file without `links` (the full plan, as the Nomad template writes it) and a daemon listing a down
link to every member: the old `planned_status` scanned the whole link list once per neighbour (999 x 499,500
steps, minutes). The bound below is a correctness bound far above what the indexed code needs (well under a
second here); the latency target itself is measured by bench/large_members.py under x0-bench.
"""

from __future__ import annotations

import json

import pytest

from agent.members import parse_members
from agent.peering import dial_targets
from agent.views import MeshContext, learn_keys, match_peers, metrics_view, peers_view, planned_status
from agent.yggdrasil.models import DaemonSnapshot, PeerLink, SelfInfo

N = 1000


def big_members() -> bytes:
    members = [
        {
            "node_id": f"node-{i:04d}",
            "agent_url": f"http://10.{i // 250}.{i % 250}.1:8080",
            "listen_uri": f"tls://10.{i // 250}.{i % 250}.1:12345",
        }
        for i in range(N)
    ]
    # The full plan explicitly: without `links` the default topology is auto (the expander above 8 members), and
    # this is the stress case of ~500,000 planned links.
    return json.dumps({"mesh": "big", "topology": "full", "members": members}).encode()


@pytest.mark.timeout(60)
def test_refresh_of_a_1000_member_full_plan_is_linear() -> None:
    m = parse_members(big_members())
    assert len(m.links) == N * (N - 1) // 2
    me = "node-0000"
    # node-0000 dials everybody; a 0.4 daemon lists only connected peers: one up, the other 998 absent (each of
    # those took the old code through a scan of all 499,500 links).
    peers = [PeerLink(key="b" * 64, up=True, remote="tls://10.0.1.1:12345", inbound=False)]
    snap = DaemonSnapshot(
        api_version="0.4",
        self_info=SelfInfo(key="a" * 64, address="200::1", subnet="300::/64"),
        peers=peers,
        routes=[],
        taken_at=0.0,
    )
    learned = learn_keys(snap, m)
    assert learned == {"node-0001": "b" * 64}
    for _ in range(3):  # a few refreshes, as the monitor makes once a second
        ctx = MeshContext(node_id=me, members=m, learned_keys=learned, temporary=frozenset())
        matched = match_peers(snap, ctx)
        statuses = planned_status(matched, ctx)
        view = peers_view(snap, ctx)
        metrics = metrics_view(snap, ctx, yggdrasil_up=True)
        targets = dial_targets(ctx)
    assert len(statuses) == N - 1 and sum(s.up for s in statuses) == 1
    assert statuses[5].reason == "no link"
    assert len(view.missing) == N - 2 and [p.node_id for p in view.peers] == ["node-0001"]
    assert metrics.peers_planned == N - 1
    assert len(targets) == N - 1
    # Another node's view of the same plan: it dials only the ids above its own.
    assert len(m.dials("node-0500")) == N - 501 and len(m.neighbours("node-0500")) == N - 1
