"""The help screen draws its Markdown once per width and closes with the keys it names."""

from __future__ import annotations

from pathlib import Path

import pytest
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


async def test_the_covered_screens_key_bar_is_rebuilt_when_it_shows_again_not_under_help(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Textual's Footer rebuilt the overview's keys as `?` covered it, inside the time help takes to come up.
    from dashboard.widgets.screen_footer import ScreenFooter

    from .test_snapshots import feed, recorded_app

    rebuilt: list[str] = []
    recompose = ScreenFooter.recompose

    async def counted(self: ScreenFooter) -> None:
        rebuilt.append(type(self.app.screen).__name__)
        await recompose(self)

    monkeypatch.setattr(ScreenFooter, "recompose", counted)
    app, update = recorded_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await feed(app, update)(pilot)
        await pilot.pause()
        rebuilt.clear()
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        assert rebuilt == []
        await pilot.press("escape")
        await pilot.pause()
        await pilot.pause()
        assert rebuilt and set(rebuilt) == {"OverviewScreen"}, rebuilt
        keys = "\n".join(s.text for s in app.screen._compositor.render_strips()).splitlines()[-1]
        assert "Help" in keys and "Drills" in keys, keys


_GC_PROBE = """
import asyncio, gc, sys
from pathlib import Path
from dashboard.app import X0Dash
from dashboard.providers.inventory import InventoryProvider

async def main() -> None:
    app = X0Dash(InventoryProvider(Path(sys.argv[1])), autopoll=False, tune_gc=sys.argv[2] == "tune")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.2)
        print(gc.get_freeze_count(), *gc.get_threshold())

asyncio.run(main())
"""


@pytest.mark.parametrize("mode", ["tune", "default"])
def test_the_command_freezes_what_its_first_frame_built_and_tests_do_not(mode: str, tmp_path: Path) -> None:
    # The x0dash command (tune_gc) keeps full collections, up to 94 ms each, off key presses; an app built
    # inside a test process must not freeze that process's garbage.
    import subprocess
    import sys

    from agent.memory import GC_THRESHOLDS

    out = subprocess.run(
        [sys.executable, "-c", _GC_PROBE, str(tmp_path / "absent.json"), mode],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    frozen, *threshold = (int(x) for x in out.stdout.split())
    if mode == "tune":
        assert frozen > 10_000 and tuple(threshold) == GC_THRESHOLDS, out.stdout
    else:
        assert frozen == 0 and tuple(threshold) != GC_THRESHOLDS, out.stdout
