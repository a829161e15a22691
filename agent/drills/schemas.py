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
    # Who asks (shown to whoever is refused with 409), and the mesh-wide lease it already holds, if any
    # (contracts §3, §7: x0dash takes the lease first for drills it drives itself).
    holder: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    lease_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None


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
