"""Drill scoring (pure): from the fault window and what each observer's agent recorded, time to detect and
to repair per observer, mesh-wide first detection (the earliest observer) and full awareness (the last one),
steady state before/after, and pass/fail against the SLOs.

Observers that could not see the target at all (no path: they were cut off themselves, or could not reach the
target before the fault) are named in `no_path`, not failed. Heal actions a guard held back (quarantine,
cooldown, rate limit) are listed in `guards`, and named beside a repair that missed its SLO.

Times come from the agents' own records (incident `detected_at`/`resolved_at`, the target's drill
`started_at`/`reverted_at`), never from when the dashboard happened to poll. Only a node-loss drill made by the
source itself (stopping a local node or a Nomad allocation) starts and ends on the dashboard's clock, and the
report says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import msgspec

from dashboard.drills.workload import WorkloadResult
from dashboard.models import MeshView

# 2: `environment` (agent and Yggdrasil versions, topology, source); reports of version 1 still decode.
# 3: mesh-wide `first_detect_s`/`full_awareness_s`, `no_path`, `guards`, SLO `first_detect_s` (issue 10);
#    reports of versions 1 and 2 still decode.
REPORT_VERSION = 3
ClockSource = Literal["agent", "dashboard"]


class SLO(msgspec.Struct, kw_only=True, frozen=True):
    detect_s: float = 2.0  # fault injected -> first incident about the target, per observer
    repair_s: float = 2.0  # fault ended -> that observer's incidents about the target all resolved
    recover_timeout_s: float = 60.0  # fault ended -> mesh back to its steady state, else the drill fails
    # fault injected -> the first observer's incident (mesh-wide detection); full awareness (the last observer's
    # incident) is held to detect_s, which every observer must meet anyway
    # (None: half of detect_s, so 1 s by default and loosened with it)
    first_detect_s: float | None = None

    @property
    def first_detect(self) -> float:
        return self.first_detect_s if self.first_detect_s is not None else self.detect_s / 2


class SteadyState(msgspec.Struct, kw_only=True, frozen=True):
    taken_at: float
    nodes_up: int
    nodes_total: int
    links_up: int
    links_planned: int
    links_not_up: list[str]  # "a<->b state"
    # node -> [members reachable, members total] (MAPE-K's own count, including itself)
    reachability: dict[str, list[int]]
    nodes_not_up: list[str]

    @property
    def steady(self) -> bool:
        return (
            self.nodes_up == self.nodes_total
            and self.links_up == self.links_planned
            and all(r == t for r, t in self.reachability.values())
        )

    def summary(self) -> str:
        reach = sum(1 for r, t in self.reachability.values() if r == t)
        return (
            f"nodes {self.nodes_up}/{self.nodes_total} up, links {self.links_up}/{self.links_planned} up, "
            f"{reach}/{len(self.reachability)} nodes reach every member"
        )


def steady_state(view: MeshView) -> SteadyState:
    reach = {
        n.id: [n.members_reachable, n.members_known]
        for n in view.nodes
        if n.members_reachable is not None and n.members_known is not None
    }
    return SteadyState(
        taken_at=view.taken_at,
        nodes_up=view.nodes_healthy,
        nodes_total=view.nodes_total,
        links_up=view.links_up,
        links_planned=view.links_planned,
        links_not_up=[
            f"{link.a}<->{link.b} {link.state}" for link in view.links if link.planned and link.state != "up"
        ],
        reachability=reach,  # type: ignore[arg-type]
        nodes_not_up=[f"{n.id} {n.state}" for n in view.nodes if n.state != "up"],
    )


def wary_detectors(view: MeshView) -> list[str]:
    """Nodes whose failure detector still runs with stretched timeouts (Lifeguard local health above 0), as
    "node-c (local health 3)": right after a fault such a node may not notice a short one at all."""
    return [f"{n.id} (local health {n.local_health})" for n in view.nodes if n.state == "up" and n.local_health]


def returned_to(before: SteadyState, after: SteadyState) -> bool:
    """The mesh is back when it is at least as whole as before the drill (a mesh that was already missing
    a link before is not blamed for it)."""
    if after.nodes_up < before.nodes_up or after.links_up < before.links_up:
        return False
    for node, (reach, _total) in before.reachability.items():
        now = after.reachability.get(node)
        if now is None or now[0] < reach:
            return False
    return True


class SteadyHold:
    """The mesh counts as recovered once every poll for `settle_s` saw it whole: one poll that did not resets
    it (an incident reopened a second after the repair is part of the repair)."""

    def __init__(self, settle_s: float) -> None:
        self.settle_s = settle_s
        self.since: float | None = None  # first poll of the current unbroken run of whole polls

    def poll(self, now: float, whole: bool) -> bool:
        """One poll; True once the mesh has been whole for `settle_s` (`since` is when it became so)."""
        if not whole:
            self.since = None
            return False
        if self.since is None:
            self.since = now
        return now - self.since >= self.settle_s


class FaultWindow(msgspec.Struct, kw_only=True, frozen=True):
    kind: str  # blackhole|partition|node-loss
    method: str  # how it was made: "agent drill blackhole", "agent drill kill-daemon", "source: stop node"
    target: str
    duration_s: float
    started_at: float
    ended_at: float | None  # None: never reverted (a failure in itself)
    clock: ClockSource
    drill_id: str | None = None
    aborted: bool = False
    detail: str = ""
    # Faults the source undoes by itself (Nomad replaces a stopped allocation, restarts one in place): the drill
    # is over only once the node is back on a running allocation with a healthy agent. Dashboard clock.
    source_brings_back: bool = False
    back_at: float | None = None
    back_what: str = ""


class IncidentSeen(msgspec.Struct, kw_only=True, frozen=True):
    """One incident as an observer recorded it; `detected_at` is the earliest detection we saw for this id
    (an agent reopens a flapping incident with a newer detected_at), `resolved_at` the latest state."""

    observer: str
    id: str
    kind: str
    subject: str
    detected_at: float
    resolved_at: float | None
    detail: str = ""

    @classmethod
    def fold(
        cls,
        old: IncidentSeen | None,
        observer: str,
        id_: str,
        kind: str,
        subject: str,
        detected_at: float,
        resolved_at: float | None,
        detail: str,
        since: float,
    ) -> IncidentSeen:
        """The agent's latest record of an incident folded into what the drill saw of it before (`old`), keeping
        the earliest detection since the drill's window began (`since`). An incident that resolved just before
        the fault (within the skew allowance) and that the agent reopens under its old id is a new occurrence:
        keeping its old detected_at made it look older than the fault, and the drill ignored it and its repair
        (4 of 12 runs of a blackhole of node-b after one of node-c)."""
        first = detected_at
        if old is not None and old.detected_at >= since:
            first = min(first, old.detected_at)
        return cls(
            observer=observer,
            id=id_,
            kind=kind,
            subject=subject,
            detected_at=first,
            resolved_at=resolved_at,
            detail=detail,
        )


class ActionSeen(msgspec.Struct, kw_only=True, frozen=True):
    observer: str
    id: str
    at: float
    action: str
    target: str
    outcome: str
    reason: str = ""


class ObserverScore(msgspec.Struct, kw_only=True, frozen=True):
    observer: str
    detected_at: float | None
    detect_s: float | None
    detected_by: str | None  # incident kind of the first detection
    repaired_at: float | None
    repair_s: float | None  # negative: healed before the fault ended
    incidents: int
    actions: int
    detect_ok: bool
    repair_ok: bool
    note: str = ""


class NoPath(msgspec.Struct, kw_only=True, frozen=True):
    observer: str
    reason: str


class GuardSeen(msgspec.Struct, kw_only=True, frozen=True):
    """A heal action a guard held back during the drill (outcome `skipped`)."""

    observer: str
    at: float
    action: str
    target: str
    guard: str  # quarantine | cooldown | rate limit
    reason: str


class TimelineEntry(msgspec.Struct, kw_only=True, frozen=True):
    at: float
    t_s: float  # seconds since the fault was injected
    node: str | None
    what: str


class Environment(msgspec.Struct, kw_only=True, frozen=True):
    """What the drill ran on, as the dashboard saw it when the drill began."""

    source: str
    nodes: int
    planned_links: int
    agent_versions: list[str]  # distinct x0-agent versions
    yggdrasil_apis: list[str]  # distinct Yggdrasil admin API versions (0.4, 0.5)
    dashboard_version: str = ""


def environment(view: MeshView, dashboard_version: str = "") -> Environment:
    return Environment(
        source=view.source,
        nodes=view.nodes_total,
        planned_links=view.links_planned,
        agent_versions=sorted({n.version for n in view.nodes if n.version}),
        yggdrasil_apis=sorted({n.api_version for n in view.nodes if n.api_version}),
        dashboard_version=dashboard_version,
    )


class DrillReport(msgspec.Struct, kw_only=True, frozen=True):
    version: int
    kind: str
    target: str
    source: str
    slo: SLO
    fault: FaultWindow
    observers: list[ObserverScore]
    before: SteadyState
    after: SteadyState | None
    recovered: bool  # mesh back to its steady state before the recovery timeout
    recovered_at: float | None  # agents' clock: last observer incident about the target resolved
    recovery_s: float | None  # fault ended -> recovered_at
    steady_confirmed_at: float | None  # dashboard clock: first poll that saw the steady state again
    timeline: list[TimelineEntry]
    passed: bool
    failures: list[str]
    created_at: float
    actions: list[ActionSeen] = []
    environment: Environment | None = None  # version 2
    # The store workload of a drill on the Raft leader (dashboard.drills.workload): new leader per observer,
    # write-unavailability window, consistency verdict. None for other drills.
    consistency: WorkloadResult | None = None
    # Mesh-wide: fault injected -> the first observer's incident, and -> the last one's (None: nobody / somebody
    # with a path never detected it). Observers without a path to the target count in neither.
    first_detect_s: float | None = None
    full_awareness_s: float | None = None
    no_path: list[NoPath] = []
    guards: list[GuardSeen] = []


GUARD_PREFIXES = (("cooldown", "cooldown"), ("rate limit", "rate limit"))


def guard_of(action: ActionSeen) -> str | None:
    """The guard that held back a skipped action, from its recorded reason (agent.mapek.plan words them)."""
    if action.outcome != "skipped":
        return None
    for prefix, guard in GUARD_PREFIXES:
        if action.reason.startswith(prefix):
            return guard
    return "quarantine" if "quarantined" in action.reason else None


def no_path_reason(
    observer: str, incidents: Sequence[IncidentSeen], before: SteadyState, target: str, fault: FaultWindow
) -> str | None:
    """Why `observer` could not see the target, or None when it could: it did not reach every member before the
    fault, or it found itself cut off from the mesh (its own partition incident) while the fault was on."""
    reach = before.reachability.get(observer)
    if reach is not None and reach[0] < reach[1]:
        return f"reached only {reach[0]}/{reach[1]} members before the fault"
    end = fault.ended_at if fault.ended_at is not None else float("inf")
    for i in incidents:
        if i.observer == observer and i.kind == "partition" and fault.started_at <= i.detected_at <= end:
            return "cut off from the mesh itself during the fault (partition incident)"
    return None


def relevant(inc: IncidentSeen, aliases: Iterable[str], fault: FaultWindow, skew_s: float) -> bool:
    """An incident counts for this drill when it is about the target (by id, key or address) or is a partition
    of the mesh, and was detected after the fault began (allowing `skew_s` of clock skew between hosts)."""
    names = set(aliases)
    if inc.subject not in names and inc.kind != "partition":
        return False
    return inc.detected_at >= fault.started_at - skew_s


def score_observer(
    observer: str, incidents: Sequence[IncidentSeen], actions: Sequence[ActionSeen], fault: FaultWindow, slo: SLO
) -> ObserverScore:
    if not incidents:
        return ObserverScore(
            observer=observer,
            detected_at=None,
            detect_s=None,
            detected_by=None,
            repaired_at=None,
            repair_s=None,
            incidents=0,
            actions=len(actions),
            detect_ok=False,
            repair_ok=False,
            note="no incident about the target",
        )
    first = min(incidents, key=lambda i: i.detected_at)
    detect_s = first.detected_at - fault.started_at
    unresolved = [i for i in incidents if i.resolved_at is None]
    repaired_at = None if unresolved else max(i.resolved_at for i in incidents if i.resolved_at is not None)
    repair_s = None
    if repaired_at is not None and fault.ended_at is not None:
        repair_s = repaired_at - fault.ended_at
    notes = []
    if unresolved:
        notes.append("still open: " + ", ".join(f"{i.kind} {i.subject}" for i in unresolved))
    if fault.ended_at is None:
        notes.append("the fault was never reverted")
    if repair_s is not None and repair_s < 0:
        notes.append("healed before the fault ended")
    return ObserverScore(
        observer=observer,
        detected_at=first.detected_at,
        detect_s=detect_s,
        detected_by=first.kind,
        repaired_at=repaired_at,
        repair_s=repair_s,
        incidents=len(incidents),
        actions=len(actions),
        detect_ok=detect_s <= slo.detect_s,
        repair_ok=repair_s is not None and repair_s <= slo.repair_s,
        note="; ".join(notes),
    )


def build_timeline(
    fault: FaultWindow,
    observers: Sequence[ObserverScore],
    incidents: Sequence[IncidentSeen],
    actions: Sequence[ActionSeen],
    recovered_at: float | None,
) -> list[TimelineEntry]:
    t0 = fault.started_at
    entries = [
        TimelineEntry(at=t0, t_s=0.0, node=fault.target, what=f"fault injected: {fault.kind} ({fault.method})")
    ]
    for o in observers:
        if o.detected_at is not None:
            entries.append(
                TimelineEntry(
                    at=o.detected_at,
                    t_s=o.detected_at - t0,
                    node=o.observer,
                    what=f"first detection by {o.observer}: {o.detected_by}",
                )
            )
    for a in actions:
        entries.append(
            TimelineEntry(
                at=a.at,
                t_s=a.at - t0,
                node=a.observer,
                what=f"heal action by {a.observer}: {a.action} {a.target} {a.outcome}",
            )
        )
    for i in incidents:
        if i.resolved_at is not None:
            entries.append(
                TimelineEntry(
                    at=i.resolved_at,
                    t_s=i.resolved_at - t0,
                    node=i.observer,
                    what=f"{i.observer} resolved {i.kind} {i.subject}",
                )
            )
    # A fault the source undid by itself ends when the node is back: one entry says both.
    over_when_back = fault.back_at is not None and fault.ended_at == fault.back_at and not fault.aborted
    if fault.ended_at is not None and not over_when_back:
        what = "fault aborted and reverted" if fault.aborted else "fault reverted"
        entries.append(TimelineEntry(at=fault.ended_at, t_s=fault.ended_at - t0, node=fault.target, what=what))
    if fault.back_at is not None:
        entries.append(
            TimelineEntry(
                at=fault.back_at,
                t_s=fault.back_at - t0,
                node=fault.target,
                what=("fault over, " if over_when_back else "") + f"back: {fault.back_what}",
            )
        )
    if recovered_at is not None:
        entries.append(
            TimelineEntry(
                at=recovered_at,
                t_s=recovered_at - t0,
                node=None,
                what="full recovery: every observer's incidents about the target resolved",
            )
        )
    # Full recovery is the last word at its instant (it is the max of the resolutions it summarizes).
    entries.sort(key=lambda e: (e.at, e.what.startswith("full recovery"), e.what))
    return entries


def score(
    *,
    source: str,
    fault: FaultWindow,
    aliases: Iterable[str],
    observers: Sequence[str],
    incidents: Sequence[IncidentSeen],
    actions: Sequence[ActionSeen],
    before: SteadyState,
    after: SteadyState | None,
    steady_confirmed_at: float | None,
    slo: SLO,
    created_at: float,
    skew_s: float = 0.5,
) -> DrillReport:
    """The whole report. `observers` are the nodes whose detection counts (every node but the target that was
    up before the fault); `incidents`/`actions` are everything they recorded during the drill."""
    names = set(aliases) | {fault.target}
    mine = [i for i in incidents if i.observer in observers and relevant(i, names, fault, skew_s)]
    end = fault.ended_at
    window_actions = [a for a in actions if a.at >= fault.started_at - skew_s]
    scores = [
        score_observer(
            o, [i for i in mine if i.observer == o], [a for a in window_actions if a.observer == o], fault, slo
        )
        for o in observers
    ]
    no_path: list[NoPath] = []
    for s in scores:
        if s.detect_s is None:
            why = no_path_reason(s.observer, incidents, before, fault.target, fault)
            if why is not None:
                no_path.append(NoPath(observer=s.observer, reason=why))
    blind = {n.observer for n in no_path}
    seeing = [s for s in scores if s.observer not in blind]
    detects = [s.detect_s for s in seeing]
    found = [d for d in detects if d is not None]
    first_detect = min(found) if found else None
    awareness = max(found) if found and len(found) == len(detects) else None
    guards = [
        GuardSeen(observer=a.observer, at=a.at, action=a.action, target=a.target, guard=g, reason=a.reason)
        for a in window_actions
        if (g := guard_of(a)) is not None
    ]
    repaired = [s.repaired_at for s in scores]
    recovered_at = max(r for r in repaired if r is not None) if repaired and None not in repaired else None
    if recovered_at is not None and end is not None:
        recovered_at = max(recovered_at, end)  # the mesh is not whole while the fault is still on
    back = after is not None and returned_to(before, after)
    never_back = fault.source_brings_back and fault.back_at is None
    if never_back:
        back = False
    failures: list[str] = []
    if not observers:
        failures.append("no observer: every other node was down before the drill")
    if first_detect is not None and first_detect > slo.first_detect:
        failures.append(f"first detection after {first_detect:.2f} s (SLO {slo.first_detect:g} s)")
    if awareness is not None and awareness > slo.detect_s:
        failures.append(f"full awareness after {awareness:.2f} s (SLO {slo.detect_s:g} s)")
    for s in scores:
        if s.observer in blind:
            continue
        if s.detect_s is None:
            failures.append(f"{s.observer} never detected the fault")
        elif not s.detect_ok:
            failures.append(f"{s.observer} detected after {s.detect_s:.2f} s (SLO {slo.detect_s:g} s)")
        if s.detect_s is not None and s.repair_s is None:
            failures.append(f"{s.observer}: incidents about {fault.target} not resolved ({s.note})")
        elif s.repair_s is not None and not s.repair_ok:
            held = sorted({f"{g.guard} on {g.target}" for g in guards if s.observer in (g.observer, g.target)})
            failures.append(
                f"{s.observer} repaired {s.repair_s:.2f} s after the fault ended (SLO {slo.repair_s:g} s)"
                + (f"; held back by {', '.join(held)}" if held else "")
            )
    if end is None:
        failures.append("the fault was never reverted")
    if never_back:
        failures.append(f"{fault.target} never came back on a running allocation with a healthy agent")
    if not back:
        now = after.summary() if after is not None else "never measured"
        failures.append(
            f"mesh did not return to its steady state within {slo.recover_timeout_s:g} s "
            f"(before: {before.summary()}; after: {now})"
        )
    if fault.aborted:
        failures.append("aborted by the operator")
    return DrillReport(
        version=REPORT_VERSION,
        kind=fault.kind,
        target=fault.target,
        source=source,
        slo=slo,
        fault=fault,
        observers=scores,
        before=before,
        after=after,
        recovered=back,
        recovered_at=recovered_at,
        recovery_s=None if recovered_at is None or end is None else recovered_at - end,
        steady_confirmed_at=steady_confirmed_at,
        timeline=build_timeline(fault, scores, mine, window_actions, recovered_at),
        passed=not failures,
        failures=failures,
        created_at=created_at,
        actions=window_actions,
        first_detect_s=first_detect,
        full_awareness_s=awareness,
        no_path=no_path,
        guards=guards,
    )
