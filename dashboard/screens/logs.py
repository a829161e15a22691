"""A node's logs (`L` in node detail): agent.log and yggdrasil.log from a local or inventory mesh's run directory,
or the Nomad tasks' stdout/stderr through the alloc logs API. Scrollable (j/k, g/G), searchable (`/`, then `n`
for the next match), `r` reloads, `tab` picks the next log. Read in a worker: the UI never waits on a file or on
Nomad."""

from __future__ import annotations

from rich.highlighter import Highlighter
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Input, Log, Static

from dashboard.logs import LogSource
from dashboard.providers.base import ProviderError
from dashboard.screens.base import MeshScreen
from dashboard.widgets.screen_footer import ScreenFooter


class NeedleHighlighter(Highlighter):
    """Marks every occurrence of the searched text (any case), so the match is seen, not only scrolled to."""

    def __init__(self) -> None:
        super().__init__()
        self.needle = ""

    def highlight(self, text: Text) -> None:
        if self.needle:
            text.highlight_words([self.needle], style="black on yellow", case_sensitive=False)


class LogScreen(MeshScreen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("tab", "next_log", "Next log"),
        Binding("r", "reload", "Reload"),
        Binding("slash", "search", "Search", key_display="/"),
        Binding("n", "next_match", "Next match"),
        Binding("j", "down", "Down", show=False),
        Binding("k", "up", "Up", show=False),
        Binding("g", "top", "Top", show=False),
        Binding("G", "bottom", "Bottom", show=False),
    ]

    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id
        self.sources: list[LogSource] = []
        self.current = 0
        self.lines: list[str] = []
        self.match_at = -1
        self.needle = ""
        self._marks = NeedleHighlighter()

    def compose(self) -> ComposeResult:
        yield self.header()
        yield Static("", id="log-title")
        yield Input(placeholder="search this log; enter finds, n the next match, esc closes", id="log-search")
        yield Log(id="log", highlight=False, auto_scroll=False)
        yield ScreenFooter()

    def on_mount(self) -> None:
        self.query_one("#log-search", Input).display = False
        log = self.query_one(Log)
        log.highlight, log.highlighter = True, self._marks
        log.focus()
        self._load_sources()

    @work(exclusive=True, group="log-sources", exit_on_error=False)
    async def _load_sources(self) -> None:
        provider = self.dash.session.provider
        self.sources = provider.log_sources(self.node_id)
        if not self.sources:
            self._show_text(
                f"no logs known for {self.node_id}: the source ({provider.name}) does not say where they are "
                "(an inventory without mesh_dir, or a Nomad node without an allocation)"
            )
            return
        self.action_reload()

    def _title(self, extra: str = "") -> None:
        if not self.sources:
            return
        src = self.sources[self.current]
        others = "  ".join(
            ("[" + s.name + "]") if i == self.current else s.name for i, s in enumerate(self.sources)
        )
        self.query_one("#log-title", Static).update(f"{self.node_id}: {others}\n{src.where}{extra}")

    def action_reload(self) -> None:
        if self.sources:
            self._title("  (reading…)")
            self._read(self.sources[self.current])

    @work(exclusive=True, group="log-read", exit_on_error=False, thread=True)
    def _read(self, source: LogSource) -> None:
        try:
            text = self.dash.session.provider.read_log(source)
        except ProviderError as exc:
            text = f"cannot read {source.name}: {exc}"
        self.app.call_from_thread(self._show_text, text)

    def _show_text(self, text: str) -> None:
        self.lines = text.splitlines()
        log = self.query_one(Log)
        log.clear()
        log.write_lines(self.lines or ["(empty)"])
        log.scroll_end(animate=False)
        self.match_at = -1
        self._title(f"  ({len(self.lines)} lines)")

    def action_next_log(self) -> None:
        if self.sources:
            self.current = (self.current + 1) % len(self.sources)
            self.action_reload()

    def action_search(self) -> None:
        box = self.query_one("#log-search", Input)
        box.display = True
        box.focus()

    @on(Input.Submitted, "#log-search")
    def _search_submitted(self) -> None:
        box = self.query_one("#log-search", Input)
        # The box goes away once searched (at 80x24 it costs three rows of log); the title keeps the text.
        box.display = False
        self.needle = box.value.strip()
        self._marks.needle = self.needle
        log = self.query_one(Log)
        log.refresh_lines(0, max(1, log.line_count))
        self.match_at = -1
        self.action_next_match()
        log.focus()

    def action_next_match(self) -> None:
        needle = self.needle.lower()
        if not needle or not self.lines:
            return
        n = len(self.lines)
        for step in range(1, n + 1):
            i = (self.match_at + step) % n
            if needle in self.lines[i].lower():
                self.match_at = i
                log = self.query_one(Log)
                col = self.lines[i].lower().find(needle)
                far = col + len(needle) > log.scrollable_content_region.width  # off to the right: bring it in
                log.scroll_to(x=max(0, col - 8) if far else 0, y=max(0, i - 2), animate=False)
                self._title(f"  /{self.needle}: line {i + 1} (n: next)")
                return
        self._title(f"  /{self.needle}: not found")

    def action_down(self) -> None:
        self.query_one(Log).scroll_down(animate=False)

    def action_up(self) -> None:
        self.query_one(Log).scroll_up(animate=False)

    def action_top(self) -> None:
        self.query_one(Log).scroll_home(animate=False)

    def action_bottom(self) -> None:
        self.query_one(Log).scroll_end(animate=False)

    def action_back(self) -> None:
        box = self.query_one("#log-search", Input)
        if box.display and box.has_focus:
            box.display = False
            self.query_one(Log).focus()
            return
        self.dismiss()
