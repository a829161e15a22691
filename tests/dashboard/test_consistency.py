"""Issue 12 item 5: every number on screen comes from one judgement, so two widgets never contradict each other.
Built from the recorded 3-node mesh (real agent replies), changed the way the reported situations changed it."""

from __future__ import annotations

import msgspec
import pytest

from dashboard.models import AgentData, merge
from dashboard.screens.node_detail import NodeDetailScreen
from dashboard.widgets.header import MeshHeader
from dashboard.widgets.node_table import row_cells
from dashboard.widgets.styles import fmt_ms

from .record_fixtures import load_recording, recorded_app
from .test_operator_ui import SIZES, screen_text
from .test_snapshots import feed


def _peers_down_to(agent: AgentData, lost: str) -> None:
    assert agent.peers is not None
    peers = [msgspec.structs.replace(p, up=False) if p.node_id == lost else p for p in agent.peers.peers]
    agent.peers = msgspec.structs.replace(agent.peers, peers=peers)


def test_killed_daemon_node_peers_agree_with_the_header() -> None:
    # node-c's daemon killed: its agent still answers /health (503, degraded) but not /mesh/status or /mesh/peers,
    # so its last status (2/2 peers) is stale; node-a and node-b lost their links to it.
    rec = load_recording()
    c = rec.agents["node-c"]
    assert c.health is not None
    failing = [msgspec.structs.replace(ch, ok=False, detail="daemon not running") for ch in c.health.checks]
    c.health = msgspec.structs.replace(c.health, status="degraded", checks=failing)
    c.endpoint_errors = {"status": "HTTP 503: daemon down", "peers": "HTTP 503: daemon down"}
    _peers_down_to(rec.agents["node-a"], "node-c")
    _peers_down_to(rec.agents["node-b"], "node-c")
    view = merge(rec.snapshot, rec.agents, rec.taken_at + 0.4)
    assert (view.links_up, view.links_planned) == (1, 3)
    peers = {n.id: row_cells(n)["peers"] for n in view.nodes}
    assert {k: str(v) for k, v in peers.items()} == {"node-a": "1/2", "node-b": "1/2", "node-c": "0/2"}
    # Every node's count adds up to the header's: each up link has two ends.
    assert sum(n.peers_up or 0 for n in view.nodes) == 2 * view.links_up


@pytest.mark.parametrize("size", SIZES[:1])
async def test_peer_latency_in_node_detail_is_the_topologys(size: tuple[int, int]) -> None:
    # The topology drew "13ms" (MAPE-K's probe round trip) on a link whose peers table said latency "-".
    app, update = recorded_app()
    async with app.run_test(size=size) as pilot:
        await feed(app, update)(pilot)
        await pilot.press("enter")
        assert isinstance(app.screen, NodeDetailScreen) and app.screen.node_id == "node-a"
        table = app.screen.query_one("#peers")
        col = table.columns_shown.index("latency")  # (columns drop by importance at 80x24; latency stays)
        shown = {str(table.get_row_at(i)[0]): str(table.get_row_at(i)[col]) for i in range(table.row_count)}
        links = {lk.b: lk for lk in app.view.links if lk.a == "node-a"}
        assert shown == {peer: fmt_ms(lk.latency_ms) for peer, lk in links.items()}
        assert all(v != "-" for v in shown.values())


def test_header_says_how_much_of_the_mesh_a_node_reaches() -> None:
    # A ring that just started: every agent healthy (8/8) while one logs "partition (4/8 members reachable)".
    rec = load_recording()
    a = rec.agents["node-a"]
    assert a.mapek is not None
    a.mapek = msgspec.structs.replace(a.mapek, members_reachable=1)
    view = merge(rec.snapshot, rec.agents, rec.taken_at + 0.4)
    assert view.nodes_healthy == 3
    header = MeshHeader(lambda: rec.taken_at + 0.5)
    header.view = view
    line = header.render_header().plain
    assert "reach 1/3" in line and "nodes 3/3 up" in line


@pytest.mark.parametrize("size", SIZES)
async def test_header_fits_the_terminal(size: tuple[int, int]) -> None:
    app, update = recorded_app()
    async with app.run_test(size=size) as pilot:
        await feed(app, update)(pilot)
        second = screen_text(app).splitlines()[1]
        for part in ("nodes 3/3 up", "links 3/3", "reach 3/3", "incidents 0", "data 0.4 s"):
            assert part in second, second
