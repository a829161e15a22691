"""The mesh drawn in the terminal: nodes on a ring with their links coloured by state (3 to 30 nodes), an
adjacency matrix for larger meshes, and a list of the links that are not up when even that does not fit.

The drawing is pure (`draw_ring`, `draw_matrix`, `draw_list` return lines of (text, style) cells); the widget
only picks one for its size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.text import Text
from textual.widget import Widget

from dashboard.models import LinkView, MeshView, NodeView
from dashboard.widgets.styles import LINK_STYLE, LINK_SYMBOL, NODE_STYLE, NODE_SYMBOL, fmt_ms

RING_MAX_NODES = 30
LABEL_MAX = 14

Cell = tuple[str, str]  # character, rich style


class Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.cells: list[list[Cell]] = [[(" ", "")] * width for _ in range(height)]

    def put(self, x: int, y: int, ch: str, style: str) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            self.cells[y][x] = (ch, style)

    def text(self, x: int, y: int, s: str, style: str) -> None:
        for i, ch in enumerate(s):
            self.put(x + i, y, ch, style)

    def line(self, x0: int, y0: int, x1: int, y1: int, ch: str, style: str, *, dotted: bool = False) -> None:
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err, n = dx + dy, 0
        while True:
            if not dotted or n % 2 == 0:
                self.put(x0, y0, ch, style)
            if x0 == x1 and y0 == y1:
                return
            n += 1
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def rows(self) -> list[list[Cell]]:
        return self.cells


def _line_char(dx: float, dy: float) -> str:
    # Terminal cells are about twice as tall as wide: weigh dy accordingly before picking a glyph.
    angle = math.degrees(math.atan2(-dy * 2.0, dx)) % 180.0
    if angle < 22.5 or angle >= 157.5:
        return "─"
    if angle < 67.5:
        return "╱"  # noqa: RUF001
    if angle < 112.5:
        return "│"
    return "╲"


def ring_positions(n: int, width: int, height: int) -> list[tuple[int, int]]:
    """Node centres on an ellipse filling the canvas, first node at the top, clockwise."""
    if n == 1:
        return [(width // 2, height // 2)]
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    rx, ry = max(1.0, cx - LABEL_MAX / 2 - 1), max(1.0, cy - 1)
    pos = []
    for i in range(n):
        a = -math.pi / 2 + 2 * math.pi * i / n
        pos.append((round(cx + rx * math.cos(a)), round(cy + ry * math.sin(a))))
    return pos


def draw_ring(
    nodes: Sequence[NodeView], links: Sequence[LinkView], width: int, height: int, *, latency: bool = True
) -> list[list[Cell]]:
    canvas = Canvas(width, height)
    pos = dict(zip((n.id for n in nodes), ring_positions(len(nodes), width, height), strict=True))
    # Healthy links first so a broken link is drawn on top where lines cross.
    order = {"up": 0, "unknown": 1, "temporary": 2, "silent": 3, "down": 4}
    for link in sorted(links, key=lambda lk: order[lk.state]):
        if link.a not in pos or link.b not in pos:
            continue
        (x0, y0), (x1, y1) = pos[link.a], pos[link.b]
        ch = _line_char(x1 - x0, y1 - y0)
        canvas.line(
            x0, y0, x1, y1, ch, LINK_STYLE[link.state], dotted=link.state in ("down", "temporary", "unknown")
        )
    if latency and len(nodes) <= 8:
        for link in links:
            if link.latency_ms is None or link.a not in pos or link.b not in pos:
                continue
            (x0, y0), (x1, y1) = pos[link.a], pos[link.b]
            label = fmt_ms(link.latency_ms).replace(" ", "")
            canvas.text((x0 + x1) // 2 - len(label) // 2, (y0 + y1) // 2, label, LINK_STYLE[link.state])
    for n in nodes:
        x, y = pos[n.id]
        label = NODE_SYMBOL[n.state] + " " + (n.id if len(n.id) <= LABEL_MAX else n.id[: LABEL_MAX - 1] + "…")
        if n.is_leader:
            label += " ★"  # the Raft leader
        canvas.text(max(0, min(width - len(label), x - len(label) // 2)), y, label, NODE_STYLE[n.state])
    return canvas.rows()


def draw_matrix(nodes: Sequence[NodeView], links: Sequence[LinkView]) -> list[list[Cell]]:
    """Adjacency matrix: row i, column j shows the link between node i and node j (column headers are row
    numbers, so 100 nodes fit in about 220 columns)."""
    index = {n.id: i for i, n in enumerate(nodes)}
    state: dict[tuple[int, int], str] = {}
    for link in links:
        if link.a in index and link.b in index:
            i, j = index[link.a], index[link.b]
            state[(i, j)] = state[(j, i)] = link.state
    name_w = min(LABEL_MAX, max((len(n.id) for n in nodes), default=4))
    num_w = len(str(len(nodes)))
    rows: list[list[Cell]] = []
    head = [(" ", "")] * (name_w + num_w + 4)
    for j in range(len(nodes)):
        head.append((str(j % 10), "grey50"))
    rows.append(head)
    for i, n in enumerate(nodes):
        row: list[Cell] = []
        mark = "★" if n.is_leader else " "  # the Raft leader
        label = f"{i:>{num_w}} {NODE_SYMBOL[n.state]} {n.id[:name_w]:<{name_w}}{mark}"
        row.extend((ch, NODE_STYLE[n.state]) for ch in label)
        for j in range(len(nodes)):
            s = state.get((i, j))
            if i == j:
                row.append(("╲", "grey23"))
            elif s is None:
                row.append(("·", "grey23"))
            else:
                row.append((LINK_SYMBOL[s], LINK_STYLE[s]))
        rows.append(row)
    return rows


def draw_list(nodes: Sequence[NodeView], links: Sequence[LinkView]) -> list[list[Cell]]:
    """For meshes too large even for the matrix: totals per state, then each link that is not up."""
    counts: dict[str, int] = {}
    for link in links:
        counts[link.state] = counts.get(link.state, 0) + 1
    rows: list[list[Cell]] = []
    summary = "  ".join(f"{LINK_SYMBOL[s]} {s} {c}" for s, c in sorted(counts.items()))
    rows.append([(ch, "bold") for ch in f"{len(nodes)} nodes, {len(links)} links: {summary}"])
    for link in links:
        if link.state == "up":
            continue
        text = f"{LINK_SYMBOL[link.state]} {link.a} <-> {link.b}  {link.state}  {link.detail}"
        rows.append([(ch, LINK_STYLE[link.state]) for ch in text])
    if len(rows) == 1:
        rows.append([(ch, "green") for ch in "every link is up"])
    return rows


def to_text(rows: list[list[Cell]]) -> Text:
    text = Text(no_wrap=True, overflow="crop")
    for y, row in enumerate(rows):
        if y:
            text.append("\n")
        run, run_style = [], None
        for ch, style in row:
            if style != run_style and run:
                text.append("".join(run), run_style or "")
                run = []
            run.append(ch)
            run_style = style
        if run:
            text.append("".join(run), run_style or "")
    return text


class TopologyView(Widget):
    """Draws the last MeshView it was given; picks ring, matrix or list for the node count and its size."""

    DEFAULT_CSS = """
    TopologyView { height: 1fr; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._view: MeshView | None = None
        self.mode = "ring"
        self._cache: tuple[object, Text] | None = None

    def show(self, view: MeshView) -> None:
        self._view = view
        self.refresh()

    def render(self) -> Text:
        # Redrawn on every refresh (a screen popping, a resize): draw only when the view or the size changed.
        key = (id(self._view), self.size.width, self.size.height)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._draw())
        return self._cache[1]

    def _draw(self) -> Text:
        view = self._view
        width, height = self.size.width, self.size.height
        if view is None:
            return Text("waiting for the first poll…", style="grey50")
        if not view.nodes:
            return Text("the source lists no nodes", style="yellow")
        nodes, links = view.nodes, view.links
        if len(nodes) <= RING_MAX_NODES and width >= 30 and height >= 7:
            self.mode = "ring"
            return to_text(draw_ring(nodes, links, width, height))
        matrix = draw_matrix(nodes, links)
        if len(matrix[0]) <= width and len(matrix) <= max(height, 1) + 1:
            self.mode = "matrix"
            return to_text(matrix)
        self.mode = "list"
        return to_text(draw_list(nodes, links)[: max(1, height)])
