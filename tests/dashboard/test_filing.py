"""Filing drill reports in the mesh-wide drill history (issue 12, "drills from anywhere"): the record x0dash
files, how it merges with the saved report, a report too large for one store value, and a filing no agent takes,
shown on screen with the local report still saved. Real refusals and real filings by real agents are in
test_app_live.py (a 3-node mesh with Raft)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from dashboard.agent_client import AgentClient
from dashboard.drills.filing import drill_record, file_report, fit, record_id
from dashboard.drills.history import merge
from dashboard.drills.report import from_json, save
from dashboard.drills.scoring import ActionSeen, DrillReport, ObserverScore, TimelineEntry
from dashboard.screens.drills import DrillScreen
from dashboard.widgets.event_log import EventLog

from .conftest import closed_port, until
from .record_fixtures import REPORT_FILE
from .test_operator_ui import screen_text, squeezed
from .test_snapshots import feed, recorded_app


def saved_suffixes(directory: Path) -> list[str]:
    return sorted(p.suffix for p in directory.iterdir())


def recorded_report() -> DrillReport:
    return from_json(REPORT_FILE.read_bytes())


def test_the_record_carries_the_whole_report_under_the_agents_drill_id(tmp_path: Path) -> None:
    report = recorded_report()
    record = drill_record(report, "x0dash@ops:42")
    f = report.fault
    assert (record.id, record.kind, record.node_id, record.source) == (f.drill_id, "blackhole", "node-b", "x0dash")
    # Same id and start as the agent's own record of its drill: the same store key, so ours replaces it.
    assert (record.started_at, record.reverted_at, record.state) == (f.started_at, f.ended_at, "reverted")
    assert record.holder == "x0dash@ops:42" and record.targets == ["node-b"]
    assert record.detail.startswith("FAIL: blackhole on node-b")
    assert msgspec.convert(record.report, DrillReport) == report  # what another x0dash reads back
    # The history view merges the saved report and the filed record into one drill.
    paths = save(report, tmp_path)
    rows = merge([(paths[0], report)], [record], {})
    assert len(rows) == 1 and rows[0].seen_in == ["report", "mesh history"] and rows[0].holder == "x0dash@ops:42"


def test_a_fault_the_source_made_is_filed_under_its_saved_reports_name(tmp_path: Path) -> None:
    report = recorded_report()
    local = msgspec.structs.replace(
        report,
        kind="node-loss",
        fault=msgspec.structs.replace(report.fault, kind="node-loss", drill_id=None, clock="dashboard"),
    )
    paths = save(local, tmp_path)
    assert record_id(local) == paths[0].stem
    record = drill_record(local, "x0dash@ops:42")
    rows = merge([(paths[0], local)], [record], {})
    assert [r.id for r in rows] == [paths[0].stem] and rows[0].seen_in == ["report", "mesh history"]
    # Elsewhere, with only the mesh history: the report is there, decoded.
    [row] = merge([], [record], {})
    assert row.report == local and row.state == "FAIL"


def test_a_report_too_large_for_one_store_value_is_trimmed_and_says_what_went() -> None:
    report = recorded_report()
    many = [
        msgspec.structs.replace(report.observers[0], observer=f"node-{i:04d}", note="n" * 40) for i in range(60)
    ]
    steps = [TimelineEntry(at=1.0, t_s=0.1, node=f"node-{i:04d}", what="x" * 200) for i in range(400)]
    acts = [
        ActionSeen(observer="node-a", id=f"a{i}", at=1.0, action="add_peer", target="node-b", outcome="ok")
        for i in range(200)
    ]
    big = msgspec.structs.replace(report, observers=many, timeline=steps, actions=acts)
    record, trimmed = fit(drill_record(big, "x0dash@ops:42"), limit=64 * 1024)
    assert len(msgspec.json.encode(record)) <= 64 * 1024
    assert "timeline and heal actions" in trimmed
    back = msgspec.convert(record.report, DrillReport)
    assert back.timeline == [] and back.actions == [] and len(back.observers) == 60
    # Even the observers do not fit: the record stays, with the verdict in its detail, and says so.
    huge = msgspec.structs.replace(big, observers=[*many] * 30)
    record, trimmed = fit(drill_record(huge, "x0dash@ops:42"), limit=64 * 1024)
    assert record.report is None and "the report itself" in trimmed and record.detail.startswith("FAIL: ")
    # A small report goes whole.
    assert fit(drill_record(report, "x")) == (drill_record(report, "x"), "")
    assert isinstance(many[0], ObserverScore)


async def test_no_agent_answering_is_retried_then_reported_with_each_reason() -> None:
    now = [0.0]
    naps: list[float] = []

    async def sleep(s: float) -> None:
        naps.append(s)
        now[0] += s

    nodes = [(n, f"http://127.0.0.1:{closed_port()}") for n in ("node-a", "node-c")]
    async with AgentClient(timeout=1.0, token="t" * 32) as client:
        filed = await file_report(
            client, nodes, recorded_report(), retry_for_s=3, retry_every_s=1, clock=lambda: now[0], sleep=sleep
        )
    assert not filed.ok and filed.via is None
    assert filed.detail.startswith("no agent took it within 3 s (node-a: cannot connect")
    assert "node-c: cannot connect" in filed.detail
    assert len(naps) >= 3  # retried (a mesh right after a partition may have no leader for a while)


@pytest.mark.parametrize("size", [(80, 24), (200, 50)])
async def test_a_filing_no_agent_takes_is_shown_and_the_report_still_saved(
    size: tuple[int, int], tmp_path: Path
) -> None:
    app, update = recorded_app()
    app.reports_dir = tmp_path
    app.filing_retry_s = 0.5
    app.session.client.token = "t" * 32  # else it is refused before asking anyone (no token: said as such)
    dead = f"http://127.0.0.1:{closed_port()}"
    view = msgspec.structs.replace(
        update.view, nodes=tuple(msgspec.structs.replace(n, agent_url=dead) for n in update.view.nodes)
    )
    report = recorded_report()
    async with app.run_test(size=size, notifications=True) as pilot:
        await feed(app, msgspec.structs.replace(update, view=view))(pilot)
        await pilot.press("d")
        app.last_report = report  # as the drill worker leaves it, then saves and files
        app.run_worker(app.finish_report(report))
        await until(pilot, "the filing's outcome", lambda: app.last_filing is not None, within=20)
        await pilot.pause()
        filed = app.last_filing
        assert filed is not None and not filed.ok and "cannot connect" in filed.detail
        assert saved_suffixes(tmp_path) == [".json", ".md"]  # saved here all the same
        assert any("NOT filed in the mesh history" in (n.title or "") for n in app._notifications)
        app.clear_notifications()  # at 80x24 the toasts cover the status line until they time out
        await pilot.pause()
        assert isinstance(app.screen, DrillScreen)
        shown = squeezed(screen_text(app))
        assert "meshhistory:NOTfiled:noagenttookit" in shown, screen_text(app)
        await pilot.press("escape")
        log = app.screen.query_one(EventLog)
        assert any("report NOT filed in the mesh history" in e.text for e in log.events)
