"""The help screen draws its Markdown once per width and closes with the keys it names."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markdown import Markdown

from dashboard.app import X0Dash
from dashboard.providers.inventory import InventoryProvider
from dashboard.screens.help import HELP, HelpScreen, _RenderedOnce


def _lines(console: Console, renderable: object, width: int) -> list[str]:
    with console.capture() as cap:
        console.print(renderable, width=width)
    return cap.get().splitlines()


def test_drawn_once_per_width_as_markdown_draws_it() -> None:
    console = Console(width=200, color_system=None, force_terminal=False)
    once = _RenderedOnce(Markdown(HELP))
    for width in (150, 80, 150):
        assert _lines(console, once, width) == _lines(console, Markdown(HELP), width)
    assert sorted(w for _, w in once._drawn) == [80, 150]  # the second 150 came from the cache
    assert max(len(line) for line in _lines(console, once, 80)) <= 80  # narrower terminals get it rewrapped


async def test_help_opens_again_and_closes_with_each_key_it_names(tmp_path: Path) -> None:
    app = X0Dash(InventoryProvider(tmp_path / "absent.json"), reports_dir=tmp_path, autopoll=False)
    async with app.run_test(size=(120, 40)) as pilot:
        for key in ("escape", "q", "question_mark"):
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            drawn = "\n".join(s.text for s in app.screen._compositor.render_strips())
            assert "close help" in drawn and "command palette" in drawn
            await pilot.press(key)
            assert not isinstance(app.screen, HelpScreen), f"{key} did not close help"
