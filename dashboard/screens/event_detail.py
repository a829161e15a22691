"""One event in full (enter on an event in the log): its whole text, wrapped, with the full date and zone, and the
record behind it (the incident, heal action, drill or state change, field by field). `c` copies it (OSC 52, so
also through SSH and tmux); esc goes back."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Static

from dashboard.events import Event, stamp
from dashboard.widgets.screen_footer import ScreenFooter
from dashboard.widgets.styles import LEVEL_STYLE


def as_text(event: Event) -> str:
    """The event as plain text (what `c` copies)."""
    lines = [
        f"{stamp(event.at)}  {event.kind}  {event.level}" + (f"  {event.node}" if event.node else ""),
        event.text,
    ]
    lines += [f"{name}: {value}" for name, value in event.fields]
    return "\n".join(lines) + "\n"


class EventDetailScreen(Screen[None]):
    """A full screen, like help: a modal would redraw the overview behind it on every frame."""

    BINDINGS = [
        Binding("escape,q,enter", "close", "Back"),
        Binding("c", "copy", "Copy"),
        Binding("j", "scroll(1)", "Down", show=False),
        Binding("k", "scroll(-1)", "Up", show=False),
        Binding("g", "scroll(-1000000)", "Top", show=False),
        Binding("G", "scroll(1000000)", "Bottom", show=False),
    ]

    def __init__(self, event: Event) -> None:
        super().__init__()
        self.event = event

    def compose(self) -> ComposeResult:
        e = self.event
        head = Text.assemble(
            (f"{e.kind} event", "bold"),
            (f"  {e.level}", LEVEL_STYLE.get(e.level, "")),
            (f"  {e.node}" if e.node else "", "bold"),
            ("\n" + stamp(e.at), "grey50"),
        )
        table = Table.grid(padding=(0, 2))
        table.add_column(style="grey50", no_wrap=True)
        table.add_column(overflow="fold")
        for name, value in e.fields:
            table.add_row(name, value)
        with VerticalScroll(id="event-box"):
            yield Static(head, id="event-head")
            yield Static(Text(e.text, LEVEL_STYLE.get(e.level, "")), id="event-text")
            yield Static(table, id="event-fields")
        yield ScreenFooter()

    def on_mount(self) -> None:
        self.query_one("#event-box").border_title = "event"
        self.query_one("#event-box").focus()

    def action_scroll(self, by: int) -> None:
        box = self.query_one("#event-box", VerticalScroll)
        box.scroll_to(y=max(0, box.scroll_y + by), animate=False)

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(as_text(self.event))
        self.notify("event copied to the clipboard (OSC 52)", timeout=3)

    def action_close(self) -> None:
        self.dismiss()
