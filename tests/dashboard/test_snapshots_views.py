"""Snapshot tests of the logs view and the drill-history view (issue 12), at 80x24 and 200x50.

Recorded data only (tests/dashboard/data, see record_history.py and record_fixtures.py): the 3-node poll, a saved
report, the mesh-wide history as a real agent served it, and node-a's real agent.log; fixed clock and time zone,
and paths relative to a fixed directory, so the pictures only change when the screens do. Each test waits until
its screen shows the data and checks the app did not die on the way. Update after an intended change with
`pytest tests/dashboard/test_snapshots_views.py --snapshot-update`, then look at every picture.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import msgspec
import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Log, Markdown

from dashboard import wire
from dashboard.drills.report import from_json, save
from dashboard.providers.inventory import InventoryProvider
from dashboard.screens.drill_history import DrillHistoryScreen
from dashboard.screens.logs import LogScreen
from dashboard.screens.node_detail import NodeDetailScreen

from .conftest import until_screen
from .record_fixtures import REPORT_FILE, recorded_app
from .record_history import DATA, HISTORY_FILE, LOGS_DIR
from .test_snapshots import check_alive, overview_with_data

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((200, 50), id="200x50")]


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


@pytest.mark.parametrize("size", SIZES)
def test_logs_view_snapshot(snap_compare, size: tuple[int, int], tmp_path: Path, monkeypatch) -> None:
    # The run dir is the recorded one, named relative to tests/dashboard/data: the path on screen is fixed.
    monkeypatch.chdir(DATA)
    inventory = tmp_path / "inventory.json"
    inventory.write_text(
        json.dumps(
            {
                "mesh": "local-6845",
                "mesh_dir": LOGS_DIR.name,
                "nodes": [{"id": f"node-{c}", "agent_url": "http://127.0.0.1:9"} for c in "abc"],
            }
        )
    )
    provider = InventoryProvider(inventory)
    provider.start()
    app, update = recorded_app()
    app.session.provider = provider  # the recorded mesh, with the recorded run dir for its logs
    lines = len((LOGS_DIR / "node-a" / "agent.log").read_text().splitlines())
    shown: list[type] = []

    async def run_before(pilot: Pilot) -> None:
        await overview_with_data(pilot, app, update)
        await pilot.press("enter")
        await until_screen(pilot, NodeDetailScreen, "node-a", lambda s: s.node_id == "node-a")
        await pilot.press("L")
        screen = await until_screen(
            pilot, LogScreen, "node-a's agent.log, whole", lambda s: s.query_one(Log).line_count == lines
        )
        await pilot.press("slash", *"MAPE-K running", "enter")  # a search: the match is brought into view
        await until_screen(pilot, LogScreen, "the match", lambda s: s.match_at >= 0)
        shown.append(type(screen))

    assert snap_compare(app, terminal_size=size, run_before=run_before)
    check_alive(app)
    assert shown == [LogScreen]


@pytest.mark.parametrize("size", SIZES)
def test_drill_history_view_snapshot(snap_compare, size: tuple[int, int], tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    reports = Path("reports")
    save(from_json(REPORT_FILE.read_bytes()), reports)  # a drill this x0dash ran a week earlier
    recorded = msgspec.json.decode(HISTORY_FILE.read_bytes(), type=wire.DrillHistory).drills
    app, update = recorded_app()
    app.reports_dir = reports

    async def served_history(url: str, limit: int = 200, since: float = 0.0) -> list[wire.DrillRecord]:
        return recorded  # what node-a served after those drills (record_history.py), not a live agent

    monkeypatch.setattr(app.session.client, "drill_history", served_history)
    shown: list[type] = []

    async def run_before(pilot: Pilot) -> None:
        await overview_with_data(pilot, app, update)
        await pilot.press("D")
        screen = await until_screen(
            pilot,
            DrillHistoryScreen,
            "four drills and the trends",
            lambda s: len(s.rows) == 4 and s.query_one("#history", DataTable).row_count == 4 and bool(s.plotted),
        )
        await pilot.press("j")  # the partition drill: its report, filed by the x0dash that ran it
        await until_screen(
            pilot,
            DrillHistoryScreen,
            "the partition report",
            lambda s: "Drill partition on node-c" in s.query_one("#history-report", Markdown).source,
        )
        shown.append(type(screen))

    assert snap_compare(app, terminal_size=size, run_before=run_before)
    check_alive(app)
    assert shown == [DrillHistoryScreen]
