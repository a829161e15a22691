"""Snapshot tests of the overview, node detail and a finished drill report, at 140x42, 80x24 and 200x50.

They draw data recorded from a real 3-node mesh (tests/dashboard/data, see record_fixtures.py) through the same
messages and widgets as live polls, with a fixed clock and time zone, so the pictures only change when the
screens do. Each test waits until the screen it pictures is composed and shows the data, and checks the app did
not die on the way: a snapshot of a crashed app is an empty picture that matches itself forever. Update after an
intended change with `pytest tests/dashboard/test_snapshots.py --snapshot-update`, then look at every picture
(e.g. `rsvg-convert -b white FILE.raw -o FILE.png`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Markdown

from dashboard.app import X0Dash
from dashboard.drills.engine import DrillStep
from dashboard.drills.filing import Filed
from dashboard.drills.report import from_json
from dashboard.messages import MeshUpdated
from dashboard.screens.drills import DrillScreen
from dashboard.screens.node_detail import NodeDetailScreen
from dashboard.screens.overview import OverviewScreen
from dashboard.session import MeshUpdate
from dashboard.widgets.event_log import EventLog
from dashboard.widgets.node_table import NodeTable
from dashboard.widgets.timeline import DrillTimeline

from .conftest import app_error, until_screen
from .record_fixtures import REPORT_FILE, recorded_app

# 200x50 and 80x24 are the sizes issue 12 tried x0dash at (tmux); 140x42 is a common laptop terminal.
SIZES = [
    pytest.param((140, 42), id="140x42"),
    pytest.param((80, 24), id="80x24"),
    pytest.param((200, 50), id="200x50"),
]


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


async def overview_with_data(pilot: Pilot, app: X0Dash, update: MeshUpdate) -> None:
    app.post_message(MeshUpdated(update))  # before the overview is composed, as a first poll may
    await until_screen(
        pilot,
        OverviewScreen,
        "3 nodes and every event",
        lambda s: (
            s.query_one(NodeTable).node_ids == ["node-a", "node-b", "node-c"]
            and len(s.query_one(EventLog).events) == len(update.events)
        ),
    )


def feed(app: X0Dash, update: MeshUpdate) -> Callable[[Pilot], Awaitable[None]]:
    """A run_before for snap_compare (also used by test_operator_ui): the overview with the recorded data."""

    async def run_before(pilot: Pilot) -> None:
        await overview_with_data(pilot, app, update)

    return run_before


def check_alive(app: X0Dash) -> None:
    # snap_compare's pilot ends with app.exit(svg) whatever happened: a crash shows only in the app's error.
    assert app_error(app) is None, f"the app died: {app_error(app)!r}"
    assert app.return_code == 0


@pytest.mark.parametrize("size", SIZES)
def test_overview_snapshot(snap_compare, size: tuple[int, int]) -> None:
    app, update = recorded_app()
    shown: list[type] = []

    async def run_before(pilot: Pilot) -> None:
        await overview_with_data(pilot, app, update)
        shown.append(type(app.screen))

    assert snap_compare(app, terminal_size=size, run_before=run_before)
    check_alive(app)
    assert shown == [OverviewScreen]


@pytest.mark.parametrize("size", SIZES)
def test_node_detail_snapshot(snap_compare, size: tuple[int, int]) -> None:
    app, update = recorded_app()
    shown: list[type] = []

    async def run_before(pilot: Pilot) -> None:
        await overview_with_data(pilot, app, update)
        await pilot.press("enter")  # the cursor is on node-a
        screen = await until_screen(
            pilot,
            NodeDetailScreen,
            "node-a's peers and routes",
            lambda s: (
                s.query_one("#peers", DataTable).row_count == 2 and s.query_one("#routes", DataTable).row_count > 0
            ),
        )
        assert screen.node_id == "node-a"
        shown.append(type(screen))

    assert snap_compare(app, terminal_size=size, run_before=run_before)
    check_alive(app)
    assert shown == [NodeDetailScreen]


@pytest.mark.parametrize("size", SIZES)
def test_finished_drill_report_snapshot(snap_compare, size: tuple[int, int]) -> None:
    app, update = recorded_app()
    report = from_json(REPORT_FILE.read_bytes())
    app.last_report = report
    app.last_report_paths = [
        Path("reports/drill-blackhole-node-b.json"),
        Path("reports/drill-blackhole-node-b.md"),
    ]
    app.drill_steps = [DrillStep(at=e.at, t_s=e.t_s, what=e.what, node=e.node) for e in report.timeline]
    app.last_filing = Filed(ok=True, via="node-a", detail="filed in the mesh history via node-a")
    shown: list[type] = []

    async def run_before(pilot: Pilot) -> None:
        await overview_with_data(pilot, app, update)
        app.push_screen(DrillScreen("node-b"))
        screen = await until_screen(
            pilot,
            DrillScreen,
            "the timeline and the report",
            lambda s: (
                len(s.query_one(DrillTimeline).rows) == len(report.timeline)
                and s.query_one("#report-box").display
                and "blackhole" in s.query_one("#report", Markdown).source
            ),
        )
        shown.append(type(screen))

    assert snap_compare(app, terminal_size=size, run_before=run_before)
    check_alive(app)
    assert shown == [DrillScreen]
