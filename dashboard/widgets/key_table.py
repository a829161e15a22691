"""A table with k9s keys (j/k/g/G) whose columns drop by importance when the terminal is narrow, redrawn only
when its rows change (a poll a second must not throw the operator's cursor back to the top)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable

from dashboard.widgets.node_table import fitting_columns

Cell = str | Text


class Column(NamedTuple):
    key: str
    label: str
    width: int  # cells it needs (content plus padding), to decide what fits before drawing


class KeyTable(DataTable[Cell]):
    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("g", "scroll_top", "Top", show=False),
        Binding("G", "scroll_bottom", "Bottom", show=False),
    ]

    def __init__(
        self, columns: Sequence[Column], drop_order: Sequence[str] = (), *, id: str | None = None
    ) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.all_columns = list(columns)
        self.drop_order = tuple(drop_order)
        self._shown_columns: list[str] = []
        self._rows: list[tuple[str | None, dict[str, Cell]]] = []
        self._drawn: list[tuple[str | None, tuple[str, ...]]] | None = None

    @property
    def columns_shown(self) -> list[str]:
        return list(self._shown_columns)

    def on_mount(self) -> None:
        self._fit()

    def on_resize(self) -> None:
        if self._fit():
            self._draw()

    def _fit(self) -> bool:
        width = self.scrollable_content_region.width or self.size.width
        keys = [c.key for c in self.all_columns]
        wanted = (
            fitting_columns(keys, width, self.drop_order, {c.key: c.width for c in self.all_columns})
            if width
            else keys
        )
        if wanted == self._shown_columns:
            return False
        self._shown_columns = wanted
        labels = {c.key: c.label for c in self.all_columns}
        self.clear(columns=True)
        for key in wanted:
            self.add_column(labels[key], key=key)
        self._drawn = None
        return True

    def show(self, rows: Sequence[tuple[str | None, dict[str, Cell]]]) -> None:
        """Rows as (key or None, cells by column key); missing cells show as "-"."""
        self._rows = list(rows)
        self._draw()

    def _draw(self) -> None:
        cols = self._shown_columns
        drawn = [
            (key, tuple(c.plain if isinstance(c, Text) else c for c in (cells.get(k, "-") for k in cols)))
            for key, cells in self._rows
        ]
        if drawn == self._drawn:
            return
        self._drawn = drawn
        cursor = self.cursor_row
        self.clear()
        for key, cells in self._rows:
            self.add_row(*(cells.get(k, "-") for k in cols), key=key)
        if self._rows:
            self.move_cursor(row=min(max(cursor, 0), len(self._rows) - 1))
