"""Overview: header, topology, event log and node table. Enter opens the node under the cursor; in the event log
(`l`), the event under the cursor in full."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Input

from dashboard.screens.base import MeshScreen
from dashboard.session import MeshUpdate
from dashboard.widgets.event_log import EventLog
from dashboard.widgets.node_table import NodeTable
from dashboard.widgets.screen_footer import ScreenFooter
from dashboard.widgets.topology import TopologyView


class OverviewScreen(MeshScreen):
    BINDINGS = [
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
        # Not in the footer (it would push Drills off an 80-column one): the log's own border and help say it.
        Binding("l", "focus_log", "Events", show=False),
    ]

    def compose(self) -> ComposeResult:
        yield self.header()
        yield Input(placeholder="filter nodes and events (id, state, address…); Esc clears", id="filter")
        with Horizontal(id="mesh-row"):
            yield TopologyView(id="topology")
            yield EventLog(id="events")
        yield NodeTable(id="nodes")
        yield ScreenFooter()

    def on_mount(self) -> None:
        self.query_one("#filter", Input).display = False
        self.query_one("#topology").border_title = "topology"
        self.query_one("#events").border_title = "events (newest first)"
        self.query_one("#events").border_subtitle = "l, enter: full text"
        self.query_one(NodeTable).border_title = "nodes"
        self.query_one(NodeTable).focus()

    @property
    def filter_text(self) -> str:
        return self.query_one("#filter", Input).value.strip()

    def show_update(self, update: MeshUpdate | None) -> None:
        super().show_update(update)
        view = self.dash.view
        if update is not None:
            self.query_one(EventLog).add(update.events)
        if view is not None:
            self.query_one(TopologyView).show(view)
            self.query_one(NodeTable).show(view.nodes, self.filter_text)

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.display = False
        self.query_one(NodeTable).focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        text = event.value.strip()
        self.query_one(EventLog).set_filter(text)
        if self.dash.view is not None:
            self.query_one(NodeTable).show(self.dash.view.nodes, text)

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self.query_one(NodeTable).focus()

    @on(DataTable.RowSelected, "#nodes")
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.dash.open_node(str(event.row_key.value))

    def action_focus_log(self) -> None:
        self.query_one(EventLog).focus()

    @on(EventLog.Opened)
    def _event_opened(self, message: EventLog.Opened) -> None:
        from dashboard.screens.event_detail import EventDetailScreen

        self.app.push_screen(EventDetailScreen(message.event))
