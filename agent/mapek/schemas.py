"""Payloads of the MAPE-K API (docs/contracts.md §3): `/mapek`, `/mapek/incidents`, `/mapek/actions`.

Timestamps are unix seconds (wall clock). An incident that comes back soon after it resolved is reopened
(`count` + 1, `detected_at` = the latest detection, `resolved_at` back to null) instead of being listed again, so a
flapping link is one incident with a count, not hundreds.
"""

from __future__ import annotations

from typing import Literal

import msgspec

IncidentKind = Literal[
    "peer_lost",
    "peer_silent",
    "member_unreachable",
    "partition",
    "latency_degraded",
    "daemon_down",
    "version_mismatch",
]
INCIDENT_KINDS: tuple[IncidentKind, ...] = (
    "peer_lost",
    "peer_silent",
    "member_unreachable",
    "partition",
    "latency_degraded",
    "daemon_down",
    "version_mismatch",
)
ActionKind = Literal["add_peer", "remove_peer", "redial", "restore", "quarantine"]
Outcome = Literal["ok", "failed", "skipped"]


class Incident(msgspec.Struct, kw_only=True):
    id: str
    kind: IncidentKind
    subject: str  # node id, else a key such as "mesh" (partition) or "yggdrasil" (daemon_down)
    detected_at: float
    resolved_at: float | None
    count: int  # occurrences merged into this incident
    detail: str
    actions: list[str]  # ids of actions taken for it


class Action(msgspec.Struct, kw_only=True):
    id: str
    at: float
    action: ActionKind
    target: str  # node id
    uri: str | None
    outcome: Outcome
    reason: str
    incident_id: str | None


class PhaseMs(msgspec.Struct, kw_only=True):
    monitor: float
    analyze: float
    plan: float
    execute: float


MemberState = Literal["joining", "alive", "suspect", "dead"]


class MemberStatus(msgspec.Struct, kw_only=True):
    """One member in this node's membership view (SWIM)."""

    node_id: str
    state: MemberState  # joining: never heard from yet
    incarnation: int
    since: float  # this view's state changed then
    by: str  # who suspects it / declared it dead ("" when alive)
    rtt_ms: float | None  # smoothed round trip of this node's own probes
    last_ack: float | None  # this node's own probe last answered
    drill_until: float | None  # it announced a drill (intentional fault) until then


class Membership(msgspec.Struct, kw_only=True):
    """This node's membership layer: counts by state, its own incarnation, and every member not alive."""

    enabled: bool
    detail: str  # what runs (UDP port, probe interval) or why it does not
    incarnation: int
    local_health: int  # Lifeguard: 0 healthy; each point stretches this node's timeouts by one more interval
    alive: int
    suspect: int
    dead: int
    joining: int
    not_alive: list[MemberStatus]  # suspect, dead and joining members (the full list: /mapek/members)
    drilling: dict[str, float]  # members with an announced drill -> until (unix s)


class Quarantine(msgspec.Struct, kw_only=True):
    node_id: str
    until: float
    level: int  # 1 = first quarantine; the length doubles per level
    reason: str


class MapekStatus(msgspec.Struct, kw_only=True):
    node_id: str
    enabled: bool
    state: Literal["running", "stopped"]
    tick: int
    last_tick_at: float | None
    interval_s: float
    phase_ms: PhaseMs
    members_total: int
    members_reachable: int
    active_incidents: list[Incident]
    membership: Membership | None = None
    quarantined: list[Quarantine] = []


class MemberList(msgspec.Struct, kw_only=True):
    node_id: str
    incarnation: int
    members: list[MemberStatus]


class IncidentList(msgspec.Struct, kw_only=True):
    incidents: list[Incident]


class ActionList(msgspec.Struct, kw_only=True):
    actions: list[Action]
