"""Snapshot tests of the overview, node detail and a finished drill report.

They draw data recorded from a real 3-node mesh (tests/dashboard/data, see record_fixtures.py) through the same
messages and widgets as live polls, with a fixed clock and time zone, so the pictures only change when the
screens do. Update after an intended change with `pytest tests/dashboard/test_snapshots.py --snapshot-update`
and look at the diff report.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dashboard.app import X0Dash
from dashboard.drills.engine import DrillStep
from dashboard.drills.report import from_json
from dashboard.events import action_event, incident_event
from dashboard.messages import MeshUpdated
from dashboard.models import merge
from dashboard.providers.inventory import InventoryProvider
from dashboard.screens.drills import DrillScreen
from dashboard.session import MeshUpdate

from .record_fixtures import REPORT_FILE, load_recording

SIZE = (140, 42)


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


def recorded_app() -> tuple[X0Dash, MeshUpdate]:
    rec = load_recording()
    now = rec.taken_at + 0.4
    # The provider is never started (autopoll=False): the recorded poll stands in for it.
    app = X0Dash(
        InventoryProvider(Path("recorded-inventory.json")),
        autopoll=False,
        clock=lambda: now,
        reports_dir=Path("reports"),
    )
    view = merge(rec.snapshot, rec.agents, now, polled_at=rec.taken_at, poll_duration_s=0.042)
    for _ in range(4):  # plus the one the update itself records: five points per sparkline
        app.history.record(view)
    events = [incident_event(a.node_id, i, "opened") for a in rec.agents.values() for i in a.incidents.values()]
    events += [
        incident_event(a.node_id, i, "resolved")
        for a in rec.agents.values()
        for i in a.incidents.values()
        if i.resolved_at is not None
    ]
    events += [action_event(a.node_id, x) for a in rec.agents.values() for x in a.actions.values()]
    return app, MeshUpdate(view=view, events=events, poll=None, agents=rec.agents)


def feed(app: X0Dash, update: MeshUpdate):
    async def run_before(pilot) -> None:
        app.post_message(MeshUpdated(update))
        await pilot.pause()

    return run_before


def test_overview_snapshot(snap_compare) -> None:
    app, update = recorded_app()
    assert snap_compare(app, terminal_size=SIZE, run_before=feed(app, update))


def test_node_detail_snapshot(snap_compare) -> None:
    app, update = recorded_app()
    assert snap_compare(app, terminal_size=SIZE, run_before=feed(app, update), press=["enter", "_"])


def test_finished_drill_report_snapshot(snap_compare) -> None:
    app, update = recorded_app()
    report = from_json(REPORT_FILE.read_bytes())
    app.last_report = report
    app.last_report_paths = [
        Path("reports/drill-blackhole-node-b.json"),
        Path("reports/drill-blackhole-node-b.md"),
    ]
    app.drill_steps = [DrillStep(at=e.at, t_s=e.t_s, what=e.what, node=e.node) for e in report.timeline]

    async def run_before(pilot) -> None:
        await feed(app, update)(pilot)
        app.push_screen(DrillScreen("node-b"))
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
