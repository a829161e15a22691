"""x0dash as an operator uses it at 80x24 and 200x50 (issue 12): the recorded 3-node mesh drawn through the real
screens, then what the screen shows is read back as text (what a person would see, cropping included)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from textual.geometry import Region
from textual.widgets import Input

from dashboard.app import X0Dash
from dashboard.drills.engine import DrillPlan, DrillStep
from dashboard.drills.report import from_json, to_markdown
from dashboard.messages import DrillFinished, DrillStepped
from dashboard.screens.drills import DrillScreen, KindButton
from dashboard.widgets.timeline import DrillTimeline

from .conftest import until
from .record_fixtures import REPORT_FILE
from .test_snapshots import feed, recorded_app

SIZES = [(80, 24), (200, 50)]
# Behaviour (keys, scrolling, search, trends) is checked at the small terminal only, where it is hardest to fit;
# what is on screen and whether it is cut is checked at both.
SMALL = [(80, 24)]


def screen_text(app: X0Dash) -> str:
    """Every character on the screen, row by row, as the terminal shows it."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


def region_text(app: X0Dash, region: Region) -> str:
    lines = screen_text(app).splitlines()[region.y : region.bottom]
    return "\n".join(line[region.x : region.right] for line in lines)


def squeezed(text: str) -> str:
    """Screen text with the layout's spaces, borders and line breaks removed: a wrapped sentence reads whole."""
    return "".join(ch for ch in text if ch.isalnum() or ch in ".:;,()/+-'")


@pytest.mark.parametrize("size", SIZES)
async def test_drill_kinds_read_without_colour(size: tuple[int, int]) -> None:
    app, update = recorded_app()
    async with app.run_test(size=size) as pilot:
        await feed(app, update)(pilot)
        await pilot.press("d")
        buttons = list(app.screen.query(KindButton))
        marks = {b.id: b.render().plain[:3] for b in buttons}
        assert marks["kind-blackhole"] == "▐●▌" and marks["kind-partition"] == "▐ ▌", marks
        await pilot.click("#kind-partition")
        marks = {b.id: b.render().plain[:3] for b in buttons}
        assert marks["kind-partition"] == "▐●▌" and marks["kind-blackhole"] == "▐ ▌", marks


@pytest.mark.parametrize("size", SIZES)
async def test_drills_form_error_is_on_screen(size: tuple[int, int]) -> None:
    # Item 2: at 80x24 `d` then `s` with no target showed nothing: "pick a target node" was below the fold.
    app, update = recorded_app()
    async with app.run_test(size=size) as pilot:
        await feed(app, update)(pilot)
        await pilot.press("d", "s")
        assert isinstance(app.screen, DrillScreen)
        assert "pick a target node" in screen_text(app), screen_text(app)


@pytest.mark.parametrize("size", SMALL)
@pytest.mark.parametrize("key", ["s", "enter"])
async def test_start_from_inside_a_text_field(size: tuple[int, int], key: str) -> None:
    # Item 2: `s` and Enter did nothing while the cursor was in a text field, though the footer offers "s Start".
    app, update = recorded_app()
    async with app.run_test(size=size) as pilot:
        await feed(app, update)(pilot)
        await pilot.press("d")
        screen = app.screen
        duration = screen.query_one("#duration", Input)
        duration.focus()
        await pilot.press("end", "backspace", "backspace", "5", key)
        assert duration.value == "5"
        assert "pick a target node" in screen_text(app)  # the form was checked: the start was attempted
        screen.query_one("#target").value = "node-b"
        duration.focus()
        await pilot.press(key)
        await pilot.pause()
        from dashboard.screens.confirm import ConfirmDrillScreen

        assert isinstance(app.screen, ConfirmDrillScreen)
        assert "for 5 s" in app.screen.description
        await pilot.press("n")
        assert app.engine.running is None


