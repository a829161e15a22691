"""The app when its source or its agents are gone: real closed ports and real (bad) files, no mesh needed."""

from __future__ import annotations

import json
from pathlib import Path

from textual.widgets import Static

from dashboard.app import X0Dash
from dashboard.providers.inventory import InventoryProvider
from dashboard.screens.drills import DrillScreen
from dashboard.screens.help import HelpScreen
from dashboard.screens.source_error import SourceErrorScreen
from dashboard.widgets.event_log import EventLog
from dashboard.widgets.node_table import NodeTable

from .conftest import closed_port, until


def write_inventory(path: Path, ports: list[int], **extra: object) -> Path:
    doc = {
        "mesh": "dead",
        "mode": "loopback",
        "api_token": "t0k",
        "links": [["node-a", "node-b"], ["node-b", "node-c"], ["node-a", "node-c"]],
        "nodes": [
            {"id": f"node-{c}", "agent_url": f"http://127.0.0.1:{p}"} for c, p in zip("abc", ports, strict=True)
        ],
    }
    doc.update(extra)
    path.write_text(json.dumps(doc))
    path.chmod(0o600)
    return path


async def test_all_agents_down(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv.json", [closed_port() for _ in range(3)])
    app = X0Dash(InventoryProvider(inv), interval=0.3, timeout=0.5, reports_dir=tmp_path / "reports")
    app.engine.steady_timeout = 1.0
    async with app.run_test(size=(120, 36)) as pilot:
        await until(pilot, "first poll", lambda: app.view is not None)
        view = app.view
        assert [n.state for n in view.nodes] == ["down", "down", "down"]
        assert all("cannot connect" in n.detail for n in view.nodes), [n.detail for n in view.nodes]
        assert (view.nodes_healthy, view.links_up) == (0, 0)
        assert app.query_one(NodeTable).node_ids == ["node-a", "node-b", "node-c"]
        log = app.screen.query_one(EventLog)
        assert sum("down" in e.text for e in log.events) == 3
        assert "0/3" in app.screen.query_one("#header", Static).render_header().plain
        # The UI answers while every poll fails.
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        # A drill on a dead mesh is refused with the reason, not attempted.
        await pilot.press("d")
        assert isinstance(app.screen, DrillScreen)
        app.screen.query_one("#target").value = "node-b"
        await pilot.press("s")
        await pilot.press("y")
        await until(pilot, "refusal", lambda: app.last_drill_error is not None)
        assert "not in a steady state" in app.last_drill_error
        assert "refused" in str(app.screen.query_one("#drill-status", Static).render())


async def test_source_that_fails_to_start(tmp_path: Path) -> None:
    app = X0Dash(InventoryProvider(tmp_path / "missing.json"), reports_dir=tmp_path)
    async with app.run_test() as pilot:
        await until(pilot, "error screen", lambda: isinstance(app.screen, SourceErrorScreen))
        assert "does not exist" in app.screen.error and "x0-agent local-mesh" in app.screen.error
        await pilot.press("q")
        await pilot.pause(0.2)
    assert app.return_code == 3


async def test_malformed_inventory_names_the_field_and_retry_recovers(tmp_path: Path) -> None:
    inv = tmp_path / "inv.json"
    inv.write_text(json.dumps({"nodes": [{"id": "node-a"}]}))
    app = X0Dash(InventoryProvider(inv), interval=0.3, timeout=0.5, reports_dir=tmp_path)
    async with app.run_test() as pilot:
        await until(pilot, "error screen", lambda: isinstance(app.screen, SourceErrorScreen))
        assert "nodes[0]: missing 'agent_url'" in app.screen.error
        write_inventory(inv, [closed_port()] * 3)
        await pilot.press("r")
        await until(pilot, "polling after retry", lambda: app.view is not None)
        assert not isinstance(app.screen, SourceErrorScreen)
        assert app.view.nodes_total == 3
