"""Drill history (`D`): every drill of the mesh, running and past, whoever started it: this x0dash's saved reports,
the mesh-wide history in the replicated store (GET /drills/history) and each agent's own drills (GET /drills).
The highlighted drill's report shows beside the list (below 120 columns the list takes the width and enter opens
the report full screen; enter does that at any width); below, the trends: worst time to detect and to repair per
drill kind over wall time (textual-plotext), so a team sees whether its mesh gets faster or slower."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Markdown, Static
from textual_plotext import PlotextPlot

from dashboard.agent_client import AgentError
from dashboard.drills import lease
from dashboard.drills.filing import holder
from dashboard.drills.history import DrillRow, load_reports, merge, time_ticks, trend_series
from dashboard.drills.report import to_markdown
from dashboard.screens.base import MeshScreen
from dashboard.widgets.screen_footer import ScreenFooter

RELOAD_EVERY_S = 5.0
TREND_COLORS = ("cyan", "orange", "magenta", "green", "red", "blue", "yellow")
TREND_MARKS = ("●", "▲")  # detect, repair: told apart without colour too
NARROW_BELOW = 120  # columns: below, the list takes the width (its numbers matter more than the report pane)
WIDE_COLUMNS = ("started", "kind", "target", "result", "detect", "repair", "seen in")
NARROW_COLUMNS = WIDE_COLUMNS[:-1]
STATE_STYLE = {"PASS": "bold green", "FAIL": "bold red", "active": "bold yellow", "aborted": "yellow"}


def _when(t: float) -> str:
    return dt.datetime.fromtimestamp(t).strftime("%m-%d %H:%M:%S")


def _zone() -> str:
    return time.strftime("%Z") or "local time"


def report_markdown(row: DrillRow) -> str:
    if row.report is not None:
        return to_markdown(row.report)
    return (
        f"# Drill {row.kind} on {row.target}: {row.state}\n\n"
        f"- id `{row.id}`, started {_when(row.started_at)}, {row.duration_s:g} s requested\n"
        f"- started by: {row.holder or 'unknown'}; seen in: {', '.join(row.seen_in)}\n\n"
        "No report here: the drill was run elsewhere and its report was not filed in the mesh history."
    )


def _s(v: float | None, signed: bool = False) -> str:
    return "-" if v is None else (f"{v:+.2f} s" if signed else f"{v:.2f} s")


class DrillHistoryScreen(MeshScreen):
    reload_every_s = RELOAD_EVERY_S
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("r", "reload", "Reload"),
        Binding("j", "down", "Down", show=False),
        Binding("k", "up", "Up", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[DrillRow] = []
        self.note = ""
        self.plotted: list[tuple[str, list[float], list[float], list[float]]] = []  # kind, started_at, d, r
        self._shown: list[tuple[str, str, bool, tuple[str, ...]]] | None = None
        self._highlighted_id: str | None = None
        self.narrow: bool | None = None

    def compose(self) -> ComposeResult:
        yield self.header()
        yield Static("reading the mesh's drills…", id="history-note")
        with Horizontal(id="history-body"):
            yield DataTable(id="history", cursor_type="row", zebra_stripes=True)
            with VerticalScroll(id="history-report-box"):
                yield Markdown("", id="history-report")
        yield PlotextPlot(id="trends")
        yield ScreenFooter()

    def on_mount(self) -> None:
        table = self.query_one("#history", DataTable)
        self._layout(self.app.size.width)
        table.border_title = "drills (newest first; enter: report)"
        self.query_one("#trends").border_title = "trends: worst detect (d ●) and repair (r ▲) per kind, seconds"
        table.focus()
        self.action_reload()
        # New drills (from anyone) show up by themselves; a history that was unavailable (no Raft leader right
        # after a fault) is asked again.
        self.set_interval(self.reload_every_s, self.action_reload)

    def action_reload(self) -> None:
        self._load()

    @work(exclusive=True, group="drill-history", exit_on_error=False)
    async def _load(self) -> None:
        dash = self.dash
        reports = await asyncio.to_thread(load_reports, dash.reports_dir)
        history, note = [], ""
        urls = [n.agent_url for n in (dash.view.nodes if dash.view else ()) if n.agent_url and n.state == "up"]
        for url in urls[:3]:  # any node serves the mesh-wide history; try a few
            try:
                history = await dash.background.run(dash.session.client.drill_history(url))
                note = f"mesh-wide history from {url}"
                break
            except AgentError as exc:
                note = f"mesh-wide history unavailable ({exc.detail}); showing each agent's own drills"
        if not urls:
            note = "no agent answers: showing the saved reports only"
        agents = {node_id: a.drills for node_id, a in dash.agents.items()}
        view = dash.view
        held = view.drill_lease if view is not None else None
        by_source = [held] if held is not None and lease.elsewhere(held, holder(), dash.clock()) else []
        self.rows = merge(reports, history, agents, by_source)
        self.note = f"{len(self.rows)} drills; {len(reports)} saved reports in {dash.reports_dir}; {note}"
        self._show()

    def on_resize(self, event: events.Resize) -> None:
        if self._layout(event.size.width):
            self._shown = None  # columns changed: rows again
            self._show()

    def _layout(self, width: int) -> bool:
        """Wide: list and report side by side; narrow: the list alone. True when that changed."""
        narrow = width < NARROW_BELOW
        if narrow == self.narrow:
            return False
        self.narrow = narrow
        self.set_class(narrow, "narrow")
        table = self.query_one("#history", DataTable)
        table.clear(columns=True)
        table.add_columns(*(NARROW_COLUMNS if narrow else WIDE_COLUMNS))
        return True

    def _show(self) -> None:
        self.query_one("#history-note", Static).update(Text(self.note, "grey50"))
        shown = [(r.id, r.state, r.report is not None, tuple(r.seen_in)) for r in self.rows]
        if shown == self._shown:
            return  # a reload that found nothing new keeps the cursor and the report where the operator left them
        self._shown = shown
        table = self.query_one("#history", DataTable)
        keep = self._highlighted_id
        table.clear()
        for r in self.rows:
            cells = [
                _when(r.started_at),
                r.kind,
                r.target,
                Text(r.state, STATE_STYLE.get(r.state, "")),
                _s(r.detect_s),
                _s(r.repair_s, signed=True),
                ", ".join(r.seen_in),
            ]
            table.add_row(*cells[: len(table.columns)], key=r.id)
        self._plot()
        ids = [r.id for r in self.rows]
        if keep in ids:
            table.move_cursor(row=ids.index(keep))
        elif self.rows:
            self._show_report(self.rows[0])

    def _plot(self) -> None:
        widget = self.query_one(PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        series = trend_series(self.rows)
        self.plotted = []
        if not series:
            plt.title("no drill reports yet: run drills (d) to see trends")
            plt.xticks([], [])
        else:
            plt.title("")
            # Over wall time, not drill order: a week without drills is a gap, a burst of drills a cluster.
            for i, (kind, (at, detect, repair)) in enumerate(sorted(series.items())):
                for j, (what, ys) in enumerate((("d", detect), ("r", repair))):
                    color = TREND_COLORS[(2 * i + j) % len(TREND_COLORS)]
                    plt.plot(at, ys, marker="braille", color=color)  # the trend, between drills
                    plt.scatter(at, ys, marker=TREND_MARKS[j], color=color, label=f"{kind} {what}")  # each drill
                self.plotted.append((kind, at, detect, repair))
            times = [t for _, at, _, _ in self.plotted for t in at]
            ticks, labels = time_ticks(min(times), max(times), max(2, (widget.size.width or 60) // 24))
            plt.xticks(ticks, labels)
            plt.xlabel(f"drill started ({_zone()})")
        widget.refresh()

    @on(DataTable.RowHighlighted, "#history")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        row = next((r for r in self.rows if r.id == event.row_key.value), None)
        if row is not None:
            self._highlighted_id = row.id
            self._show_report(row)

    def _show_report(self, row: DrillRow) -> None:
        self.query_one("#history-report", Markdown).update(report_markdown(row))

    @on(DataTable.RowSelected, "#history")
    def _selected(self, event: DataTable.RowSelected) -> None:
        row = next((r for r in self.rows if r.id == event.row_key.value), None)
        if row is not None:
            self.app.push_screen(DrillReportScreen(row))

    def action_down(self) -> None:
        self.query_one("#history", DataTable).action_cursor_down()

    def action_up(self) -> None:
        self.query_one("#history", DataTable).action_cursor_up()

    def action_back(self) -> None:
        self.dismiss()


class DrillReportScreen(Screen[None]):
    """One drill's report, full screen (enter in the history)."""

    BINDINGS = [
        Binding("escape,q,enter", "close", "Back"),
        Binding("j", "scroll(1)", "Down", show=False),
        Binding("k", "scroll(-1)", "Up", show=False),
        Binding("g", "scroll(-1000000)", "Top", show=False),
        Binding("G", "scroll(1000000)", "Bottom", show=False),
    ]

    def __init__(self, row: DrillRow) -> None:
        super().__init__()
        self.row = row

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="drill-report-box"):
            yield Markdown(report_markdown(self.row), id="drill-report")
        yield ScreenFooter()

    def on_mount(self) -> None:
        box = self.query_one("#drill-report-box")
        box.border_title = f"drill {self.row.id}"
        box.focus()

    def action_scroll(self, by: int) -> None:
        box = self.query_one("#drill-report-box", VerticalScroll)
        box.scroll_to(y=max(0, box.scroll_y + by), animate=False)

    def action_close(self) -> None:
        self.dismiss()
