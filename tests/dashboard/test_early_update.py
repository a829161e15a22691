"""A poll result that lands before a screen has built its widgets must not kill x0dash.

At start-up the first poll often arrives before the overview is composed (the snapshot tests once recorded the
crash: `NoMatches: No nodes match 'EventLog'`); the same happens when a poll or a drill step lands right after
a screen is pushed. The screen keeps the update and shows it once composed.
"""

from __future__ import annotations

from textual.pilot import Pilot
from textual.widgets import DataTable, Static

from dashboard.drills.engine import DrillStep
from dashboard.messages import MeshUpdated
from dashboard.screens.drills import DrillScreen
from dashboard.screens.node_detail import NodeDetailScreen
from dashboard.screens.overview import OverviewScreen
from dashboard.widgets.event_log import EventLog
from dashboard.widgets.node_table import NodeTable
from dashboard.widgets.timeline import DrillTimeline

from .conftest import app_error, until_screen
from .record_fixtures import recorded_app


async def test_first_poll_before_the_overview_is_composed() -> None:
    app, update = recorded_app()
    seen: dict[str, object] = {}

    async def auto_pilot(pilot: Pilot) -> None:
        # run_async starts this as soon as the app is ready, before its default screen has composed.
        seen["composed when posted"] = getattr(app.screen, "composed", None)
        app.post_message(MeshUpdated(update))
        screen = await until_screen(
            pilot, OverviewScreen, "3 nodes", lambda s: len(s.query_one(NodeTable).node_ids) == 3
        )
        seen["screen"] = type(screen)
        seen["nodes"] = screen.query_one(NodeTable).node_ids
        seen["events"] = len(screen.query_one(EventLog).events)
        app.exit(0)

    await app.run_async(headless=True, size=(140, 42), auto_pilot=auto_pilot)
    assert app_error(app) is None, f"x0dash died on an early update: {app_error(app)!r}"
    assert seen == {
        "composed when posted": False,
        "screen": OverviewScreen,
        "nodes": ["node-a", "node-b", "node-c"],
        "events": len(update.events),
    }


async def test_two_polls_before_the_overview_is_composed_keep_every_event() -> None:
    app, update = recorded_app()
    first, second = update.events[: len(update.events) // 2], update.events[len(update.events) // 2 :]
    assert first and second

    async def auto_pilot(pilot: Pilot) -> None:
        app.post_message(
            MeshUpdated(type(update)(view=update.view, events=first, poll=None, agents=update.agents))
        )
        app.post_message(
            MeshUpdated(type(update)(view=update.view, events=second, poll=None, agents=update.agents))
        )
        screen = await until_screen(
            pilot, OverviewScreen, "3 nodes", lambda s: len(s.query_one(NodeTable).node_ids) == 3
        )
        assert screen.query_one(EventLog).events == sorted(update.events, key=lambda e: e.at, reverse=True)
        app.exit(0)

    await app.run_async(headless=True, size=(140, 42), auto_pilot=auto_pilot)
    assert app_error(app) is None, f"x0dash died on an early update: {app_error(app)!r}"


async def test_poll_and_drill_step_right_after_a_screen_is_pushed() -> None:
    app, update = recorded_app()
    async with app.run_test(size=(140, 42)) as pilot:
        app.apply_update(MeshUpdated(update))
        await until_screen(pilot, OverviewScreen, "3 nodes", lambda s: len(s.query_one(NodeTable).node_ids) == 3)

        # Pushed and fed in the same turn of the loop: the node detail has no widgets yet.
        app.open_node("node-a")
        app.apply_update(MeshUpdated(update))
        detail = await until_screen(pilot, NodeDetailScreen, "composed", lambda s: True)
        info = str(detail.query_one("#node-info", Static).render())
        assert update.view.node("node-a").address in info  # type: ignore[union-attr]
        assert detail.query_one("#peers", DataTable).row_count == 2

        app.open_drills("node-b")
        app.apply_update(MeshUpdated(update))
        app.drill_steps.append(DrillStep(at=update.view.taken_at, t_s=0.0, what="fault applied", node="node-b"))
        app._drill_changed()  # what a DrillStepped message does
        drills = await until_screen(pilot, DrillScreen, "composed", lambda s: True)
        assert drills.query_one("#target").value == "node-b"
        assert [r.what for r in drills.query_one(DrillTimeline).rows] == ["fault applied"]


async def test_a_poll_landing_while_the_overview_is_torn_down_is_dropped_not_fatal() -> None:
    """The other end of the screen's life (seen once in a whole-suite run: test_all_agents_down died at exit with
    `NoMatches: EventLog` while the header was still there): widgets half removed while the app closes."""
    import pytest
    from textual.css.query import NoMatches

    app, update = recorded_app()
    seen: dict[str, object] = {}

    async def auto_pilot(pilot: Pilot) -> None:
        app.post_message(MeshUpdated(update))
        screen = await until_screen(
            pilot, OverviewScreen, "3 nodes", lambda s: len(s.query_one(NodeTable).node_ids) == 3
        )
        await screen.query_one(EventLog).remove()
        # Outside a teardown a missing widget is a bug: it still raises.
        with pytest.raises(NoMatches):
            screen.receive(update)
        screen._pruning = True  # what Textual sets on a screen whose widgets it is removing
        try:
            screen.receive(update)  # dropped
            seen["dropped"] = True
            assert screen.torn_down()
        finally:
            screen._pruning = False
        app.exit(0)

    await app.run_async(headless=True, size=(140, 42), auto_pilot=auto_pilot)
    assert app_error(app) is None, f"x0dash died on a poll during teardown: {app_error(app)!r}"
    assert seen == {"dropped": True}


async def test_a_drill_change_while_the_drills_screen_is_torn_down_is_dropped() -> None:
    """A report filed as the app exits calls the drills screen (a whole-suite pass died with NoMatches
    '#drill-status' there): torn down, it is skipped; outside a teardown a missing widget still raises."""
    import pytest
    from textual.css.query import NoMatches

    app, update = recorded_app()
    async with app.run_test(size=(140, 42)) as pilot:
        app.apply_update(MeshUpdated(update))
        app.open_drills("node-b")
        drills = await until_screen(pilot, DrillScreen, "composed", lambda s: True)
        await drills.query_one("#drill-status").remove()
        with pytest.raises(NoMatches):
            app._drill_changed()
        drills._pruning = True
        try:
            app._drill_changed()  # skipped, no exception
        finally:
            drills._pruning = False
    assert app_error(app) is None
