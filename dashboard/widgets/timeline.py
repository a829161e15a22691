"""The drill timeline: one list sorted by time since the fault, wrapped to the width it has (never cut off at 80
columns). While a drill runs it shows the engine's steps as they come (in time order, not arrival order: an
agent's record can arrive after a later step); once the report exists it shows the report's own timeline, so the
screen and the saved Markdown say the same thing."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgspec
from rich.table import Table
from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

from dashboard.drills.engine import DrillStep
from dashboard.drills.scoring import DrillReport
from dashboard.events import Event
from dashboard.widgets.styles import LEVEL_STYLE


class TimelineRow(msgspec.Struct, frozen=True):
    t_s: float | None  # since the fault was injected; None before it
    node: str
    what: str
    level: str = "info"


def fmt_t(t_s: float | None) -> str:
    return "" if t_s is None else f"t{t_s:+.2f} s"


def rows_from_steps(steps: Sequence[DrillStep]) -> list[TimelineRow]:
    # Steps before the fault (no t) keep their order at the top; the rest by time, ties in arrival order.
    before = [s for s in steps if s.t_s is None]
    after = sorted((s for s in steps if s.t_s is not None), key=lambda s: s.t_s or 0.0)
    return [TimelineRow(s.t_s, s.node or "", s.what, s.level) for s in (*before, *after)]


def rows_from_events(events: Iterable[Event], started_at: float, target: str) -> list[TimelineRow]:
    """A drill this x0dash did not start, told by what the agents recorded since it began: the drill itself,
    incidents and heal actions (about the target, or mesh-wide partitions)."""
    rows = []
    for e in sorted(events, key=lambda e: e.at):
        if e.at < started_at - 0.5 or e.kind not in ("drill", "incident", "action"):
            continue
        if e.kind != "drill" and target not in e.text and "partition" not in e.text:
            continue
        rows.append(TimelineRow(e.at - started_at, e.node or "", e.text, e.level))
    return rows


def _level(what: str) -> str:
    if what.startswith(("first detection", "fault injected")):
        return "warn"
    if "resolved" in what or what.startswith(("full recovery", "back:", "fault over")):
        return "ok"
    return "info"


def rows_from_report(report: DrillReport) -> list[TimelineRow]:
    return [TimelineRow(e.t_s, e.node or "", e.what, _level(e.what)) for e in report.timeline]


class DrillTimeline(VerticalScroll, can_focus=True):
    DEFAULT_CSS = """
    DrillTimeline { height: 1fr; }
    DrillTimeline > Static { width: 1fr; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.rows: list[TimelineRow] = []

    def compose(self):  # type: ignore[no-untyped-def]
        yield Static(Text("no steps yet", "grey50"), id="timeline-text")

    def show(self, rows: list[TimelineRow]) -> None:
        if rows == self.rows:
            return
        grew = len(rows) > len(self.rows)
        self.rows = rows
        self.query_one("#timeline-text", Static).update(self._table() if rows else Text("no steps yet", "grey50"))
        if grew:
            self.call_after_refresh(self.scroll_end, animate=False)

    def _table(self) -> Table:
        table = Table(box=None, expand=True, show_edge=False, pad_edge=False, header_style="bold")
        table.add_column("t", no_wrap=True, justify="right")
        table.add_column("node", no_wrap=True)
        table.add_column("event", ratio=1, overflow="fold")
        for r in self.rows:
            table.add_row(fmt_t(r.t_s), r.node, Text(r.what, LEVEL_STYLE.get(r.level, "")))
        return table
