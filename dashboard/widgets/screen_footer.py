"""The key bar of a screen, rebuilt only while that screen is the one shown."""

from __future__ import annotations

from textual.screen import Screen
from textual.widgets import Footer


class ScreenFooter(Footer):
    """Textual's Footer without one rebuild. A screen publishes its bindings as it is covered (`?` over the
    overview), and the stock Footer then recomposed every key of a screen nobody sees, inside the time `?` takes to
    draw help. Uncovering the screen publishes them again, so the keys are rebuilt then, when they can be seen."""

    def bindings_changed(self, screen: Screen) -> None:
        if self.is_attached and self.app.screen is not self.screen:
            return
        super().bindings_changed(screen)
