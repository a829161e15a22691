"""The event log's entries and how they are derived (pure): node/link state changes between two views,
MAPE-K incidents and heal actions the agents report, drill steps."""

from __future__ import annotations

import datetime as dt
from typing import Literal

import msgspec

from dashboard import wire
from dashboard.models import MeshView

Level = Literal["info", "ok", "warn", "error"]
EventKind = Literal["node", "link", "incident", "action", "drill", "source"]


class Event(msgspec.Struct, kw_only=True, frozen=True):
    at: float  # unix seconds; the agent's own clock for incidents/actions, the dashboard's for the rest
    kind: EventKind
    text: str
    level: Level = "info"
    node: str | None = None
    # What the event detail (enter on an event) shows beside the text: the record behind it, as (name, value).
    fields: tuple[tuple[str, str], ...] = ()


def stamp(at: float | None) -> str:
    """A full local time with its date and zone (the log shows only the time of day)."""
    if at is None:
        return "-"
    d = dt.datetime.fromtimestamp(at).astimezone()
    return f"{d:%Y-%m-%d %H:%M:%S}.{d.microsecond // 1000:03d} {d:%Z}"


_NODE_LEVEL: dict[str, Level] = {
    "up": "ok",
    "degraded": "warn",
    "silent": "warn",
    "down": "error",
    "unknown": "info",
}
_LINK_LEVEL: dict[str, Level] = {
    "up": "ok",
    "temporary": "info",
    "silent": "warn",
    "down": "error",
    "unknown": "info",
}


def view_events(prev: MeshView | None, cur: MeshView) -> list[Event]:
    """State changes from one view to the next. The first view reports only what is not healthy."""
    events: list[Event] = []
    if prev is None or prev.source_ok != cur.source_ok:
        if not cur.source_ok:
            events.append(
                Event(
                    at=cur.taken_at, kind="source", level="error", text=f"source {cur.source}: {cur.source_detail}"
                )
            )
        elif prev is not None:
            events.append(Event(at=cur.taken_at, kind="source", level="ok", text=f"source {cur.source} back"))
    before = {n.id: n.state for n in prev.nodes} if prev else {}
    for n in cur.nodes:
        was = before.get(n.id)
        if was == n.state or (was is None and n.state == "up"):
            continue
        if was is None and n.state == "unknown":
            continue
        change = f"{was} → {n.state}" if was else n.state
        events.append(
            Event(
                at=cur.taken_at,
                kind="node",
                node=n.id,
                level=_NODE_LEVEL[n.state],
                text=f"{n.id} {change}: {n.detail}",
                fields=(
                    ("node", n.id),
                    ("state", change),
                    ("why", n.detail),
                    ("agent", n.agent_url or "-"),
                    ("address", n.address or "-"),
                ),
            )
        )
    links_before = {link.key: link.state for link in prev.links} if prev else {}
    for link in cur.links:
        was = links_before.get(link.key)
        if was == link.state or (was is None and link.state in ("up", "unknown")):
            continue
        if link.state == "unknown" or (was == "unknown" and link.state == "up"):
            continue  # says nothing about the link, only that we cannot see it: the node events say that
        change = f"{was} → {link.state}" if was else link.state
        detail = f": {link.detail}" if link.detail else ""
        events.append(
            Event(
                at=cur.taken_at,
                kind="link",
                level=_LINK_LEVEL[link.state],
                text=f"link {link.a}<->{link.b} {change}{detail}",
                fields=(("link", f"{link.a} <-> {link.b}"), ("state", change), ("why", link.detail or "-")),
            )
        )
    return events