@pytest.mark.parametrize("size", SIZES)
async def test_one_sorted_timeline_that_agrees_with_the_report(size: tuple[int, int]) -> None:
    # Item 4: the screen listed steps in arrival order ("+10.28 s heal action" before "+10.04 s fault reverted")
    # and its "full recovery" (when a poll saw the mesh whole) differed from the Markdown report's.
    app, update = recorded_app()
    report = from_json(REPORT_FILE.read_bytes())
    t0 = report.fault.started_at
    arrived = [
        DrillStep(at=t0 - 1, t_s=None, what="steady state: nodes 3/3 up"),
        DrillStep(at=t0, t_s=0.0, what="fault injected", node="node-b"),
        DrillStep(at=t0 + 1.14, t_s=1.14, what="first detection by node-a: peer_silent", node="node-a"),
        DrillStep(at=t0 + 1.01, t_s=1.01, what="first detection by node-c: peer_silent", node="node-c"),
        DrillStep(at=t0 + 7.13, t_s=7.13, what="node-a resolved peer_silent node-b", node="node-a"),
        DrillStep(at=t0 + 5.05, t_s=5.05, what="fault reverted", node="node-b"),
        DrillStep(at=t0 + 9.2, t_s=9.2, what="full recovery: nodes 3/3 up", level="ok"),
    ]
    async with app.run_test(size=size) as pilot:
        await feed(app, update)(pilot)
        await pilot.press("d")
        app.engine.running = DrillPlan(kind="blackhole", target="node-b", duration_s=5)  # as while it runs
        for step in arrived:
            app.post_message(DrillStepped(step))
        await pilot.pause()
        live = app.screen.query_one(DrillTimeline).rows
        times = [r.t_s for r in live if r.t_s is not None]
        assert times == sorted(times) and live[0].t_s is None
        assert "t+1.01 s" in screen_text(app)
        app.engine.running = None
        app.post_message(DrillFinished(report, paths=[Path("reports/r.json"), Path("reports/r.md")]))
        await pilot.pause()
        shown = app.screen.query_one(DrillTimeline).rows
        assert [(r.t_s, r.what) for r in shown] == [(e.t_s, e.what) for e in report.timeline]
        markdown = to_markdown(report)
        recovery = next(e for e in report.timeline if e.what.startswith("full recovery"))
        assert f"{recovery.t_s:+.2f} s" in markdown
        text = screen_text(app)
        assert f"t{recovery.t_s:+.2f} s" in text and "t+9.20 s" not in text


@pytest.mark.parametrize("size", SIZES)
async def test_timeline_lines_are_never_cut(size: tuple[int, int]) -> None:
    # Item 8: "first detection by nod" at 80 columns.
    app, update = recorded_app()
    report = from_json(REPORT_FILE.read_bytes())
    async with app.run_test(size=size) as pilot:
        await feed(app, update)(pilot)
        app.last_report = report
        await pilot.press("d")
        timeline = app.screen.query_one(DrillTimeline)
        pages = []
        for y in range(int(timeline.max_scroll_y) + 1):  # the operator scrolls through it line by line
            timeline.scroll_to(y=y, animate=False)
            await pilot.pause()
            pages.append(squeezed(region_text(app, timeline.content_region)))
        for e in report.timeline:
            assert any(squeezed(e.what) in page for page in pages), e.what


@pytest.mark.parametrize("where", ["overview", "filter field", "drills form"])
async def test_ctrl_c_quits(where: str) -> None:
    # Item 7: Ctrl-C showed a toast ("press q to quit") instead of quitting, as k9s and every TUI operators use do.
    app, update = recorded_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await feed(app, update)(pilot)
        if where == "filter field":
            await pilot.press("slash", "n")
        elif where == "drills form":
            await pilot.press("d")
            app.screen.query_one("#duration", Input).focus()
        await pilot.press("ctrl+c")
        await pilot.pause(0.3)
        assert not app.is_running
    assert app.return_code == 0


LONG = (
    "node-a: partition mesh (2/3 members reachable; the majority is 2; unreachable: node-b via every route "
    "tried, last probe 1.2 s ago)"
)


