"""Event log, newest first. Only the visible lines are rendered (line API), so a long session stays cheap."""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Iterable

from rich.segment import Segment
from rich.style import Style
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
        self.virtual_size = Size(self.size.width, len(self._shown))
        self.refresh()

    def render_line(self, y: int) -> Strip:
        index = self.scroll_offset.y + y
        width = self.size.width
        if index >= len(self._shown):
            return Strip.blank(width)
        e = self._shown[index]
        stamp = dt.datetime.fromtimestamp(e.at).strftime("%H:%M:%S.%f")[:-4]
        segments = [Segment(stamp + " ", self._dim), Segment(e.text, self._styles.get(e.level, Style()))]
        return Strip(segments).crop(self.scroll_offset.x, self.scroll_offset.x + width).extend_cell_length(width)
