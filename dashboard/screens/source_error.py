"""Shown when the source cannot start (no local mesh, unreadable inventory, Nomad refusing): the reason,
and retry or quit. Never a traceback."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Label, Static

from dashboard.widgets.screen_footer import ScreenFooter


class SourceErrorScreen(Screen[None]):
    BINDINGS = [
        Binding("r", "retry", "Retry"),
        Binding("q", "quit_now", "Quit"),
    ]

    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error

    def compose(self) -> ComposeResult:
        with Vertical(id="source-error-box"):
            yield Label("x0dash could not start its source", id="source-error-title")
            yield Static(self.error, id="source-error")
            yield Static("r: try again   q: quit", id="source-error-keys")
        yield ScreenFooter()

    def action_quit_now(self) -> None:
        # Nothing started, nothing to stop: the provider's stop() already ran after the failed start.
        self.app.exit(3, return_code=3)

    def action_retry(self) -> None:
        self.dismiss()
        self.app.start_polling()  # type: ignore[attr-defined]