@pytest.mark.parametrize("size", SIZES)
async def test_events_and_health_are_never_cut(size: tuple[int, int]) -> None:
    # Item 8: "... majority is 2; unre" in the event log and "◐ degr" in the health column.
    from dashboard.events import Event
    from dashboard.messages import MeshUpdated
    from dashboard.widgets.node_table import NodeTable

    app, update = recorded_app()
    async with app.run_test(size=size) as pilot:
        await feed(app, update)(pilot)
        view = update.view
        degraded = msgspec.structs.replace(view.nodes[1], state="degraded", detail="yggdrasil: daemon not running")
        later = msgspec.structs.replace(view, nodes=(view.nodes[0], degraded, view.nodes[2]))
        event = Event(at=view.taken_at + 1, kind="incident", text=LONG, level="warn", node="node-a")
        app.post_message(MeshUpdated(msgspec.structs.replace(update, view=later, events=[event])))
        await pilot.pause()
        log = app.screen.query_one("#events")
        text = squeezed(region_text(app, log.content_region))
        assert squeezed(LONG) in text, text
        table = app.screen.query_one(NodeTable)
        shown = region_text(app, table.content_region)
        assert "◐ degraded" in shown, shown
        for label in ("node", "health", "peers"):  # the important columns stay, whole
            assert f" {label} " in f" {shown} "
        width = size[0]
        assert all(len(line.rstrip()) <= width for line in screen_text(app).splitlines())
        if width < 100:
            assert "Yggdrasil address" not in shown  # dropped first, not cut


async def test_a_column_widens_for_a_longer_cell_and_keeps_its_width_when_it_shrinks() -> None:
    # A cell that shrinks does not make DataTable measure its whole column again (65 ms a poll at 20 nodes, keys
    # waiting behind it): the column keeps its width and the shorter text is drawn whole.
    from dashboard.messages import MeshUpdated
    from dashboard.widgets.node_table import NodeTable

    app, update = recorded_app()
    async with app.run_test(size=(160, 40)) as pilot:
        await feed(app, update)(pilot)
        view = update.view
        table = app.screen.query_one(NodeTable)

        def health_width() -> int:
            return table.columns["health"].content_width  # type: ignore[index]

        def show(state: str, detail: str) -> None:
            node = msgspec.structs.replace(view.nodes[1], state=state, detail=detail)
            later = msgspec.structs.replace(view, nodes=(view.nodes[0], node, view.nodes[2]))
            app.post_message(MeshUpdated(msgspec.structs.replace(update, view=later, events=[])))

        before = health_width()
        show("degraded", "yggdrasil: daemon not running")
        await pilot.pause()
        await pilot.pause()
        wide = health_width()
        assert wide > before and "◐ degraded" in region_text(app, table.content_region)
        show(view.nodes[1].state, view.nodes[1].detail)
        await pilot.pause()
        await pilot.pause()
        assert health_width() == wide
        shown = region_text(app, table.content_region)
        assert "◐ degraded" not in shown and shown.count("● up") == 3, shown


@pytest.mark.parametrize("size", SIZES)
async def test_the_full_text_of_any_event_opens(size: tuple[int, int]) -> None:
    # "The full text of any event": in an 80x24 log a long event spans more lines than the log shows; enter on it
    # opens its whole text, its date and zone, and the record behind it (here the incident, field by field).
    from dashboard.events import incident_event, stamp
    from dashboard.messages import MeshUpdated
    from dashboard.screens.event_detail import EventDetailScreen, as_text
    from dashboard.widgets.event_log import EventLog

    app, update = recorded_app()
    inc = next(i for a in update.agents.values() for i in a.incidents.values())
    long = msgspec.structs.replace(
        inc, id="inc-long", detected_at=update.view.taken_at + 2, resolved_at=None, count=3, detail=LONG * 3
    )
    event = incident_event("node-c", long, "opened")
    async with app.run_test(size=size) as pilot:
        await feed(app, update)(pilot)
        app.post_message(MeshUpdated(msgspec.structs.replace(update, events=[event])))
        await pilot.pause()
        log = app.screen.query_one(EventLog)
        assert log.events[0] is event
        await pilot.press("l")
        assert log.has_focus and log.selected is event
        await pilot.press("enter")
        screen = app.screen
        assert isinstance(screen, EventDetailScreen) and screen.event is event
        await pilot.pause()
        shown = squeezed(screen_text(app))
        assert squeezed(f"node-c: {long.kind} {long.subject} ({LONG * 3})") in shown, screen_text(app)
        await pilot.press("G")  # the fields below it, however small the terminal
        await pilot.pause()
        shown = squeezed(screen_text(app))
        for field in ("incident inc-long", f"subject {long.subject}", "resolved open", "seen 3 times"):
            assert squeezed(field) in shown, field
        assert squeezed(stamp(event.at)) in shown  # the date and zone, not only the time of day
        assert as_text(event).splitlines()[1] == event.text  # what `c` copies: the whole text
        await pilot.press("escape", "j", "enter")  # the next (older) event, from the log the operator left
        assert isinstance(app.screen, EventDetailScreen) and app.screen.event is log.events[1]
        await pilot.press("escape")
        assert app.screen.query_one(EventLog).has_focus


