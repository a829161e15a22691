"""x0dash against a real 3-node netns mesh (agents, Yggdrasil daemons, MAPE-K, nftables drills): navigation,
filter, node detail, drills through the UI (complete and aborted) and headless, one agent silent then down.

The tests share one mesh and run in file order; each leaves the mesh whole for the next.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import msgspec
import pytest
from textual.command import CommandPalette
from textual.widgets import DataTable, Input, Select, Static

from dashboard.app import X0Dash
from dashboard.drills.engine import SETTLE_S, DrillEngine, DrillPlan, DrillRefused
from dashboard.drills.report import from_json
from dashboard.drills.scoring import DrillReport
from dashboard.providers.inventory import InventoryProvider
from dashboard.providers.local import LocalProvider
from dashboard.screens.confirm import ConfirmDrillScreen
from dashboard.screens.drills import DrillScreen
from dashboard.screens.help import HelpScreen
from dashboard.screens.node_detail import NodeDetailScreen
from dashboard.screens.overview import OverviewScreen
from dashboard.session import MeshSession
from dashboard.widgets.node_table import NodeTable
from dashboard.widgets.timeline import DrillTimeline
from dashboard.widgets.topology import TopologyView

from .conftest import until

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.yggdrasil]

LOOSE_SLO = ["--detect-slo", "10", "--repair-slo", "20"]  # the tests check the measuring, not MAPE-K's speed


def make_app(mesh: object, tmp_path: Path) -> X0Dash:
    return X0Dash(
        InventoryProvider(mesh.inventory_path),
        interval=0.5,
        timeout=1.0,  # type: ignore[attr-defined]
        reports_dir=tmp_path / "reports",
    )


def whole(app: X0Dash) -> bool:
    v = app.view
    return v is not None and v.nodes_healthy == 3 and v.links_up == 3 and v.incidents_active == 0


def agent_incidents(url: str, since: float) -> list[dict]:
    with httpx.Client(trust_env=False, timeout=3) as c:
        return c.get(f"{url}/mapek/incidents", params={"since": since}).json()["incidents"]


def mesh_history(url: str) -> list[dict]:
    with httpx.Client(trust_env=False, timeout=5) as c:
        return c.get(f"{url}/drills/history").json()["drills"]


def agent_drills(url: str) -> dict:
    with httpx.Client(trust_env=False, timeout=3) as c:
        return c.get(f"{url}/drills").json()


def check_measured_from_records(report: DrillReport, mesh: object) -> None:
    """Detection by both other nodes, full recovery, and every time equal to one the agents recorded."""
    assert report.target == "node-b"
    assert [o.observer for o in report.observers] == ["node-a", "node-c"]
    for o in report.observers:
        assert o.detected_at is not None and o.repaired_at is not None, o
        # What the scoring counts (dashboard.drills.scoring.relevant): incidents about the target, and a partition
        # of the mesh (an observer that also lost the third node for a moment, seen on a loaded machine).
        records = [
            i
            for i in agent_incidents(mesh.node(o.observer).agent_url, report.fault.started_at - 0.5)
            if (i["subject"] == "node-b" or i["kind"] == "partition")
            and i["detected_at"] >= report.fault.started_at - 0.5
        ]
        assert records, f"{o.observer} has no incident about node-b"
        # The drill ended only after the mesh had stayed whole for the settle time from steady_confirmed_at: an
        # incident detected before that is in the report. An agent reopens an incident that comes back within a
        # minute under the same id with a new detected_at (CI of stop 18: 2.3 s after the repair the report
        # measured); one reopened after the drill ended is past what the report covers, and its earlier times are
        # gone from the record.
        assert report.steady_confirmed_at is not None
        assert report.created_at - report.steady_confirmed_at >= SETTLE_S
        own = [i for i in records if i["detected_at"] < report.steady_confirmed_at]
        later = [i for i in records if i["detected_at"] >= report.steady_confirmed_at]
        assert own or later
        # The engine keeps the earliest detection it saw.
        assert o.detected_at <= min(i["detected_at"] for i in own or later) + 1e-6
        assert o.detected_at >= report.fault.started_at - 0.5
        resolved = [i["resolved_at"] for i in own]
        assert None not in resolved, own  # resolved before the mesh was whole again
        if later:
            assert not resolved or o.repaired_at >= max(resolved)
        else:
            assert o.repaired_at == max(resolved)
    mine = next(d for d in agent_drills(mesh.node("node-b").agent_url)["past"] if d["id"] == report.fault.drill_id)
    assert (mine["started_at"], mine["reverted_at"]) == (report.fault.started_at, report.fault.ended_at)
    assert report.recovered and report.after is not None and report.after.links_up == 3


async def test_overview_filter_detail_help_palette(mesh: object, tmp_path: Path) -> None:
    app = make_app(mesh, tmp_path)
    async with app.run_test(size=(140, 42)) as pilot:
        await until(pilot, "mesh whole on screen", lambda: whole(app), within=60)
        table = app.query_one(NodeTable)
        assert table.node_ids == ["node-a", "node-b", "node-c"]
        assert app.query_one(TopologyView).mode == "ring"
        assert all(n.address and n.address.startswith("2") for n in app.view.nodes)

        await pilot.press("slash", *"node-b")
        assert table.node_ids == ["node-b"]
        await pilot.press("escape")
        assert app.screen.query_one("#filter", Input).display is False
        assert table.node_ids == ["node-a", "node-b", "node-c"]

        assert table.selected_node == "node-b"  # the cursor stays on the node it was on under the filter
        await pilot.press("enter")
        assert isinstance(app.screen, NodeDetailScreen) and app.screen.node_id == "node-b"
        screen = app.screen
        peers = screen.query_one("#peers", DataTable)
        await until(pilot, "node-b's peers listed", lambda: peers.row_count == 2)
        routes = screen.query_one("#routes", DataTable)
        await until(
            pilot,
            "node-b's routes fetched",
            lambda: routes.row_count > 0 and "fetching" not in str(routes.get_row_at(0)[1]),
        )
        assert "node-b" in app.session.poller.detail_nodes
        await pilot.press("escape")
        assert isinstance(app.screen, OverviewScreen)
        assert "node-b" not in app.session.poller.detail_nodes  # routes only while someone looks

        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.press("ctrl+p")
        assert isinstance(app.screen, CommandPalette)
        await pilot.press(*"Node node-c")
        await pilot.pause(0.5)  # the palette searches in a worker
        await pilot.press("enter")
        await until(pilot, "palette opens node-c", lambda: isinstance(app.screen, NodeDetailScreen))
        assert app.screen.node_id == "node-c"


async def test_drill_through_the_ui_confirm_then_report(mesh: object, tmp_path: Path) -> None:
    app = make_app(mesh, tmp_path)
    async with app.run_test(size=(140, 42)) as pilot:
        await until(pilot, "mesh whole", lambda: whole(app), within=60)
        await pilot.press("d")
        screen = app.screen
        assert isinstance(screen, DrillScreen)
        screen.query_one("#target", Select).value = "node-b"
        screen.query_one("#duration", Input).value = "3"
        screen.query_one("#slo-detect", Input).value = "10"
        screen.query_one("#slo-repair", Input).value = "20"
        await pilot.press("s")
        assert isinstance(app.screen, ConfirmDrillScreen)
        assert "silently drop" in app.screen.description and "3 s" in app.screen.description
        await pilot.press("n")  # the default answer changes nothing
        assert app.engine.running is None and not app.drill_steps
        await pilot.press("s", "y")
        await until(pilot, "drill running", lambda: app.engine.running is not None)
        assert "blackhole on node-b" in (app.drill_banner or "")
        await until(pilot, "report", lambda: app.last_report is not None, within=90)
        report = app.last_report
        check_measured_from_records(report, mesh)
        steps = [s.what for s in app.drill_steps]
        assert any(s.startswith("fault injected") for s in steps)
        assert sum(s.startswith("first detection by") for s in steps) == 2
        assert any(s.startswith("full recovery") for s in steps)
        assert {p.suffix for p in app.last_report_paths} == {".json", ".md"}
        # Item 3: the steps reach the event log too (the README promises them there), as "drill" events.
        await until(
            pilot,
            "the last step logged",
            lambda: any("drill: PASS" in e.text or "drill: FAIL" in e.text for e in app.recent_events),
        )
        logged = [e.text for e in app.recent_events if e.kind == "drill"]
        # The drill history (D) lists it with its report, and as node-b's agent knows it.
        await pilot.press("escape", "D")
        history = app.screen
        await until(
            pilot,
            "the drill in the history",
            lambda: any(r.id == report.fault.drill_id and "agent node-b" in r.seen_in for r in history.rows),
        )
        row = next(r for r in history.rows if r.id == report.fault.drill_id)
        assert "report" in row.seen_in and row.state == ("PASS" if report.passed else "FAIL")
        # Filed in the mesh-wide history with its report: any node (here node-c) serves it to anyone.
        await until(pilot, "the report filed", lambda: app.last_filing is not None, within=40)
        assert app.last_filing.ok, app.last_filing
        filed = next(d for d in mesh_history(mesh.node("node-c").agent_url) if d["id"] == report.fault.drill_id)
        assert filed["source"] == "x0dash" and filed["holder"].startswith("x0dash@")
        assert msgspec.convert(filed["report"], DrillReport) == report
        await pilot.press("escape", "d")
        assert "drill: fault injected: agent drill blackhole" in logged
        assert sum(t.startswith("drill: first detection by") for t in logged) == 2
        assert from_json(app.last_report_paths[0].read_bytes()) == report
        assert screen.query_one("#report-box").display is True
        # One timeline on screen once the report exists: the report's, sorted, as the saved Markdown has it.
        shown = screen.query_one(DrillTimeline).rows
        assert [(r.t_s, r.what) for r in shown] == [(e.t_s, e.what) for e in report.timeline]


async def test_abort_reverts_at_once_and_second_drill_is_refused(mesh: object, tmp_path: Path) -> None:
    app = make_app(mesh, tmp_path)
    async with app.run_test(size=(140, 42)) as pilot:
        await until(pilot, "mesh whole", lambda: whole(app), within=60)
        app.start_drill(DrillPlan(kind="blackhole", target="node-c", duration_s=60))
        await until(pilot, "fault injected", lambda: any(s.t_s is not None for s in app.drill_steps), within=60)
        # Another dashboard (its own session) sees the agent's active drill and refuses.
        other = MeshSession(InventoryProvider(mesh.inventory_path))
        await other.start()
        try:
            with pytest.raises(DrillRefused, match="another drill is running: blackhole on node-c"):
                await DrillEngine(other).preflight(DrillPlan(kind="partition", target="node-a", duration_s=5))
        finally:
            await other.close()
        await pilot.press("d", "a")
        await until(pilot, "aborted report", lambda: app.last_report is not None, within=90)
        fault = app.last_report.fault
        assert fault.aborted and fault.ended_at is not None
        assert fault.ended_at - fault.started_at < 30  # reverted long before the 60 s
        assert "aborted by the operator" in app.last_report.failures
        drill = next(d for d in agent_drills(mesh.node("node-c").agent_url)["past"] if d["id"] == fault.drill_id)
        assert drill["state"] == "aborted"
        await until(pilot, "mesh whole again", lambda: whole(app), within=60)


def test_headless_blackhole_and_refusals(mesh: object, tmp_path: Path) -> None:
    base = [
        sys.executable,
        "-m",
        "dashboard.cli",
        "--inventory",
        str(mesh.inventory_path),
        "--reports-dir",
        str(tmp_path),
    ]
    missing = subprocess.run(
        [*base, "drill", "blackhole", "--target", "node-x"], capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 2
    assert "no node 'node-x'" in missing.stderr and "node-a, node-b, node-c" in missing.stderr

    out = subprocess.run(
        [
            *base,
            "drill",
            "blackhole",
            "--target",
            "node-b",
            "--duration",
            "3",
            "--json",
            "--report",
            str(tmp_path / "r.md"),
            *LOOSE_SLO,
        ],
        capture_output=True,
        text=True,
        timeout=150,
    )
    report = from_json(out.stdout)
    # The SLOs are loose (10 s / 20 s): a 3-node mesh heals well within them, so the drill passes and exits 0
    # (the strict case below is the one that must fail).
    assert (out.returncode, report.passed, report.failures) == (0, True, []), out.stderr
    check_measured_from_records(report, mesh)
    assert (tmp_path / "r.md").read_text().startswith("# Drill blackhole on node-b:")
    assert len(list(tmp_path.glob("drill-*-blackhole-node-b.json"))) == 1
    assert "first detection by node-a" in out.stderr and "full recovery" in out.stderr
    assert "x0dash: report filed in the mesh history via node-" in out.stderr, out.stderr
    filed = next(d for d in mesh_history(mesh.node("node-b").agent_url) if d["id"] == report.fault.drill_id)
    assert msgspec.convert(filed["report"], DrillReport) == report

    # An SLO nobody can meet: same drill, measured the same way, exit 1.
    strict = subprocess.run(
        [*base, "drill", "blackhole", "--target", "node-a", "--duration", "2", "--json", "--detect-slo", "0.001"],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert strict.returncode == 1, strict.stderr
    failed = json.loads(strict.stdout)
    # A 2 s fault may end before an observer whose probe timeouts are still stretched (its local health, after
    # the fault above) suspects the target: that fails the same SLO as "never detected".
    assert not failed["passed"] and any(
        "detected after" in f or "never detected" in f for f in failed["failures"]
    ), failed["failures"]


async def test_another_x0dash_finds_the_filed_reports_in_its_history(mesh: object, tmp_path: Path) -> None:
    """Drills run by another x0dash (the UI and headless drills above) show with their reports in the history of
    an x0dash that saved none of them: from the mesh-wide history, served by any node."""
    filed = [d for d in mesh_history(mesh.node("node-a").agent_url) if d["source"] == "x0dash" and d["report"]]
    assert len(filed) >= 2, "the UI and headless drills above filed their reports"
    app = make_app(mesh, tmp_path)  # its own reports dir: empty
    async with app.run_test(size=(140, 42)) as pilot:
        await until(pilot, "mesh whole", lambda: whole(app), within=60)
        await pilot.press("D")
        history = app.screen
        ids = {d["id"] for d in filed}
        await until(pilot, "the filed drills listed", lambda: ids <= {r.id for r in history.rows})
        by_id = {d["id"]: d for d in filed}
        rows = [r for r in history.rows if r.id in by_id]
        for row in rows:  # the UI drill, the aborted one, the headless ones: each with the report it filed
            assert "mesh history" in row.seen_in and "report" not in row.seen_in, row.seen_in
            assert row.report == msgspec.convert(by_id[row.id]["report"], DrillReport)
            assert row.state == ("PASS" if row.report.passed else "FAIL") and "x0dash@" in (row.holder or "")


async def test_a_filing_the_agents_refuse_is_not_retried_and_says_why(mesh: object) -> None:
    from dashboard.agent_client import AgentClient
    from dashboard.drills.filing import file_report

    from .record_fixtures import REPORT_FILE

    naps: list[float] = []

    async def sleep(s: float) -> None:
        naps.append(s)

    nodes = [(n, mesh.node(n).agent_url) for n in ("node-a", "node-c")]
    recorded = from_json(REPORT_FILE.read_bytes())
    # A fault the source made (no agent drill id): nothing to wait for before filing.
    report = msgspec.structs.replace(recorded, fault=msgspec.structs.replace(recorded.fault, drill_id=None))
    # The mesh is on this host (its inventory allows the token in clear on the bridge), as x0dash reads it.
    async with AgentClient(timeout=3, token="not-the-mesh-token-" * 2, allow_clear=True) as client:
        filed = await file_report(client, nodes, report, sleep=sleep)
    assert not filed.ok and filed.detail.startswith("refused by node-a: HTTP 401"), filed
    assert naps == []  # a refusal is not retried (an operator fixes the token; waiting would not)


async def test_the_mesh_wide_lease_of_a_source_made_drill(mesh: object, tmp_path: Path) -> None:
    """A fault another x0dash's source makes (a Nomad allocation stopped, a local node stopped) is invisible in
    the agents' GET /drills: x0dash holds the mesh-wide lease for it. Here another holder's lease shows as a drill
    started elsewhere (banner, drills screen, history) and refuses this x0dash's drill; the lease helpers take,
    refuse a second taker and release, against the real agents."""
    from dashboard.agent_client import AgentClient
    from dashboard.drills import lease
    from dashboard.screens.drill_history import DrillHistoryScreen

    token = json.loads(mesh.inventory_path.read_text())["api_token"]
    urls = [mesh.node(n).agent_url for n in ("node-a", "node-c")]
    async with AgentClient(timeout=3, token=token, allow_clear=True) as client:  # a mesh on this host
        taken, note = await lease.take(
            client, urls, holder="x0dash@ops:4242", kind="node-loss", node_id="node-b", ttl_s=60
        )
        assert taken is not None and "taken" in note
        with pytest.raises(lease.LeaseHeld, match="x0dash@ops:4242"):
            await lease.take(
                client, urls[::-1], holder="x0dash@other:1", kind="partition", node_id="node-a", ttl_s=9
            )
        try:
            app = make_app(mesh, tmp_path)
            async with app.run_test(size=(140, 42)) as pilot:
                await until(pilot, "the banner", lambda: "node-loss on node-b" in (app.drill_banner or ""), 20)
                assert "held by x0dash@ops:4242" in app.drill_banner and "started elsewhere" in app.drill_banner
                with pytest.raises(DrillRefused, match="node-loss on node-b by x0dash@ops:4242"):
                    await app.background.run(
                        app.engine.preflight(DrillPlan(kind="blackhole", target="node-a", duration_s=3))
                    )
                await pilot.press("d")
                status = str(app.screen.query_one("#drill-status", Static).render())
                assert "running elsewhere: node-loss on node-b" in status
                await pilot.press("escape", "D")
                history = app.screen
                assert isinstance(history, DrillHistoryScreen)
                await until(pilot, "listed", lambda: any(r.id == taken.lease.lease_id for r in history.rows))
                row = next(r for r in history.rows if r.id == taken.lease.lease_id)
                assert (row.state, row.seen_in, row.holder) == ("active", ["mesh lease"], "x0dash@ops:4242")
                assert await lease.release(client, taken, urls) == "mesh-wide drill lease released"
                taken = None
                await until(pilot, "banner gone", lambda: app.drill_banner is None, within=10)
        finally:
            if taken is not None:
                await lease.release(client, taken, urls)
        assert await client.drill_lease(urls[1]) is None


async def test_one_agent_silent_then_down_then_back(mesh: object, tmp_path: Path) -> None:
    app = make_app(mesh, tmp_path)
    pid = mesh.agent_pid("node-c")
    assert pid is not None
    async with app.run_test(size=(140, 42)) as pilot:
        await until(pilot, "mesh whole", lambda: whole(app), within=60)
        os.kill(pid, signal.SIGSTOP)  # hung agent: connections hang, nothing is refused
        try:
            await until(pilot, "node-c silent", lambda: app.view.node("node-c").state == "silent", within=15)
            node = app.view.node("node-c")
            assert node.age_s is not None and node.age_s > 0.5 and "last good data" in node.detail
            # The hung agent holds a cycle for at most its deadline (timeout 1 s + 0.5 s), not forever.
            assert app.view.poll_duration_s is not None and app.view.poll_duration_s < 2.5
            assert app.view.node("node-a").state == "up"
            # The UI answers while a poll waits on the hung agent.
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
        finally:
            os.kill(pid, signal.SIGCONT)
        await until(pilot, "node-c back", lambda: app.view.node("node-c").state == "up", within=15)
        mesh.stop_node("node-c")
        try:
            await until(pilot, "node-c down", lambda: app.view.node("node-c").state == "down", within=15)
            await until(
                pilot,
                "links to node-c not up",
                lambda: app.view.links_up == 1 and app.view.nodes_healthy == 2,
                within=30,
            )
            assert any("node-c up → down" in e.text for e in app.screen.query_one("#events").events)
        finally:
            mesh.start_node("node-c")
        await until(pilot, "mesh whole again", lambda: whole(app), within=60)
        await pilot.press("q")
        await until(pilot, "app quits", lambda: not app.is_running, within=30)
    assert app.return_code == 0


async def test_local_source_starts_its_mesh_and_stops_it_on_quit(
    require_yggdrasil: str, require_root: None, tmp_path: Path
) -> None:
    from agent.localmesh import netns

    provider = LocalProvider(2, mode="netns", run_dir=tmp_path / "run")
    app = X0Dash(provider, interval=0.5, reports_dir=tmp_path)
    try:
        async with app.run_test(size=(120, 36)) as pilot:
            await until(
                pilot,
                "local mesh up",
                lambda: app.view is not None and app.view.nodes_healthy == 2 and app.view.links_up == 1,
                within=60,
            )
            assert app.view.source.startswith("local netns mesh") and "(2 nodes)" in app.view.source
            names = [n for n in netns.list_netns() if provider.mesh.id in n]
            assert len(names) == 2
            await pilot.press("q")
            await until(pilot, "app quits", lambda: not app.is_running, within=60)
        assert app.return_code == 0
        assert provider.mesh is None
        assert [n for n in netns.list_netns() if n in names] == []
    finally:
        provider.stop()


async def test_a_drill_started_elsewhere_shows_its_banner_steps_and_end(mesh: object, tmp_path: Path) -> None:
    """Item 3: a drill started by another client (here a plain POST /drills, as a headless run or another x0dash
    does) was invisible in the TUI: no banner, no steps."""
    app = make_app(mesh, tmp_path)
    token = json.loads(mesh.inventory_path.read_text())["api_token"]
    url = mesh.node("node-c").agent_url
    async with app.run_test(size=(140, 42)) as pilot:
        await until(pilot, "mesh whole", lambda: whole(app), within=60)
        async with httpx.AsyncClient(
            trust_env=False, timeout=5, headers={"authorization": f"Bearer {token}"}
        ) as c:
            drill = (await c.post(f"{url}/drills", json={"kind": "blackhole", "duration_s": 6})).json()
        await until(pilot, "banner", lambda: "blackhole on node-c" in (app.drill_banner or ""), within=10)
        assert "started elsewhere" in app.drill_banner
        header = app.screen.query_one("#header", Static).render_header().plain
        assert "DRILL" in header and "blackhole on node-c" in header
        await until(
            pilot,
            "the start in the event log",
            lambda: any(
                e.kind == "drill" and drill["id"] in e.text and "started" in e.text for e in app.recent_events
            ),
        )
        await pilot.press("d")
        screen = app.screen
        assert isinstance(screen, DrillScreen)
        assert "running elsewhere: blackhole on node-c" in str(screen.query_one("#drill-status", Static).render())
        timeline = screen.query_one(DrillTimeline)
        await until(
            pilot,
            "observers' detections as steps",
            lambda: sum("node-c" in r.what for r in timeline.rows) >= 2,
            within=20,
        )
        await until(
            pilot,
            "the end in the event log",
            lambda: any(
                e.kind == "drill" and drill["id"] in e.text and "reverted" in e.text for e in app.recent_events
            ),
            within=30,
        )
        await until(pilot, "banner gone", lambda: app.drill_banner is None, within=10)
        await until(pilot, "mesh whole again", lambda: whole(app), within=60)
