"""MAPE-K Knowledge: what the loop knows between ticks, and the records it keeps.

- the planned topology (the members file, `agent.members.Members`) and the thresholds;
- per member: the latest probes over the overlay, the underlay and the peering port, the state of the daemon link
  (up since / down since / last traffic), link drops (flap history) and quarantine;
- a bounded history of incidents (opened, merged, resolved) and of actions with their outcomes;
- the temporary links MAPE-K added as stand-ins for lost planned peers.

No I/O here: the monitor hands in `Observation`s, execute hands in outcomes. Analyze and plan only read it.
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from agent.mapek.schemas import Action, ActionKind, Incident, IncidentKind, Outcome
from agent.members import EMPTY, Members

ProbePath = Literal["overlay", "underlay", "dial"]
MemberState_ = Literal["joining", "alive", "suspect", "dead"]


class Thresholds(msgspec.Struct, frozen=True, kw_only=True):
    """Every tunable of the loop. Defaults are chosen against the daemon's own timings
    (shared/reference/yggdrasil.md §3): it drops a silent link after 4-6 s, so the agent must see it first."""

    # A lost/silent planned peer must stay so this long before we dial a stand-in or force a redial: one
    # missed probe on a loaded host must not rewire the mesh.
    suspicion_s: float = 1.0
    # TCP connects to peering ports (dial probes) time out fast: they run every 0.25 s while a link is down.
    probe_timeout_s: float = 0.5
    # Planned links that never came up are not "lost" until the agent has run this long.
    startup_grace_s: float = 10.0
    latency_degraded_s: float = 0.25
    latency_probes: int = 3  # consecutive slow overlay probes before latency_degraded
    # Global rate limit over executed (not skipped) actions, and a per-target cooldown.
    rate_limit_actions: int = 6
    rate_limit_window_s: float = 10.0
    cooldown_s: float = 2.0
    # A link that dropped this many times within the window is quarantined (no forced redials, not used as a
    # stand-in) for base * 2**level seconds, capped; the level resets once the link has been quiet a window.
    flap_threshold: int = 3
    flap_window_s: float = 60.0
    # Only a drop after a short up period counts as a flap: a link that held this long and then dropped is an
    # outage (healed at once), not flapping (drills a few minutes apart must not quarantine anyone).
    flap_min_up_s: float = 10.0
    quarantine_base_s: float = 15.0
    quarantine_max_s: float = 240.0
    # An incident that comes back within this many seconds of resolving is reopened, not duplicated.
    merge_window_s: float = 60.0
    # The same skipped action (same target, same reason) is recorded at most once per this many seconds.
    skip_log_s: float = 10.0
    # 0.4 redials a removed outbound link once after 1 s and twice more on dial errors (reference §3.1, and
    # observed: removePeer alone never drops a runtime link for good). Dropping a temporary link therefore
    # refuses our own dials to that peer for this long.
    hold_s: float = 4.5
    # Link drops of a member during its announced drill (or ours), and this long after, are intentional.
    drill_grace_s: float = 10.0
    # Slow-probe evidence older than this no longer keeps latency_degraded open.
    latency_fresh_s: float = 5.0
    max_incidents: int = 500
    max_actions: int = 1000


class Probe(msgspec.Struct, frozen=True, kw_only=True):
    """One probe of another member: its agent's /health over the overlay or the underlay, or a TCP connect to
    its peering port (`dial`: can our daemon dial it right now?)."""

    member: str
    path: ProbePath
    ok: bool
    at: float
    rtt_s: float | None = None
    error: str | None = None
    daemon_up: bool | None = None  # the member's own /health says its daemon answers
    api_version: str | None = None  # the member's daemon API, from its /health


class LinkSample(msgspec.Struct, frozen=True, kw_only=True):
    """This node's daemon link(s) to one member, merged: up if any link is up, bytes of the up links."""

    member: str
    up: bool
    bytes_recvd: int | None = None
    latency_ms: float | None = None
    inbound: bool | None = None
    uptime_s: float | None = None  # of the youngest up link

    def renewed_since(self, before: LinkSample) -> bool:
        """Is this a new link since the `before` listing, though neither listing shows it down? The far end or a
        daemon redialled in between (a removePeer + addPeer takes ~0.2 s): its uptime or its byte counter went
        back. Traffic on the old link says nothing about the new one, and the new one carried a handshake."""
        if not (self.up and before.up):
            return False
        if self.uptime_s is not None and before.uptime_s is not None and self.uptime_s < before.uptime_s:
            return True
        mine, theirs = self.bytes_recvd, before.bytes_recvd
        return mine is not None and theirs is not None and mine < theirs

    def received_since(self, before: LinkSample) -> bool:
        """Did the link receive bytes since the `before` listing (a renewed link did: its handshake)?"""
        if self.bytes_recvd is None:
            return False
        if before.bytes_recvd is None:
            return True
        return self.bytes_recvd > before.bytes_recvd or self.renewed_since(before)


