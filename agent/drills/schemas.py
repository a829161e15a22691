"""Payloads of the drills API (docs/contracts.md §3): `POST/GET /drills`, `DELETE /drills/{id}`."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

DrillKind = Literal["partition", "blackhole", "kill-daemon"]
DRILL_KINDS: tuple[DrillKind, ...] = ("partition", "blackhole", "kill-daemon")
DrillState = Literal["active", "reverted", "aborted", "failed"]
MIN_DURATION_S = 1
MAX_DURATION_S = 600


class DrillRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    kind: DrillKind
    duration_s: Annotated[float, msgspec.Meta(ge=MIN_DURATION_S, le=MAX_DURATION_S)]


class Drill(msgspec.Struct, kw_only=True):
    id: str
    kind: DrillKind
    node_id: str
    duration_s: float
    started_at: float
    ends_at: float
    reverted_at: float | None
    state: DrillState
    detail: str


class DrillList(msgspec.Struct, kw_only=True):
    active: list[Drill]
    past: list[Drill]
