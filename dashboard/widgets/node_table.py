"""The node table: one row per node, updated in place (only changed cells) so the cursor stays put and a
100-node mesh costs little per poll. Nomad columns appear when the source is Nomad."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rich.cells import cell_len
from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable

from dashboard.models import NodeView
from dashboard.widgets.styles import NODE_STYLE, NODE_SYMBOL, fmt_age, fmt_ms

BASE_COLUMNS = (
    ("node", "node"),
    ("health", "health"),
    ("address", "Yggdrasil address"),
    ("peers", "peers"),
    ("incidents", "incidents"),
    ("rps", "req/s"),
    ("p99", "p99"),
    ("age", "data age"),
)
NOMAD_COLUMNS = (("alloc", "alloc"), ("nomad", "alloc status"), ("host", "Nomad node"))
# Shown once any agent answers /cluster (agent.consensus): role (★ marks the leader), term, commit lag.
RAFT_COLUMNS = (("raft", "raft role/term/lag"),)
# What goes first when the table is too narrow (k9s style): least important first. node, health and peers stay.
DROP_ORDER = ("address", "alloc", "rps", "age", "host", "nomad", "p99", "raft", "incidents")
# Widths the columns need (content plus cell padding), to decide what fits before drawing.
COLUMN_WIDTH = {
    "node": 10,
    "health": 13,
    "address": 41,
    "peers": 9,
    "incidents": 11,
    "rps": 8,
    "p99": 9,
    "age": 10,
    "alloc": 10,
    "nomad": 18,
    "host": 14,
    "raft": 20,
}


def fitting_columns(
    columns: Sequence[str],
    width: int,
    drop_order: Sequence[str] = DROP_ORDER,
    widths: dict[str, int] = COLUMN_WIDTH,
) -> list[str]:
    """The columns that fit in `width` cells, dropping by `drop_order`, least important first (pure)."""
    kept = list(columns)
    for victim in drop_order:
        if sum(widths.get(c, 10) for c in kept) <= width:
            break
        if victim in kept:
            kept.remove(victim)
    return kept


def matches(node: NodeView, text: str) -> bool:
    """The `/` filter: a case-insensitive substring of the node id, state, address, Nomad node or why."""
    if not text:
        return True
    t = text.lower()
    hay = [node.id, node.state, node.address or "", node.detail]
    if node.nomad is not None:
        hay += [node.nomad.node_name or "", node.nomad.alloc_name, node.nomad.client_status]
    return any(t in h.lower() for h in hay)


def row_cells(n: NodeView) -> dict[str, str | Text]:
    planned = "?" if n.peers_planned is None else n.peers_planned
    peers = "-" if n.peers_up is None else f"{n.peers_up}/{planned}"
    if n.peers_temporary:
        peers += f" +{n.peers_temporary}"
    if n.peers_up is not None and n.peers_planned is not None and n.peers_up < n.peers_planned:
        peers_cell: str | Text = Text(peers, "yellow")
    else:
        peers_cell = peers
    age_style = "" if n.state in ("up", "degraded") else "bold red"
    cells: dict[str, str | Text] = {
        "node": Text(n.id, "bold"),
        "health": Text(f"{NODE_SYMBOL[n.state]} {n.state}", NODE_STYLE[n.state]),
        "address": n.address or "-",
        "peers": peers_cell,
        "incidents": Text(str(n.incidents_active), "bold yellow") if n.incidents_active else "0",
        "rps": "-" if n.req_rate is None else f"{n.req_rate:.1f}",
        "p99": fmt_ms(n.p99_ms),
        "age": Text(fmt_age(n.age_s), age_style),
    }
    if n.raft_role is not None:
        cells["raft"] = raft_cell(n)
    if n.nomad is not None:
        cells["alloc"] = n.nomad.alloc_id[:8]
        cells["nomad"] = f"{n.nomad.client_status}/{n.nomad.desired_status}"
        cells["host"] = n.nomad.node_name or n.nomad.node_id[:8]
    return cells


def raft_cell(n: NodeView) -> Text:
    """'★ leader t4', 'follower t4 lag 2', 'client', ... (pure)."""
    role = n.raft_role or "-"
    if role in ("client", "disabled", "joining"):
        return Text(role, "dim" if role != "joining" else "yellow")
    term = "" if n.raft_term is None else f" t{n.raft_term}"
    if role == "leader":
        return Text(f"★ leader{term}", "bold green")
    lag = f" lag {n.raft_lag}" if n.raft_lag else ""
    return Text(f"{role}{term}{lag}", "yellow" if role == "candidate" or (n.raft_lag or 0) > 100 else "")


def _cell_width(value: str | Text) -> int:
    return value.cell_len if isinstance(value, Text) else cell_len(value)


def _same(a: str | Text, b: str | Text) -> bool:
    # rich's Text equality ignores the base style; a cell that only changes colour must still be redrawn.
    if isinstance(a, Text) and isinstance(b, Text):
        return a.plain == b.plain and str(a.style) == str(b.style)
    return a == b


# k9s style: shift+letter sorts by that column, again reverses. Worst first where it matters.
SORTS: dict[str, Callable[[NodeView], Any]] = {
    "name": lambda n: n.id,
    "health": lambda n: (-STATE_RANK[n.state], n.id),
    "incidents": lambda n: (-n.incidents_active, n.id),
    "p99": lambda n: (-(n.p99_ms if n.p99_ms is not None else -1.0), n.id),
}
STATE_RANK = {"down": 4, "silent": 3, "degraded": 2, "unknown": 1, "up": 0}


def sort_nodes(nodes: Sequence[NodeView], by: str, reverse: bool = False) -> list[NodeView]:
    return sorted(nodes, key=SORTS[by], reverse=reverse)


class NodeTable(DataTable[str | Text]):
    # DataTable's own enter binding is hidden; this one says in the footer what enter does here.
    BINDINGS = [
        Binding("enter", "select_cursor", "Node detail"),
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("g", "scroll_top", "Top", show=False),
        Binding("G", "scroll_bottom", "Bottom", show=False),
        Binding("N", "sort('name')", "Sort", key_display="N/H/I/P"),
        Binding("H", "sort('health')", "Sort by health", show=False),
        Binding("I", "sort('incidents')", "Sort by incidents", show=False),
        Binding("P", "sort('p99')", "Sort by p99", show=False),
    ]
    DEFAULT_CSS = """
    NodeTable { height: auto; max-height: 50%; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self._rows: dict[str, dict[str, str | Text]] = {}
        self._nomad = False
        self._raft = False
        self._columns: list[str] = []
        self.sort_by = "name"
        self.sort_reverse = False
        self._node_views: Sequence[NodeView] = ()
        self._filter = ""

    def on_mount(self) -> None:
        self._set_columns()

    def on_resize(self) -> None:
        if self._wanted_columns() != self._columns:
            self._set_columns()
            self.show(self._node_views, self._filter)

    def _wanted_columns(self) -> list[str]:
        keys = [k for k, _ in BASE_COLUMNS]
        if self._raft:
            keys[keys.index("incidents") : keys.index("incidents")] = [k for k, _ in RAFT_COLUMNS]
        keys += [k for k, _ in NOMAD_COLUMNS] if self._nomad else []
        width = self.scrollable_content_region.width or self.size.width
        return fitting_columns(keys, width) if width else keys

    def _set_columns(self) -> None:
        labels = dict(BASE_COLUMNS + NOMAD_COLUMNS + RAFT_COLUMNS)
        self._columns = self._wanted_columns()
        self.clear(columns=True)
        self._rows = {}
        for key in self._columns:
            self.add_column(labels[key], key=key)

    def action_sort(self, by: str) -> None:
        self.sort_reverse = not self.sort_reverse if by == self.sort_by else False
        self.sort_by = by
        arrow = "↓" if not self.sort_reverse else "↑"
        self.border_title = f"nodes (by {by} {arrow})"
        self.show(self._node_views, self._filter)

    @property
    def columns_shown(self) -> list[str]:
        return list(self._columns)

    @property
    def node_ids(self) -> list[str]:
        return list(self._rows)

    @property
    def selected_node(self) -> str | None:
        if not self._rows or self.cursor_row < 0:
            return None
        try:
            return str(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value)
        except Exception:  # empty table / cursor out of range after a filter
            return None

    def show(self, nodes: Sequence[NodeView], filter_text: str = "") -> None:
        self._node_views, self._filter = nodes, filter_text
        if not self._nomad and any(n.nomad is not None for n in nodes):
            self._nomad = True
            self._set_columns()
        if not self._raft and any(n.raft_role is not None for n in nodes):
            self._raft = True
            self._set_columns()
        wanted = sort_nodes([n for n in nodes if matches(n, filter_text)], self.sort_by, self.sort_reverse)
        wanted_ids = [n.id for n in wanted]
        columns = self._columns
        if wanted_ids != list(self._rows):
            selected = self.selected_node
            self.clear()
            self._rows = {}
            for n in wanted:
                cells = row_cells(n)
                self.add_row(*(cells.get(c, "-") for c in columns), key=n.id)
                self._rows[n.id] = cells
            if selected in self._rows:
                self.move_cursor(row=wanted_ids.index(selected))
            return
        for n in wanted:
            cells = row_cells(n)
            old = self._rows[n.id]
            for c in columns:
                value = cells.get(c, "-")
                if not _same(old.get(c, "-"), value):
                    # A cell that grows ("● up" -> "◐ degraded") widens its column, never cut. Only then: asked
                    # for every changed cell, DataTable measured the whole column again for each one that shrank
                    # and laid the screen out again, 65 ms a poll at 20 nodes, and keys waited behind it.
                    column = self.columns.get(c)  # type: ignore[call-overload]
                    grows = column is None or _cell_width(value) > column.content_width
                    self.update_cell(n.id, c, value, update_width=grows)
            self._rows[n.id] = cells