class MemberView(msgspec.Struct, frozen=True, kw_only=True):
    """One member as the membership layer (SWIM) sees it from this node; times are unix seconds."""

    state: MemberState_ = "joining"
    incarnation: int = 0
    since: float = 0.0  # this node's view entered `state`
    by: str = ""  # who suspects it / declared it dead
    drill_until: float = 0.0  # it announced a drill (an intentional fault) until then
    last_ack: float | None = None  # our own probe of it last answered
    rtt_s: float | None = None  # smoothed round trip of our direct probes


class Observation(msgspec.Struct, frozen=True, kw_only=True):
    """What one Monitor phase saw."""

    at: float
    daemon_ok: bool
    daemon_error: str | None = None
    api_version: str | None = None
    links: dict[str, LinkSample] = {}  # the latest daemon snapshot, by member id
    # The snapshot before: received bytes between the two prove a link carries packets.
    links_before: dict[str, LinkSample] | None = None
    probes: list[Probe] = []
    # Every member's state in the membership layer (None: SWIM is not running; probes alone then).
    membership: dict[str, MemberView] | None = None
    # Nothing reached this node over the mesh for a whole probe cycle: it is the one cut off. It suspects nobody
    # (the mesh must not hear its stale verdicts), but for itself every other member is unreachable.
    cut_off: bool = False


class Finding(msgspec.Struct, frozen=True, kw_only=True):
    """One fact the analysis established this tick; an incident is open while its finding is present."""

    kind: IncidentKind
    subject: str
    detail: str
    onset: float | None = None  # last good observation before the fault (for time to detect)


class PlannedAction(msgspec.Struct, frozen=True, kw_only=True):
    action: ActionKind
    target: str
    uri: str | None
    reason: str
    skip: str | None = None  # why it will not be executed (recorded as outcome "skipped")
    for_subject: str | None = None  # subject of the incident this serves
    hold_s: float = 0.0  # restore/remove on 0.4: refuse our own redials of the dropped link this long
    standing_in_for: tuple[str, ...] = ()


# A 0.4 daemon writes a keepalive on a link it has written nothing to for 4 s (0.5: acknowledgements every
# second, and a link quiet for 3 s is dropped), so a live link never receives nothing for this long. One that does
# is stuck: after a blackhole its TCP connection sits in retransmission backoff, and a 0.4 daemon drops it at 6 s.
STUCK_QUIET_S = 4.5
# With our own probes failing too (`peer_silent` open) and the peering port not answering, a shorter silence is
# evidence enough: the watched links carry SWIM pings and acks every probe interval (0.4 s), and after 2 s of loss
# a TCP connection's retransmission timer is already past a second. A 5 s blackhole quietened a link for 4-5 s as
# the snapshots saw it: on the wrong side of 4.5 s, its dialer left it to the daemons: repaired 2.23 s after the
# fault (scale_bench.py short case).
SILENT_STUCK_S = 2.0


