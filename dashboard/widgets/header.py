"""The header every screen shows: source, nodes healthy/total, links up/planned, active incidents, data age,
and the running drill. It redraws its ages on a timer, so a stalled poll shows as growing age, not as a
frozen screen."""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text
from textual.widgets import Static

from dashboard.models import MeshView
from dashboard.widgets.styles import fmt_age


class MeshHeader(Static):
    DEFAULT_CSS = """
    MeshHeader { height: 2; padding: 0 1; background: $panel; }
    """

    def __init__(self, clock: Callable[[], float], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.clock = clock
        self.view: MeshView | None = None
        self.drill: str | None = None
        self.note: str | None = None

    def on_mount(self) -> None:
        self.set_interval(0.5, self._redraw)
        self._redraw()

    def show(self, view: MeshView | None, drill: str | None = None, note: str | None = None) -> None:
        self.view, self.drill, self.note = view, drill, note
        self._redraw()

    def _redraw(self) -> None:
        # Its size is fixed (height 2, full width): the default update() also lays out the whole screen again,
        # 36 ms at 160x50 with 20 nodes, three times a second (this timer, each poll), and keys waited behind it.
        self.update(self.render_header(), layout=False)

    def render_header(self) -> Text:
        v = self.view
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append("x0dash ", "bold")
        if v is None:
            t.append(self.note or "starting…", "grey50")
            return t
        t.append(v.source, "bold cyan" if v.source_ok else "bold red")
        if not v.source_ok:
            t.append(f"  {v.source_detail}", "red")
        t.append("\n")
        healthy_style = "green" if v.nodes_healthy == v.nodes_total else "bold red"
        t.append("nodes ")
        t.append(f"{v.nodes_healthy}/{v.nodes_total}", healthy_style)
        t.append(" up  links ")
        t.append(f"{v.links_up}/{v.links_planned}", "green" if v.links_up == v.links_planned else "bold yellow")
        if v.links_temporary:
            t.append(f" +{v.links_temporary} temp", "cyan")
        worst = v.worst_reach
        if worst is not None:
            # MAPE-K's own count: an agent can be healthy while it reaches only part of the mesh (a partition);
            # without this the header said 8/8 healthy beside "partition (4/8 members reachable)".
            reach, known, _ = worst
            t.append("  reach ")
            t.append(f"{reach}/{known}", "green" if reach >= known else "bold yellow")
        t.append("  incidents ")
        t.append(str(v.incidents_active), "bold yellow" if v.incidents_active else "green")
        age = v.data_age(self.clock())
        t.append("  data ")
        t.append(fmt_age(age), "bold red" if age is not None and age > 5 else "")
        if v.poll_duration_s is not None:
            t.append(f" ({v.poll_duration_s * 1000:.0f} ms poll)", "grey50")
        if self.drill:
            t.append("   DRILL ", "bold reverse red")
            t.append(f" {self.drill}", "bold red")
        if v.warnings:
            t.append(f"   ⚠ {v.warnings[0]}", "yellow")
        return t
