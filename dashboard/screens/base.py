"""What every mesh screen shares: the header, and the one way the app hands it a poll result (`receive`)."""

from __future__ import annotations

import msgspec
from textual.css.query import NoMatches
from textual.screen import Screen

from dashboard.screens.context import Dashboard
from dashboard.session import MeshUpdate
from dashboard.widgets.header import MeshHeader


class MeshScreen(Screen[None]):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.composed = False
        self._held: list[MeshUpdate] = []

    @property
    def dash(self) -> Dashboard:
        return self.app  # type: ignore[return-value]

    def header(self) -> MeshHeader:
        return MeshHeader(self.dash.clock, id="header")

    def refresh_header(self) -> None:
        header = self.query_one(MeshHeader)
        header.show(self.dash.view, self.dash.drill_banner, note=self.dash.status_note)

    def receive(self, update: MeshUpdate | None) -> None:
        """Show a poll result now, or keep it until the screen is composed.

        A poll can land between a screen being pushed and its widgets existing (at start-up the first one often
        does): drawing then would query widgets that are not there yet and kill the app. The events of every
        held update are kept (the event log must not lose any); the rest is read from the app, which is current.
        """
        if self.composed:
            if not self.children or self.torn_down():
                return  # torn down (the app is exiting; a filing or a poll finished meanwhile): nothing to draw
            try:
                self.show_update(update)
            except NoMatches:
                # Widgets removed between the check and the query: only legitimate while the app tears the
                # screen down (seen once in a whole-suite run: EventLog gone, header still there).
                if not self.torn_down():
                    raise
        elif update is not None:
            self._held.append(update)

    def torn_down(self) -> bool:
        """The screen or the app is closing (Textual's own flags: there is no public one for a closing screen)."""
        flags = ("_closing", "_closed", "_pruning")
        return not self.is_attached or any(getattr(n, f, False) for n in (self, self.app) for f in flags)

    def show_update(self, update: MeshUpdate | None) -> None:
        """Draw a poll result (None: only the drill banner or status note changed). Only `receive` calls it
        before the screen is composed; subclasses extend it and may query their widgets."""
        self.refresh_header()

    def on_mount(self) -> None:
        # Textual calls the subclasses' on_mount first (the MRO order), so their widgets are set up by now.
        self.composed = True
        held, self._held = self._held, []
        if held:
            self.show_update(msgspec.structs.replace(held[-1], events=[e for u in held for e in u.events]))
        else:
            self.show_update(None)

    def on_screen_resume(self) -> None:
        # Screens below the top one are not redrawn per poll; catch up when they come back.
        self.receive(None)