@pytest.mark.parametrize("size", SIZES)
async def test_node_detail_tables_keep_what_matters_at_80_columns(size: tuple[int, int]) -> None:
    # k9s keys and 80x24 in node detail too: the peers table cut "last error" off at 80 columns (the column an
    # operator needs when a peer is down) behind planned/temporary/direction; j/k did nothing there.
    from textual.widgets import TabbedContent

    from dashboard.screens.event_detail import EventDetailScreen
    from dashboard.screens.node_detail import NodeDetailScreen
    from dashboard.widgets.key_table import KeyTable

    app, update = recorded_app()
    async with app.run_test(size=size) as pilot:
        await feed(app, update)(pilot)
        await pilot.press("enter")
        screen = app.screen
        assert isinstance(screen, NodeDetailScreen)
        peers = screen.query_one("#peers", KeyTable)
        await until(pilot, "node-a's peers", lambda: peers.row_count == 2)
        shown = peers.columns_shown
        assert {"peer", "state", "latency", "error"} <= set(shown), shown
        if size[0] < 100:
            assert "temporary" not in shown and "direction" not in shown
        else:
            assert shown == [c.key for c in peers.all_columns]
        assert all(len(line.rstrip()) <= size[0] for line in region_text(app, peers.region).splitlines())
        assert "last error" in region_text(app, peers.region)  # its header is on screen, not scrolled away
        await pilot.press("j")
        assert peers.cursor_row == 1
        await pilot.press("k")
        assert peers.cursor_row == 0
        # Enter on an incident: the whole record, whatever the column kept of its detail.
        screen.query_one(TabbedContent).active = "tab-incidents"
        incidents = screen.query_one("#incidents", KeyTable)
        await until(pilot, "node-a's incidents", lambda: incidents.row_count > 0)
        incidents.focus()
        await pilot.press("enter")
        assert isinstance(app.screen, EventDetailScreen)
        record = dict(app.screen.event.fields)
        newest = max(update.agents["node-a"].incidents.values(), key=lambda i: i.detected_at)
        assert record["incident"] == newest.id and record["detail"] == (newest.detail or "-")
        await pilot.press("escape")
        assert app.screen is screen


async def test_k9s_keys_move_sort_and_open_the_palette() -> None:
    from textual.command import CommandPalette

    from dashboard.messages import MeshUpdated
    from dashboard.widgets.node_table import NodeTable

    app, update = recorded_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await feed(app, update)(pilot)
        table = app.screen.query_one(NodeTable)
        assert table.selected_node == "node-a"
        await pilot.press("j", "j")
        assert table.selected_node == "node-c"
        await pilot.press("k")
        assert table.selected_node == "node-b"
        view = update.view
        worse = msgspec.structs.replace(view.nodes[2], state="down", detail="cannot connect")
        app.post_message(
            MeshUpdated(
                msgspec.structs.replace(
                    update,
                    view=msgspec.structs.replace(view, nodes=(view.nodes[0], view.nodes[1], worse)),
                    events=[],
                )
            )
        )
        await pilot.pause()
        await pilot.press("H")  # by health: the worst first
        assert table.node_ids[0] == "node-c" and "by health" in str(table.border_title)
        await pilot.press("P")  # by p99, slowest first
        p99 = {n.id: n.p99_ms or -1 for n in app.view.nodes}
        assert [p99[i] for i in table.node_ids] == sorted(p99.values(), reverse=True)
        await pilot.press("P")  # again: reversed
        assert [p99[i] for i in table.node_ids] == sorted(p99.values())
        await pilot.press("N")
        assert table.node_ids == ["node-a", "node-b", "node-c"]
        assert table.selected_node == "node-b"  # the cursor follows its node through the sorts
        await pilot.press("colon")
        assert isinstance(app.screen, CommandPalette)
        await pilot.press("escape")
        await pilot.press("ctrl+p")  # Textual's own key still works beside k9s's
        assert isinstance(app.screen, CommandPalette)