@dataclass
class MemberState:
    overlay: Probe | None = None
    underlay: Probe | None = None
    dial: Probe | None = None
    dial_fail_since: float | None = None  # its peering port has not answered since then
    overlay_ok_at: float | None = None
    overlay_fail_since: float | None = None
    underlay_fail_since: float | None = None
    slow_probes: int = 0
    link_up: bool = False
    link_up_since: float | None = None
    ever_up: bool = False
    link_seen_up_at: float | None = None
    link_down_since: float | None = None
    sample: LinkSample | None = None  # the latest listing of an up link to it
    traffic_at: float | None = None
    stuck_since: float | None = None  # when this link was first seen stuck (cleared when it is renewed or drops)
    flaps: deque[float] = field(default_factory=deque)
    api_version: str | None = None
    daemon_up: bool | None = None
    quarantine_until: float | None = None
    quarantined_at: float | None = None
    quarantine_level: int = 0

    def quarantined(self, now: float) -> bool:
        return self.quarantine_until is not None and now < self.quarantine_until

    def link_stuck(self, now: float, quiet_s: float = STUCK_QUIET_S) -> bool:
        """The link is up and has received nothing for `quiet_s` (and has been up that long). See
        `stuck_since`: a link stuck once stays suspect after bytes pass again, because one end may receive (the
        other's retransmission got through) while the other still receives nothing and drops it."""
        return (
            self.link_up
            and self.traffic_at is not None
            and now - self.traffic_at >= quiet_s
            and self.link_up_since is not None
            and now - self.link_up_since >= quiet_s
        )

    def cut_while_silent(self, now: float, silent: bool) -> bool:
        """Quiet for SILENT_STUCK_S with `peer_silent` open (`silent`) while the member's peering port does not
        answer either: the path is cut (a blackhole), not the far agent slow or still starting, whose port the
        kernel answers: quiet and silent alone is also how a link looks while its far agent is busy (a 20-node
        start on 2 cores), and redialling healthy links there would only add drops."""
        # The latest port check, made while this link was up: one from before it formed (the far daemon not
        # started yet) says nothing about it, and kept 20-node starts redialling fresh links.
        return (
            self.dial is not None
            and not self.dial.ok
            and self.link_up_since is not None
            and self.dial.at >= self.link_up_since
            and silent
            and self.link_stuck(now, SILENT_STUCK_S)
        )

    def new_flaps(self) -> int:
        """Link drops in the flap window since the last quarantine began (a quarantine is paid for once)."""
        since = self.quarantined_at if self.quarantined_at is not None else float("-inf")
        return sum(1 for t in self.flaps if t > since)


@dataclass
class Temporary:
    """A link MAPE-K added (dialer) or expects (acceptor) as a stand-in for lost planned peers."""

    member: str
    dialer: bool
    since: float
    standing_in_for: tuple[str, ...]
    uri: str | None = None


@dataclass
class Reconciled:
    opened: list[tuple[Incident, float | None]]  # incident, time to detect
    resolved: list[tuple[Incident, float]]  # incident, time to repair


