"""Drill history (`D`): every drill of the mesh, running and past, whoever started it: this x0dash's saved reports,
the mesh-wide history in the replicated store (GET /drills/history) and each agent's own drills (GET /drills).
Enter shows a drill's report; below, the trends: worst time to detect and to repair per drill kind over time
(textual-plotext), so a team sees whether its mesh gets faster or slower."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import DataTable, Footer, Markdown, Static
from textual_plotext import PlotextPlot

from dashboard.agent_client import AgentError
from dashboard.drills.history import DrillRow, load_reports, merge, time_ticks, trend_series
from dashboard.drills.report import to_markdown
from dashboard.screens.base import MeshScreen

RELOAD_EVERY_S = 5.0
STATE_STYLE = {"PASS": "bold green", "FAIL": "bold red", "active": "bold yellow", "aborted": "yellow"}


def _when(t: float) -> str:
    return dt.datetime.fromtimestamp(t).strftime("%m-%d %H:%M:%S")


def _zone() -> str:
    return time.strftime("%Z") or "local time"


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

    def compose(self) -> ComposeResult:
        yield self.header()
        yield Static("reading the mesh's drills…", id="history-note")
        with Horizontal(id="history-body"):
            yield DataTable(id="history", cursor_type="row", zebra_stripes=True)
            with VerticalScroll(id="history-report-box"):
                yield Markdown("", id="history-report")
        yield PlotextPlot(id="trends")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#history", DataTable)
        table.add_columns("started", "kind", "target", "result", "detect", "repair", "seen in")
        table.border_title = "drills (newest first)"
        self.query_one("#trends").border_title = "trends: worst detect (d) and repair (r) per kind, seconds"
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
        self.rows = merge(reports, history, agents)
        self.note = f"{len(self.rows)} drills; {len(reports)} saved reports in {dash.reports_dir}; {note}"
        self._show()

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
            table.add_row(
                _when(r.started_at),
                r.kind,
                r.target,
                Text(r.state, STATE_STYLE.get(r.state, "")),
                _s(r.detect_s),
                _s(r.repair_s, signed=True),
                ", ".join(r.seen_in),
                key=r.id,
            )
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
            for kind, (at, detect, repair) in sorted(series.items()):
                plt.plot(at, detect, label=f"{kind} d", marker="braille")
                plt.plot(at, repair, label=f"{kind} r", marker="braille")
                self.plotted.append((kind, at, detect, repair))
            times = [t for _, at, _, _ in self.plotted for t in at]
            ticks, labels = time_ticks(min(times), max(times), max(2, (widget.size.width or 60) // 16))
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
        md = self.query_one("#history-report", Markdown)
        if row.report is not None:
            md.update(to_markdown(row.report))
        else:
            md.update(
                f"# Drill {row.kind} on {row.target}: {row.state}\n\n"
                f"- id `{row.id}`, started {_when(row.started_at)}, {row.duration_s:g} s requested\n"
                f"- started by: {row.holder or 'unknown'}; seen in: {', '.join(row.seen_in)}\n\n"
                "No report here: the drill was run elsewhere and its report was not filed in the mesh history."
            )

    def action_down(self) -> None:
        self.query_one("#history", DataTable).action_cursor_down()

    def action_up(self) -> None:
        self.query_one("#history", DataTable).action_cursor_up()

    def action_back(self) -> None:
        self.dismiss()