@pytest.mark.parametrize("size", SMALL)
async def test_node_logs_from_the_run_dir_scroll_and_search(size: tuple[int, int], tmp_path: Path) -> None:
    import json

    from textual.widgets import Log

    from dashboard.providers.inventory import InventoryProvider
    from dashboard.screens.logs import LogScreen

    node_dir = tmp_path / "local-test" / "node-a"
    node_dir.mkdir(parents=True)
    lines = [f"2026-12-03 09:00:{i % 60:02d} INFO x0.mapek: tick {i}" for i in range(300)]
    lines[40] = "2026-12-03 08:59:00 WARNING x0.supervisor: yggdrasil exited with 1; restarting in 3 s"
    (node_dir / "agent.log").write_text("\n".join(lines) + "\n")
    inventory = tmp_path / "inventory.json"
    inventory.write_text(
        json.dumps(
            {
                "mesh": "local-test",
                "mesh_dir": str(tmp_path / "local-test"),
                "nodes": [{"id": f"node-{c}", "agent_url": f"http://127.0.0.1:{9}"} for c in "abc"],
            }
        )
    )
    provider = InventoryProvider(inventory)
    provider.start()
    app, update = recorded_app()
    app.session.provider = provider  # the recorded mesh, with this inventory's run dir for its logs
    async with app.run_test(size=size) as pilot:
        await feed(app, update)(pilot)
        await pilot.press("enter", "L")
        screen = app.screen
        assert isinstance(screen, LogScreen) and screen.node_id == "node-a"
        log = screen.query_one(Log)
        await until(pilot, "agent.log shown", lambda: log.line_count == 300)
        await pilot.pause()
        assert "tick 299" in screen_text(app)  # opened at the end, like tail
        await pilot.press("slash", *"restarting", "enter")
        await pilot.pause()
        assert screen.match_at == 40
        assert "yggdrasil exited with 1" in screen_text(app)
        await pilot.press("tab")  # yggdrasil.log: not there, and it says so
        await until(pilot, "the missing log explained", lambda: "cannot read yggdrasil.log" in screen_text(app))
        await pilot.press("escape")
        assert not isinstance(app.screen, LogScreen)


