"""Form fields that leave the screen's keys alone: a number field takes only what a number can hold, so `s`, `q`,
`?` and `d` still reach the screen and the footer keeps offering them (k9s style: keys work from any field)."""

from __future__ import annotations

import re

from textual import events
from textual.widgets import Input

_ACCEPTS = {"integer": re.compile(r"[-+\d_]"), "number": re.compile(r"[-+\d_.eE]")}


class NumberField(Input):
    def __init__(self, value: str, *, integer: bool = True, id: str | None = None, classes: str | None = None):
        super().__init__(value, type="integer" if integer else "number", id=id, classes=classes)

    def check_consume_key(self, key: str, character: str | None) -> bool:
        pattern = _ACCEPTS.get(self.type)
        if character is None or pattern is None:
            return super().check_consume_key(key, character)
        return pattern.fullmatch(character) is not None

    async def _on_key(self, event: events.Key) -> None:
        if event.is_printable and not self.check_consume_key(event.key, event.character):
            # Not ours: Input's own handler (next in the MRO) would swallow it; let it reach the screen's bindings.
            event.prevent_default()
