"""x0dash as an operator uses it at 80x24 and 200x50 (issue 12): the recorded 3-node mesh drawn through the real
screens, then what the screen shows is read back as text (what a person would see, cropping included)."""

from __future__ import annotations

import pytest
from textual.widgets import Input

from dashboard.app import X0Dash
from dashboard.screens.drills import DrillScreen, KindButton

from .test_snapshots import feed, recorded_app

SIZES = [(80, 24), (200, 50)]


def screen_text(app: X0Dash) -> str:
    """Every character on the screen, row by row, as the terminal shows it."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


def squeezed(text: str) -> str:
    """Screen text with the layout's spaces, borders and line breaks removed: a wrapped sentence reads whole."""
    return "".join(ch for ch in text if ch.isalnum() or ch in ".:;,()/+-'")


@pytest.mark.parametrize("size", SIZES)
async def test_drill_kinds_read_without_colour(size: tuple[int, int]) -> None:
    app, update = recorded_app()
    async with app.run_test(size=size) as pilot:
        await feed(app, update)(pilot)
        await pilot.press("d")
        buttons = list(app.screen.query(KindButton))
        marks = {b.id: b.render().plain[:3] for b in buttons}
        assert marks["kind-blackhole"] == "▐●▌" and marks["kind-partition"] == "▐ ▌", marks
        await pilot.click("#kind-partition")
        marks = {b.id: b.render().plain[:3] for b in buttons}
        assert marks["kind-partition"] == "▐●▌" and marks["kind-blackhole"] == "▐ ▌", marks


@pytest.mark.parametrize("size", SIZES)
async def test_drills_form_error_is_on_screen(size: tuple[int, int]) -> None:
    # Item 2: at 80x24 `d` then `s` with no target showed nothing: "pick a target node" was below the fold.
    app, update = recorded_app()
    async with app.run_test(size=size) as pilot:
        await feed(app, update)(pilot)
        await pilot.press("d", "s")
        assert isinstance(app.screen, DrillScreen)
        assert "pick a target node" in screen_text(app), screen_text(app)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("key", ["s", "enter"])
async def test_start_from_inside_a_text_field(size: tuple[int, int], key: str) -> None:
    # Item 2: `s` and Enter did nothing while the cursor was in a text field, though the footer offers "s Start".
    app, update = recorded_app()
    async with app.run_test(size=size) as pilot:
        await feed(app, update)(pilot)
        await pilot.press("d")
        screen = app.screen
        duration = screen.query_one("#duration", Input)
        duration.focus()
        await pilot.press("end", "backspace", "backspace", "5", key)
        assert duration.value == "5"
        assert "pick a target node" in screen_text(app)  # the form was checked: the start was attempted
        screen.query_one("#target").value = "node-b"
        duration.focus()
        await pilot.press(key)
        await pilot.pause()
        from dashboard.screens.confirm import ConfirmDrillScreen

        assert isinstance(app.screen, ConfirmDrillScreen)
        assert "for 5 s" in app.screen.description
        await pilot.press("n")
        assert app.engine.running is None