@pytest.mark.parametrize("size", SMALL)
async def test_drill_history_lists_every_drill_with_reports_and_trends(
    size: tuple[int, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from textual.widgets import DataTable, Markdown
    from textual_plotext import PlotextPlot

    from dashboard.drills.history import time_ticks, trend_series
    from dashboard.drills.report import save
    from dashboard.messages import MeshUpdated
    from dashboard.screens.drill_history import DrillHistoryScreen
    from dashboard.wire import Drill, DrillList

    from .conftest import closed_port

    report = from_json(REPORT_FILE.read_bytes())
    older = msgspec.structs.replace(
        report,
        fault=msgspec.structs.replace(report.fault, started_at=report.fault.started_at - 86400, drill_id="d-1"),
    )
    save(older, tmp_path)
    save(report, tmp_path)
    app, update = recorded_app()
    app.reports_dir = tmp_path
    # A drill another client ran on node-c, known only from that agent's GET /drills.
    elsewhere = Drill(
        id="drl-elsewhere",
        kind="partition",
        node_id="node-c",
        duration_s=8,
        started_at=report.fault.started_at + 60,
        ends_at=report.fault.started_at + 68,
        reverted_at=report.fault.started_at + 68,
        state="reverted",
        detail="",
    )
    agents = dict(update.agents)
    agents["node-c"] = msgspec.structs.replace(agents["node-c"], drills=DrillList(active=[], past=[elsewhere]))
    dead = f"http://127.0.0.1:{closed_port()}"  # no agent answers: the mesh-wide history is unavailable
    view = msgspec.structs.replace(
        update.view, nodes=tuple(msgspec.structs.replace(n, agent_url=dead) for n in update.view.nodes)
    )
    async with app.run_test(size=size) as pilot:
        await feed(app, msgspec.structs.replace(update, agents=agents))(pilot)
        app.post_message(MeshUpdated(msgspec.structs.replace(update, view=view, agents=agents, events=[])))
        await pilot.pause()
        monkeypatch.setattr(DrillHistoryScreen, "reload_every_s", 0.5)  # (5 s in use) this test waits on one
        await pilot.press("D")
        screen = app.screen
        assert isinstance(screen, DrillHistoryScreen)
        table = screen.query_one("#history", DataTable)
        await until(pilot, "three drills listed", lambda: table.row_count == 3)
        assert [r.id for r in screen.rows] == ["drl-elsewhere", report.fault.drill_id, "d-1"]
        assert [r.state for r in screen.rows] == ["reverted", "FAIL", "FAIL"]
        assert screen.rows[0].seen_in == ["agent node-c"] and screen.rows[1].seen_in == ["report"]
        assert "unavailable" in screen.note and "3 drills" in screen.note
        await pilot.press("j")  # the report of the highlighted drill
        await pilot.pause()
        assert "Drill blackhole on node-b: FAIL" in screen.query_one("#history-report", Markdown).source
        # Every number of the list is on screen at both sizes (at 80 columns the report pane gives way to it)...
        listed = region_text(app, table.region)
        worst_repair = max(o.repair_s for o in report.observers if o.repair_s is not None)
        assert f"+{worst_repair:.2f} s" in listed and "FAIL" in listed, listed
        assert screen.query_one("#history-report-box").display == (size[0] >= 120)
        # ...and enter opens the highlighted drill's report full screen.
        await pilot.press("enter")
        from dashboard.screens.drill_history import DrillReportScreen

        assert isinstance(app.screen, DrillReportScreen) and app.screen.row.id == report.fault.drill_id
        await pilot.pause()
        assert "Drill blackhole on node-b: FAIL" in screen_text(app)
        await pilot.press("escape")
        assert app.screen is screen
        plot = screen.query_one(PlotextPlot)
        assert plot.region.height >= 6
        at, detect, _repair = trend_series(screen.rows)["blackhole"]  # the two reports, oldest first
        assert at == sorted(at) and len(detect) == 2 and detect[0] == max(o.detect_s for o in report.observers)
        assert "blackhole" in screen_text(app)
        # Plotted over wall time (the drills a day apart are a day apart on the axis), not by drill order.
        [(kind, xs, _, _)] = screen.plotted
        assert kind == "blackhole" and xs == [older.fault.started_at, report.fault.started_at]
        _, labels = time_ticks(xs[0], xs[-1], 2)
        assert labels[0] != labels[-1] and "-" in labels[0]  # a day apart: dated labels
        shown = region_text(app, plot.region)
        assert labels[0] in shown and labels[-1] in shown, shown
        assert "drill (oldest first)" not in shown and "drill started" in shown
        # A drill that shows up later (here: another agent's, as the next poll brings it) is listed by itself;
        # the cursor stays on the drill the operator is reading.
        assert table.cursor_row == 1
        later = msgspec.structs.replace(
            elsewhere, id="drl-later", node_id="node-a", started_at=elsewhere.started_at + 5
        )
        agents["node-a"] = msgspec.structs.replace(agents["node-a"], drills=DrillList(active=[], past=[later]))
        app.agents = agents
        await until(pilot, "the later drill listed", lambda: table.row_count == 4, within=10)
        await pilot.pause()
        assert screen.rows[table.cursor_row].id == report.fault.drill_id
