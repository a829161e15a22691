"""What every mesh screen shares: the header, and a `show_update` hook the app calls after each poll."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.screen import Screen

from dashboard.session import MeshUpdate
from dashboard.widgets.header import MeshHeader

if TYPE_CHECKING:
    from dashboard.app import X0Dash


class MeshScreen(Screen[None]):
    @property
    def dash(self) -> X0Dash:
        return self.app  # type: ignore[return-value]

    def header(self) -> MeshHeader:
        return MeshHeader(self.dash.clock, id="header")

    def refresh_header(self) -> None:
        header = self.query_one(MeshHeader)
        header.show(self.dash.view, self.dash.drill_banner, note=self.dash.status_note)

    def show_update(self, update: MeshUpdate | None) -> None:
        """Called with each new poll (None: only the drill banner or status note changed)."""
        self.refresh_header()

    def on_screen_resume(self) -> None:
        # Screens below the top one are not redrawn per poll; catch up when they come back.
        self.show_update(None)
