"""How x0dash decodes what agents send (docs/contracts.md §3).

The read API payloads are the agent's own structs (`agent.api.schemas`), so a drift between producer and
consumer fails loudly. The MAPE-K and drill payloads are decoded here with the field names of §3; unknown extra
fields are ignored so a newer agent still talks to an older dashboard.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from agent.api.schemas import ErrorBody, Health, MeshPeers, MeshRoutes, MeshStatus

__all__ = [
    "Action",
    "ActionList",
    "Drill",
    "DrillList",
    "ErrorBody",
    "Health",
    "Incident",
    "IncidentList",
    "MapekState",
    "MeshPeers",
    "MeshRoutes",
    "MeshStatus",
]

IncidentKind = Literal[
    "peer_lost", "peer_silent", "member_unreachable", "partition", "latency_degraded", "daemon_down",
    "version_mismatch",
]
AgentDrillKind = Literal["partition", "blackhole", "kill-daemon"]


class Incident(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    kind: str  # IncidentKind; kept open so a new kind from a newer agent is shown, not rejected
    subject: str
    detected_at: float
    resolved_at: float | None = None
    count: int = 1
    detail: str = ""
    actions: list[str] = []


class Action(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    at: float
    action: str  # add_peer|remove_peer|redial|restore|quarantine
    target: str
    outcome: str  # ok|failed|skipped
    uri: str | None = None
    reason: str = ""
    incident_id: str | None = None


class MapekState(msgspec.Struct, kw_only=True, frozen=True):
    node_id: str
    enabled: bool
    state: str  # running|stopped
    tick: int
    last_tick_at: float | None
    interval_s: float
    members_total: int
    members_reachable: int
    active_incidents: list[Incident]
    phase_ms: dict[str, float] = {}


class IncidentList(msgspec.Struct, kw_only=True, frozen=True):
    incidents: list[Incident]


class ActionList(msgspec.Struct, kw_only=True, frozen=True):
    actions: list[Action]


class Drill(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    kind: str
    node_id: str
    duration_s: float
    started_at: float
    ends_at: float
    reverted_at: float | None
    state: str  # active|reverted|aborted|failed
    detail: str = ""


class DrillList(msgspec.Struct, kw_only=True, frozen=True):
    active: list[Drill]
    past: list[Drill]