class Knowledge:
    def __init__(
        self,
        node_id: str,
        members: Members = EMPTY,
        thresholds: Thresholds | None = None,
        degree: int = 2,
        started_at: float = 0.0,
    ) -> None:
        if degree < 1:
            raise ValueError(f"planned degree must be >= 1, got {degree}")
        self.node_id = node_id
        self.members = members
        self.thresholds = thresholds or Thresholds()
        self.degree = degree
        self.started_at = started_at
        self.api_version: str | None = None
        self.daemon_ok: bool | None = None
        self.daemon_error: str | None = None
        self.daemon_ok_at: float | None = None
        self.majority_ok_at: float | None = None
        self.states: dict[str, MemberState] = {}
        self.incidents: deque[Incident] = deque(maxlen=self.thresholds.max_incidents)
        self.active: dict[tuple[str, str], Incident] = {}
        self.actions: deque[Action] = deque(maxlen=self.thresholds.max_actions)
        self.temporaries: dict[str, Temporary] = {}
        self.accepting: dict[str, tuple[str, ...]] = {}  # stand-ins we expect to dial us, and for whom
        self.last_skip: dict[tuple[str, str], tuple[str, float]] = {}
        self.membership: dict[str, MemberView] = {}
        self.has_membership = False
        self.cut_off = False
        self.own_drill_until = 0.0  # this node's own drill (its links drop on purpose until then)
        self._boot = secrets.token_hex(2)
        self._seq = 0

    # --- members -------------------------------------------------------------------------------------------

    def drilling(self, member: str, now: float) -> bool:
        """`member`'s link drops are intentional now: it (or this node) announced a drill covering `now`
        (plus a grace for the links to come back), so they are not flapping."""
        grace = self.thresholds.drill_grace_s
        if self.own_drill_until and now <= self.own_drill_until + grace:
            return True
        view = self.membership.get(member)
        return view is not None and view.drill_until > 0 and now <= view.drill_until + grace

    def quarantines(self, now: float) -> list[tuple[str, float, int]]:
        """(member, until, level) of every member quarantined now."""
        return [
            (m, st.quarantine_until, st.quarantine_level)
            for m, st in sorted(self.states.items())
            if st.quarantined(now) and st.quarantine_until is not None
        ]

    def set_members(self, members: Members) -> None:
        self.members = members
        for gone in [m for m in self.states if m not in members.by_id]:
            del self.states[gone]

    def others(self) -> list[str]:
        return [m for m in self.members.ids if m != self.node_id]

    def neighbours(self) -> list[str]:
        return self.members.neighbours(self.node_id)

    def state(self, member: str) -> MemberState:
        st = self.states.get(member)
        if st is None:
            st = self.states[member] = MemberState()
        return st

    def member_version(self, member: str) -> str | None:
        learned = self.state(member).api_version
        if learned:
            return learned
        m = self.members.by_id.get(member)
        return m.api_version if m else None

    def version_mismatch(self, member: str) -> bool:
        theirs = self.member_version(member)
        return bool(self.api_version and theirs and theirs != self.api_version)

    def members_reachable(self) -> int:
        """Members the membership layer holds alive (without it: whose latest overlay probe answered), plus
        this node."""
        if self.has_membership:
            if self.cut_off:
                return 1
            return 1 + sum(1 for m in self.others() if (v := self.membership.get(m)) and v.state == "alive")
        return 1 + sum(
            1 for m in self.others() if (st := self.states.get(m)) and st.overlay is not None and st.overlay.ok
        )

    def members_unreachable(self) -> list[str]:
        """Members suspected or declared dead (without membership: whose latest overlay probe failed)."""
        if self.has_membership:
            if self.cut_off:
                return self.others()
            return [m for m in self.others() if (v := self.membership.get(m)) and v.state in ("suspect", "dead")]
        return [
            m for m in self.others() if (st := self.states.get(m)) and st.overlay is not None and not st.overlay.ok
        ]

    def temporary_members(self) -> set[str]:
        """Links that are stand-ins (for /mesh/peers `temporary`)."""
        return set(self.temporaries) | set(self.accepting)

    # --- monitor input -------------------------------------------------------------------------------------

    def observe(self, obs: Observation) -> None:
        now = obs.at
        th = self.thresholds
        self.daemon_ok = obs.daemon_ok
        self.daemon_error = obs.daemon_error
        if obs.membership is not None:
            self.membership = obs.membership
            self.has_membership = True
        self.cut_off = obs.cut_off
        if obs.daemon_ok:
            self.daemon_ok_at = now
            if obs.api_version:
                self.api_version = obs.api_version
        for p in obs.probes:
            if p.member == self.node_id:
                continue
            st = self.state(p.member)
            if p.path == "overlay":
                st.overlay = p
                if p.ok:
                    st.overlay_ok_at = p.at
                    st.overlay_fail_since = None
                    # An answer over the mesh proves its agent and daemon are alive: the diagnostic ping taken
                    # while the mesh path failed is history.
                    st.underlay = None
                    st.underlay_fail_since = None
                    if p.daemon_up is None:
                        st.daemon_up = True
                    if p.rtt_s is not None:  # a ping the member sent us proves it answers, not how fast
                        slow = p.rtt_s > th.latency_degraded_s
                        st.slow_probes = st.slow_probes + 1 if slow else 0
                elif st.overlay_fail_since is None:
                    st.overlay_fail_since = p.at
            elif p.path == "underlay":
                st.underlay = p
                if p.ok:
                    st.underlay_fail_since = None
                elif st.underlay_fail_since is None:
                    st.underlay_fail_since = p.at
            else:
                st.dial = p
                if p.ok:
                    st.dial_fail_since = None
                elif st.dial_fail_since is None:
                    st.dial_fail_since = p.at
            if p.ok and p.path != "dial":
                if p.daemon_up is not None:
                    st.daemon_up = p.daemon_up
                if p.api_version:
                    st.api_version = p.api_version
        if obs.daemon_ok:
            # Without a daemon reading we know nothing about links: keep the last state rather than invent drops.
            for m in self.others():
                st = self.state(m)
                sample = obs.links.get(m)
                up = sample is not None and sample.up
                if up:
                    assert sample is not None
                    last = st.sample if st.link_up else None
                    if last is None:
                        st.link_up_since = now
                        st.stuck_since = None
                    elif sample.renewed_since(last):
                        # Not counted as a flap: the drop was too short to see, and it is most likely a redial.
                        st.link_up_since = now - sample.uptime_s if sample.uptime_s is not None else now
                        st.stuck_since = None
                    st.link_seen_up_at = now
                    st.ever_up = True
                    st.link_down_since = None
                    received = sample.bytes_recvd is not None and (last is None or sample.received_since(last))
                    if received:
                        st.traffic_at = now
                    elif st.stuck_since is None and (
                        st.link_stuck(now) or st.cut_while_silent(now, self.has_active("peer_silent", m))
                    ):
                        st.stuck_since = now
                    st.sample = sample
                else:
                    st.stuck_since = None
                    if st.link_up:
                        held = now - st.link_up_since if st.link_up_since is not None else 0.0
                        if held < th.flap_min_up_s and not self.drilling(m, now):
                            st.flaps.append(now)
                        st.link_down_since = now
                    elif st.link_down_since is None:
                        st.link_down_since = now
                    st.sample = None
                st.link_up = up
        for st in self.states.values():
            while st.flaps and st.flaps[0] < now - th.flap_window_s:
                st.flaps.popleft()
            if not st.flaps and not st.quarantined(now):
                st.quarantine_level = 0
        total = len(self.members.ids) or 1
        unreachable = len(self.members_unreachable())
        if total - unreachable >= total // 2 + 1:
            self.majority_ok_at = now

    # --- incidents ----------------------------------------------------------------------------------------

    def _next_id(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}-{self._boot}-{self._seq}"

    def reconcile(self, findings: list[Finding], now: float) -> Reconciled:
        """Open, merge or resolve incidents so exactly the findings of this tick are active."""
        out = Reconciled(opened=[], resolved=[])
        seen: set[tuple[str, str]] = set()
        for f in findings:
            key = (f.kind, f.subject)
            if key in seen:
                continue
            seen.add(key)
            inc = self.active.get(key)
            if inc is not None:
                inc.detail = f.detail
                continue
            ttd = max(0.0, now - f.onset) if f.onset is not None else None
            inc = self._recent(key, now)
            if inc is not None:
                inc.count += 1
                inc.detected_at = now
                inc.resolved_at = None
                inc.detail = f.detail
            else:
                inc = Incident(
                    id=self._next_id("inc"),
                    kind=f.kind,
                    subject=f.subject,
                    detected_at=now,
                    resolved_at=None,
                    count=1,
                    detail=f.detail,
                    actions=[],
                )
                self.incidents.append(inc)
            self.active[key] = inc
            out.opened.append((inc, ttd))
        for key in [k for k in self.active if k not in seen]:
            inc = self.active.pop(key)
            inc.resolved_at = now
            out.resolved.append((inc, max(0.0, now - inc.detected_at)))
        return out

    def _recent(self, key: tuple[str, str], now: float) -> Incident | None:
        horizon = now - self.thresholds.merge_window_s
        for inc in reversed(self.incidents):
            if (inc.kind, inc.subject) == key and inc.resolved_at is not None and inc.resolved_at >= horizon:
                return inc
        return None

    def active_incidents(self) -> list[Incident]:
        return sorted(self.active.values(), key=lambda i: i.detected_at)

    def has_active(self, kind: str, subject: str) -> bool:
        return (kind, subject) in self.active

    def incident_for(self, subject: str) -> Incident | None:
        """The incident an action about `subject` serves: the newest active one, else the newest one."""
        for inc in reversed(self.incidents):
            if inc.subject == subject and inc.resolved_at is None:
                return inc
        for inc in reversed(self.incidents):
            if inc.subject == subject:
                return inc
        return None

    def incidents_since(self, since: float) -> list[Incident]:
        return [
            i
            for i in self.incidents
            if i.detected_at >= since or (i.resolved_at is not None and i.resolved_at >= since)
        ]

    # --- actions ------------------------------------------------------------------------------------------

    def record_action(
        self,
        action: ActionKind,
        target: str,
        uri: str | None,
        outcome: Outcome,
        reason: str,
        at: float,
        incident_subject: str | None = None,
    ) -> Action:
        inc = self.incident_for(incident_subject) if incident_subject else None
        rec = Action(
            id=self._next_id("act"),
            at=at,
            action=action,
            target=target,
            uri=uri,
            outcome=outcome,
            reason=reason,
            incident_id=inc.id if inc else None,
        )
        self.actions.append(rec)
        if inc is not None:
            inc.actions.append(rec.id)
        if outcome == "skipped":
            self.last_skip[(action, target)] = (reason, at)
        return rec

    def apply_outcome(self, planned: PlannedAction, outcome: Outcome, reason: str, at: float) -> Action:
        """Record what execute did with one planned action and update what it changed (stand-ins, quarantine)."""
        if outcome == "ok":
            if planned.action == "add_peer":
                self.temporaries[planned.target] = Temporary(
                    member=planned.target,
                    dialer=True,
                    since=at,
                    standing_in_for=planned.standing_in_for,
                    uri=planned.uri,
                )
            elif planned.action in ("restore", "remove_peer"):
                self.temporaries.pop(planned.target, None)
            elif planned.action == "quarantine":
                self.quarantine(planned.target, at)
        return self.record_action(
            planned.action, planned.target, planned.uri, outcome, reason, at, incident_subject=planned.for_subject
        )

    def actions_since(self, since: float) -> list[Action]:
        return [a for a in self.actions if a.at >= since]

    def redialled(self, member: str, since: float) -> bool:
        """Whether a redial of `member` succeeded at or after `since` (the newest actions are scanned first)."""
        for a in reversed(self.actions):
            if a.at < since:
                return False
            if a.target == member and a.action == "redial" and a.outcome == "ok":
                return True
        return False

    def executed_since(self, since: float) -> list[Action]:
        """Actions that touched the daemon (not skipped, not bookkeeping) since `since`."""
        return [a for a in self.actions if a.at >= since and a.outcome != "skipped" and a.action != "quarantine"]

    def quarantine(self, member: str, now: float) -> float:
        """Quarantine `member` with exponential backoff; returns the end time."""
        th = self.thresholds
        st = self.state(member)
        length = min(th.quarantine_max_s, th.quarantine_base_s * (2**st.quarantine_level))
        st.quarantine_level += 1
        st.quarantined_at = now
        st.quarantine_until = now + length
        return st.quarantine_until