def _incident_fields(observer: str, inc: wire.Incident) -> tuple[tuple[str, str], ...]:
    took = "-" if inc.resolved_at is None else f"{inc.resolved_at - inc.detected_at:.3f} s"
    return (
        ("observer", observer),
        ("incident", inc.id),
        ("kind", inc.kind),
        ("subject", inc.subject),
        ("detected", stamp(inc.detected_at)),
        ("resolved", stamp(inc.resolved_at) if inc.resolved_at is not None else "open"),
        ("took", took),
        ("seen", f"{inc.count} time{'s' if inc.count != 1 else ''}"),
        ("heal actions", ", ".join(inc.actions) or "-"),
        ("detail", inc.detail or "-"),
    )


def incident_event(observer: str, inc: wire.Incident, what: str) -> Event:
    fields = _incident_fields(observer, inc)
    if what == "resolved":
        took = (inc.resolved_at or inc.detected_at) - inc.detected_at
        return Event(
            at=inc.resolved_at or inc.detected_at,
            kind="incident",
            node=observer,
            level="ok",
            text=f"{observer}: resolved {inc.kind} {inc.subject} after {took:.1f} s",
            fields=fields,
        )
    detail = f" ({inc.detail})" if inc.detail else ""
    return Event(
        at=inc.detected_at,
        kind="incident",
        node=observer,
        level="warn",
        text=f"{observer}: {inc.kind} {inc.subject}{detail}",
        fields=fields,
    )


def _drill_fields(node_id: str, d: wire.Drill) -> tuple[tuple[str, str], ...]:
    return (
        ("drill", d.id),
        ("kind", d.kind),
        ("target", d.node_id),
        ("state", d.state),
        ("started", stamp(d.started_at)),
        ("ends", stamp(d.ends_at)),
        ("reverted", stamp(d.reverted_at)),
        ("reported by", node_id),
        ("detail", d.detail or "-"),
    )


def drill_events(node_id: str, before: wire.DrillList | None, now: wire.DrillList, own: set[str]) -> list[Event]:
    """What changed in an agent's drills since the last look: started, and ended (reverted/aborted/failed). The
    first look reports only the running ones (the past is history, not news); drills this x0dash runs itself
    (`own`) are told by its own steps."""
    known_active = {d.id for d in before.active} if before is not None else set()
    known_past = {d.id for d in before.past} if before is not None else None
    events: list[Event] = []
    for d in now.active:
        if d.id not in known_active and d.id not in own:
            events.append(
                Event(
                    at=d.started_at,
                    kind="drill",
                    node=node_id,
                    level="warn",
                    text=f"drill {d.kind} on {d.node_id} started (id {d.id}, {d.duration_s:g} s): {d.detail}",
                    fields=_drill_fields(node_id, d),
                )
            )
    if known_past is not None:
        for d in now.past:
            if d.id in known_past or d.id in own:
                continue
            took = (d.reverted_at or d.ends_at) - d.started_at
            events.append(
                Event(
                    at=d.reverted_at or d.ends_at,
                    kind="drill",
                    node=node_id,
                    level="error" if d.state == "failed" else "ok",
                    text=f"drill {d.kind} on {d.node_id} {d.state} after {took:.1f} s (id {d.id})",
                    fields=_drill_fields(node_id, d),
                )
            )
    return events


def step_event(at: float, what: str, level: Level, node: str | None) -> Event:
    """A step of a drill this x0dash runs, for the event log (the README promises them there)."""
    return Event(at=at, kind="drill", node=node, level=level, text=f"drill: {what}")


def action_event(observer: str, act: wire.Action) -> Event:
    level: Level = {"ok": "ok", "failed": "error"}.get(act.outcome, "info")
    why = f": {act.reason}" if act.reason else ""
    return Event(
        at=act.at,
        kind="action",
        node=observer,
        level=level,
        text=f"{observer}: {act.action} {act.target} {act.outcome}{why}",
        fields=(
            ("observer", observer),
            ("action", act.id),
            ("what", f"{act.action} {act.target}"),
            ("outcome", act.outcome),
            ("reason", act.reason or "-"),
            ("uri", act.uri or "-"),
            ("for incident", act.incident_id or "-"),
            ("at", stamp(act.at)),
        ),
    )
