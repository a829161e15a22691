"""Event log, newest first. Each event wraps to the log's width (continuation lines indented under its time), so
nothing is cut off at 80 columns; only the visible lines are rendered (line API) and an event is wrapped once per
width, so a long session stays cheap. Focused (`l`, or a click), j/k/g/G move a cursor over events and enter opens
the event's full text and the record behind it (`EventLog.Opened`)."""

from __future__ import annotations

import bisect
import datetime as dt
from collections import deque
from collections.abc import Iterable

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from dashboard.events import Event
from dashboard.widgets.styles import LEVEL_STYLE

MAX_EVENTS = 2000


class EventLog(ScrollView, can_focus=True):
    DEFAULT_CSS = """
    EventLog { height: 1fr; }
    """
    BINDINGS = [
        Binding("enter", "open", "Event detail"),
        Binding("j,down", "move(1)", "Down", show=False),
        Binding("k,up", "move(-1)", "Up", show=False),
        Binding("g,home", "move(-1000000000)", "Newest", show=False),
        Binding("G,end", "move(1000000000)", "Oldest", show=False),
    ]

    class Opened(Message):
        """Enter on an event: show its full text and fields."""

        def __init__(self, event: Event) -> None:
            super().__init__()
            self.event = event

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
        self._starts: list[int] = []  # first line of each shown event
        self._cursor = 0  # index into the shown events (0 = newest)
        self._cursor_event: Event | None = None  # the event under the cursor once the operator moved it
        self._cursor_style = Style(reverse=True)

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

    @property
    def selected(self) -> Event | None:
        """The event under the cursor."""
        return self._shown[self._cursor] if self._shown else None

    def _relayout(self) -> None:
        width = self._width()
        if width != self._wrap_width:
            self._wrapped.clear()
            self._wrap_width = width
        lines: list[tuple[Segment, ...]] = []
        starts: list[int] = []
        for e in self._shown:
            starts.append(len(lines))
            lines.extend(self._wrap(e, width))
        self._lines, self._starts = lines, starts
        # The cursor stays on its event as newer ones arrive above it (or on the newest if never moved).
        kept = self._cursor_event
        self._cursor = next((i for i, e in enumerate(self._shown) if e is kept), 0) if kept is not None else 0
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

    def _span(self, i: int) -> tuple[int, int]:
        """Lines [first, end) of shown event i."""
        first = self._starts[i]
        return first, self._starts[i + 1] if i + 1 < len(self._starts) else len(self._lines)

    def render_line(self, y: int) -> Strip:
        index = self.scroll_offset.y + y
        width = self.size.width
        if index >= len(self._lines):
            return Strip.blank(width)
        strip = Strip(self._lines[index]).crop(0, width).extend_cell_length(width)
        if self.has_focus and self._starts:
            first, end = self._span(self._cursor)
            if first <= index < end:
                strip = strip.apply_style(self._cursor_style)
        return strip

    def _on_focus(self, event: events.Focus) -> None:
        self.refresh()

    def _on_blur(self, event: events.Blur) -> None:
        self.refresh()

    def action_move(self, by: int) -> None:
        if not self._shown:
            return
        self._cursor = max(0, min(len(self._shown) - 1, self._cursor + by))
        self._cursor_event = self._shown[self._cursor]
        first, end = self._span(self._cursor)
        self.scroll_to_region(Region(0, first, 1, end - first), animate=False, immediate=True)
        self.refresh()

    def action_open(self) -> None:
        if self.selected is not None:
            self.post_message(self.Opened(self.selected))

    def _on_click(self, event: events.Click) -> None:
        line = self.scroll_offset.y + event.y
        if not self._starts or line >= len(self._lines):
            return
        index = bisect.bisect_right(self._starts, line) - 1
        if index == self._cursor and event.chain >= 2:
            self.action_open()  # double click opens, as enter does
            return
        self._cursor, self._cursor_event = index, self._shown[index]
        self.refresh()
