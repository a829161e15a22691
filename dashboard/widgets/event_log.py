"""Event log, newest first. Each event wraps to the log's width (continuation lines indented under its time), so
nothing is cut off at 80 columns; only the visible lines are rendered (line API) and an event is wrapped once per
width, so a long session stays cheap."""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Iterable

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from dashboard.events import Event
from dashboard.widgets.styles import LEVEL_STYLE

MAX_EVENTS = 2000


class EventLog(ScrollView, can_focus=True):
    DEFAULT_CSS = """
    EventLog { height: 1fr; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._all: deque[Event] = deque(maxlen=MAX_EVENTS)
        self._shown: list[Event] = []  # newest first, filtered
        self._filter = ""
        self._styles = {k: Style.parse(v) if v else Style() for k, v in LEVEL_STYLE.items()}
        self._dim = Style.parse("grey50")
        self._lines: list[tuple[Segment, ...]] = []  # the shown events, wrapped to the current width
        self._wrapped: dict[int, tuple[Event, list[tuple[Segment, ...]]]] = {}  # id(event) -> its lines
        self._wrap_width = 0

    @property
    def events(self) -> list[Event]:
        """Shown events, newest first."""
        return list(self._shown)

    def add(self, events: Iterable[Event]) -> None:
        new = sorted(events, key=lambda e: e.at)
        if not new:
            return
        self._all.extend(new)
        self._rebuild()

    def set_filter(self, text: str) -> None:
        self._filter = text.lower()
        self._rebuild()

    def _rebuild(self) -> None:
        f = self._filter
        ordered = sorted(self._all, key=lambda e: e.at, reverse=True)
        self._shown = [e for e in ordered if not f or f in e.text.lower() or (e.node and f in e.node.lower())]
        self._relayout()

    def _on_resize(self, event: events.Resize) -> None:
        self._relayout()

    def _width(self) -> int:
        return max(20, self.scrollable_content_region.width or self.size.width or 80)

    def _relayout(self) -> None:
        width = self._width()
        if width != self._wrap_width:
            self._wrapped.clear()
            self._wrap_width = width
        lines: list[tuple[Segment, ...]] = []
        for e in self._shown:
            lines.extend(self._wrap(e, width))
        self._lines = lines
        if len(self._wrapped) > 2 * MAX_EVENTS:  # forget events that left the deque
            keep = {id(e) for e in self._all}
            self._wrapped = {k: v for k, v in self._wrapped.items() if k in keep}
        self.virtual_size = Size(width, len(lines))
        self.refresh()

    def _wrap(self, e: Event, width: int) -> list[tuple[Segment, ...]]:
        cached = self._wrapped.get(id(e))
        if cached is not None and cached[0] is e:
            return cached[1]
        stamp = dt.datetime.fromtimestamp(e.at).strftime("%H:%M:%S.%f")[:-4] + " "
        style = self._styles.get(e.level, Style())
        body = Text(e.text, style=style)
        room = max(8, width - len(stamp))
        parts = body.wrap(self.app.console, room, overflow="fold") if len(e.text) > room else [body]
        out: list[tuple[Segment, ...]] = []
        for i, part in enumerate(parts):
            lead = Segment(stamp, self._dim) if i == 0 else Segment(" " * len(stamp))
            out.append((lead, *(Segment(seg.text, seg.style) for seg in part.render(self.app.console))))
        self._wrapped[id(e)] = (e, out)
        return out

    def render_line(self, y: int) -> Strip:
        index = self.scroll_offset.y + y
        width = self.size.width
        if index >= len(self._lines):
            return Strip.blank(width)
        return Strip(self._lines[index]).crop(0, width).extend_cell_length(width)
