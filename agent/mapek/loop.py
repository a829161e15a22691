"""The MAPE-K loop as an agent extension (see agent.api.app `AgentExtension`).

Every X0_MAPEK_INTERVAL s (fixed schedule; a slow tick does not shift later ones), and at once when the
membership layer changes a member's state, a link goes up or down in the agent's snapshot, or the peering port
of a down/silent link we dial answers again: Monitor (agent.mapek.monitor) -> Knowledge.observe -> Analyze ->
incidents reconciled -> Plan -> Execute -> each outcome recorded. Each phase is timed (`/mapek` phase_ms,
x0_mapek_tick_duration_seconds). The membership layer (SWIM over UDP on the agent's port, agent.mapek.swim) runs
beside it on the same event loop. With X0_MAPEK_ENABLED=false nothing runs and `/mapek` says `enabled: false`
(the daemons alone are measured then).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from litestar import Router
from litestar.di import Provide

from agent.mapek.analyze import analyze
from agent.mapek.controller import MapekController
from agent.mapek.execute import Executor
from agent.mapek.knowledge import (
    Finding,
    Knowledge,
    MemberView,
    Observation,
    PlannedAction,
    Reconciled,
    Thresholds,
)
from agent.mapek.monitor import DaemonRead, MapekMonitor, watch_set
from agent.mapek.plan import Plan, plan
from agent.mapek.schemas import (
    INCIDENT_KINDS,
    Incident,
    MapekStatus,
    MemberList,
    Membership,
    MemberStatus,
    Outcome,
    PhaseMs,
    Quarantine,
)
from agent.mapek.swim.addresses import AddressBook
from agent.mapek.swim.protocol import Change, SwimConfig
from agent.mapek.swim.transport import SwimTransport
from agent.metrics import MemberSample, MembershipView
from agent.settings import Settings
from agent.views import member_of_link
from agent.yggdrasil.client import AdminClient
from agent.yggdrasil.models import PeerLink

if TYPE_CHECKING:
    from agent.state import AgentState

log = logging.getLogger("x0.mapek")

PHASES = ("monitor", "analyze", "plan", "execute")
# Between ticks, this often: a link that went up or down in the agent's latest snapshot, and the peering port of
# down/silent links this node dials, wake the loop, so a redial follows the peer's return within a fraction of a
# second instead of waiting for the next tick.
PORT_WATCH_S = 0.25
# Reaction ticks (woken between regular ticks) are at least this far apart: a burst of membership changes is one
# reaction, not dozens.
REACT_GAP_S = 0.05


class TickMonitor(Protocol):
    """What a tick needs from Monitor (agent.mapek.monitor.MapekMonitor; tests/mapek/sim.py states the facts)."""

    async def observe(self, kn: Knowledge, *, react: bool = False) -> Observation: ...

    async def aclose(self) -> None: ...


class TickExecutor(Protocol):
    """What a tick needs from Execute (agent.mapek.execute.Executor): carry out one action that the plan did not
    hold back (`skip` is None), and say how it went."""

    async def run(self, action: PlannedAction, api_version: str | None) -> tuple[Outcome, str]: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class TickRecord:
    """What one tick saw and decided (the simulator and tests read it; the loop itself keeps only Knowledge)."""

    observation: Observation
    findings: list[Finding]
    reconciled: Reconciled
    plan: Plan


class MapekLoop:
    """Extension object: `route_handlers` serve /mapek*, `start`/`stop` run the loop in the agent's lifespan.

    `run_tick` is the whole of one tick; `attach` hands it the agent, a monitor and an executor, so the
    simulator (tests/mapek/sim.py) drives this very code with stated facts instead of sockets. `clock` is the
    wall clock of the records (actions' times, the knowledge's start)."""

    def __init__(
        self,
        settings: Settings,
        thresholds: Thresholds | None = None,
        *,
        clock: Callable[[], float] = time.time,
        swim_config: SwimConfig | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.thresholds = thresholds or Thresholds()
        self.swim_config = swim_config or SwimConfig()
        self.swim: SwimTransport | None = None
        self.swim_error: str | None = None
        self._book_key: tuple[int, int, int, bool] | None = None
        self.enabled = settings.mapek_enabled
        self.interval = settings.mapek_interval
        self.kn = Knowledge(settings.node_id, thresholds=self.thresholds, degree=settings.mapek_degree)
        self.tick = 0
        self.last_tick_at: float | None = None
        self.phase_ms = dict.fromkeys(PHASES, 0.0)
        self.running = False
        self._agent: AgentState | None = None
        self._task: asyncio.Task[None] | None = None
        self._monitor: TickMonitor | None = None
        self._executor: TickExecutor | None = None
        self._members_gen = -1
        self._wake = asyncio.Event()
        self._watch: asyncio.Task[None] | None = None

        # A closure, not a bound method: Litestar deep-copies handlers and dependencies at registration, and a
        # copied bound method would serve a copy of this loop that never runs.
        def provide() -> MapekLoop:
            return self

        self.route_handlers = [
            Router(
                path="/",
                route_handlers=[MapekController],
                dependencies={"mapek": Provide(provide, sync_to_thread=False)},
                signature_namespace={"MapekLoop": MapekLoop},
            )
        ]

    # --- lifecycle ------------------------------------------------------------------------------------------

    def attach(self, agent: AgentState, monitor: TickMonitor, executor: TickExecutor) -> None:
        """Give `run_tick` what it works with (start() does it with the real monitor and executor)."""
        self._agent, self._monitor, self._executor = agent, monitor, executor
        agent.metrics.set_membership(self._membership_metrics)

    async def start(self, agent: AgentState) -> None:
        self._agent = agent
        self.kn.started_at = self.clock()
        if not self.enabled:
            log.info("MAPE-K disabled (X0_MAPEK_ENABLED=false): the daemons heal on their own")
            return
        # Its own client for actions (they must not wait behind the monitor's snapshot); MAPE-K reads nothing
        # from the daemon itself: it uses the agent's shared snapshot.
        admin = AdminClient(self.settings.yggdrasil_admin, timeout=min(self.settings.admin_timeout, 1.0))

        def member_of(link: PeerLink) -> str | None:
            m = member_of_link(link, agent.context())
            return m.node_id if m is not None else None

        swim = SwimTransport(
            self.settings.node_id,
            self.settings.listen_host,
            self.settings.listen_port,
            self.swim_config,
            on_change=self._on_membership_change,
        )
        if await swim.start():
            self.swim = swim
            agent.announce_drill = self._announce_drill
        else:
            self.swim_error = swim.error
        monitor = MapekMonitor(
            self._read, member_of, self.swim, timeout=self.thresholds.probe_timeout_s, fresh=agent.fresh_snapshot
        )
        self.attach(agent, monitor, Executor(admin))
        self._task = asyncio.get_running_loop().create_task(self._run(), name="x0-mapek")
        self._watch = asyncio.get_running_loop().create_task(self._watch_ports(monitor), name="x0-mapek-watch")
        c = self.swim_config
        log.info(
            "MAPE-K running every %g s (degree %d); SWIM probes every %g s (timeouts %g s direct, %g s via %d "
            "members)",
            self.interval,
            self.kn.degree,
            c.probe_interval_s,
            c.probe_timeout_s,
            c.indirect_timeout_s,
            c.indirect_checks,
        )

    async def stop(self) -> None:
        for task in (self._watch, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._executor is not None:
            await self._executor.aclose()
        if self._monitor is not None:
            await self._monitor.aclose()
        if self.swim is not None:
            await self.swim.stop()
        self.running = False

    async def _run(self) -> None:
        self.running = True
        try:
            next_at = time.monotonic()
            react = False
            while True:
                # Cleared before the tick, not after: a link or membership change seen while the tick awaits
                # (port probes, a fresh snapshot, the executor's admin calls) must wake the next one. Cleared
                # after, that wake was lost, and a link that was up for about a second could go unseen: a flap
                # not counted (the likely cause of a CI failure of test_a_flapping_link_is_quarantined...).
                self._wake.clear()
                try:
                    await self.run_tick(react=react)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # A bug in one tick must not end self-healing for good; it is logged with its traceback.
                    log.exception("MAPE-K tick %d failed", self.tick)
                if not react:
                    next_at += self.interval
                now = time.monotonic()
                if next_at < now:
                    next_at = now  # overran: start the next tick at once rather than bursting to catch up
                try:
                    async with asyncio.timeout(next_at - now):
                        await self._wake.wait()
                    react = True  # something changed: react now, the regular schedule is kept
                    await asyncio.sleep(REACT_GAP_S)
                except TimeoutError:
                    react = False
        finally:
            self.running = False

    async def _watch_ports(self, monitor: MapekMonitor) -> None:
        """Between ticks: wake the loop at once when a link changed in the agent's latest snapshot (the daemon saw
        an RST: no need to wait for the tick) or when the peering port of a down/silent link we dial answers."""
        agent = self._agent
        assert agent is not None
        seen: float | None = None
        while True:
            await asyncio.sleep(PORT_WATCH_S)
            try:
                snap = agent.snapshot
                if snap is not None and snap.taken_at != seen and agent.last_ok:
                    seen = snap.taken_at
                    changed = self._links_changed(snap.peers)
                    if changed:
                        log.info("link to %s went %s: reacting now", *changed)
                        self._wake.set()
                answering = await monitor.ports_answering(self.kn)
                subjects = {i.subject for i in self.kn.active.values()}
                if self.swim is not None and subjects and self.swim.pending_for(subjects):
                    self._wake.set()  # fresh evidence about a member with an open incident: re-analyze now
            except Exception:
                log.exception("link/port watch failed")
                continue
            if answering:
                log.info("peering port of %s answers again: reacting now", ", ".join(answering))
                self._wake.set()

    def _links_changed(self, peers: list[PeerLink]) -> tuple[str, str] | None:
        """A member whose link is up in the snapshot but not in the knowledge, or the reverse."""
        assert self._agent is not None
        ctx = self._agent.context()
        up = set()
        for link in peers:
            m = member_of_link(link, ctx)
            if m is not None and link.up:
                up.add(m.node_id)
        for m, st in self.kn.states.items():
            if st.link_up and m not in up:
                return m, "down"
            if not st.link_up and m in up and m in set(watch_set(self.kn)):
                return m, "up"
        return None

    def _on_membership_change(self, changes: list[Change]) -> None:
        for ch in changes:
            level = logging.INFO if ch.new in ("alive", "joining") or ch.old == "joining" else logging.WARNING
            by = f" (by {ch.by})" if ch.by and ch.by != ch.member else ""
            log.log(level, "member %s %s -> %s, incarnation %d%s", ch.member, ch.old, ch.new, ch.inc, by)
        if self.running:
            self._wake.set()

    async def _announce_drill(self, until: float) -> None:
        if self.swim is not None:
            self.swim.announce_drill(until)
            await asyncio.sleep(0)  # let the datagrams out before the fault goes in

    def _read(self) -> DaemonRead:
        agent = self._agent
        assert agent is not None
        ok = agent.yggdrasil_ok()
        return DaemonRead(snapshot=agent.snapshot, ok=ok, error=None if ok else agent.daemon_problem())

    async def _refresh_membership(self) -> None:
        """Members, addresses and the watched set of the membership layer, when what they depend on changed."""
        agent, swim = self._agent, self.swim
        assert agent is not None
        if swim is None:
            return
        own = agent.snapshot.self_info.address if agent.snapshot is not None else None
        # Rebuilt too once the daemon first tells its address: a book built before (an agent that starts its
        # daemon, members with no address as Nomad writes them) had the underlay as every member's mesh path for
        # good, dropped the neighbours' pings over the overlay as from unknown senders, and so never heard that
        # it had been declared dead: the others redialled its links every 2 s forever.
        key = (agent.members.generation, len(agent.learned_keys), agent.published_keys_gen, own is not None)
        if key != self._book_key:
            self._book_key = key
            ctx = agent.context()
            members = agent.members.members
            overlay = _ipv6_capable(self.settings.listen_host) and (
                own is not None or any(m.address or m.overlay_url for m in members.members)
            )
            book = await asyncio.to_thread(
                AddressBook.build, self.settings.node_id, members.members, ctx.key_of, _resolve, overlay
            )
            swim.set_members(members.ids, book)
        swim.set_watched(watch_set(self.kn))
        snap = agent.snapshot
        swim.set_daemon(agent.yggdrasil_ok(), snap.api_version if snap is not None else None)

    # --- one tick -------------------------------------------------------------------------------------------

    async def run_tick(self, *, react: bool = False) -> TickRecord:
        agent, monitor, executor = self._agent, self._monitor, self._executor
        assert agent is not None and monitor is not None and executor is not None
        kn = self.kn
        metrics = agent.metrics
        if agent.members.generation != self._members_gen:
            self._members_gen = agent.members.generation
            kn.set_members(agent.members.members)
        kn.own_drill_until = agent.own_drill_until

        t0 = time.perf_counter()
        await self._refresh_membership()
        obs = await monitor.observe(kn, react=react)
        t1 = time.perf_counter()
        kn.observe(obs)
        findings = analyze(obs, kn)
        rec = kn.reconcile(findings, obs.at)
        t2 = time.perf_counter()
        decided = plan(findings, kn, obs.at)
        kn.accepting = dict(decided.accepting)
        t3 = time.perf_counter()
        for action in decided.actions:
            if action.skip is not None:  # planned but held back (rate limit, quarantine, drill): recorded as such
                outcome, reason = "skipped", action.skip
            else:
                outcome, reason = await executor.run(action, kn.api_version)
            rec_action = kn.apply_outcome(action, outcome, reason, self.clock())
            metrics.mapek_actions.labels(action=rec_action.action, outcome=outcome).inc()
            level = logging.INFO if outcome != "failed" else logging.WARNING
            log.log(level, "action %s %s -> %s: %s", action.action, action.target, outcome, reason)
        t4 = time.perf_counter()

        self.tick += 1
        self.last_tick_at = obs.at
        self.phase_ms = {
            "monitor": (t1 - t0) * 1000,
            "analyze": (t2 - t1) * 1000,
            "plan": (t3 - t2) * 1000,
            "execute": (t4 - t3) * 1000,
        }
        for phase, ms in self.phase_ms.items():
            metrics.mapek_tick_duration.labels(phase=phase).observe(ms / 1000)
        metrics.mapek_tick_duration.labels(phase="total").observe(t4 - t0)
        for inc, ttd in rec.opened:
            metrics.mapek_incidents.labels(kind=inc.kind).inc()
            if ttd is not None:
                metrics.mapek_time_to_detect.labels(kind=inc.kind).observe(ttd)
            log.warning("incident %s %s %s: %s", inc.id, inc.kind, inc.subject, inc.detail)
        for inc, ttr in rec.resolved:
            metrics.mapek_time_to_repair.labels(kind=inc.kind).observe(ttr)
            log.info("incident %s %s %s resolved after %.2f s", inc.id, inc.kind, inc.subject, ttr)
        active: dict[str, int] = dict.fromkeys(INCIDENT_KINDS, 0)
        for inc in kn.active.values():
            active[inc.kind] += 1
        for kind, count in active.items():
            metrics.mapek_incidents_active.labels(kind=kind).set(count)
        metrics.mapek_members_reachable.set(kn.members_reachable())
        for p in obs.probes:
            if p.path != "dial" and p.ok and p.rtt_s is not None:
                metrics.probe_rtt.labels(path=p.path).observe(p.rtt_s)
        temporary = kn.temporary_members()
        for m in set(agent.temporary) - temporary:
            agent.unmark_temporary(m)
        for m in temporary - set(agent.temporary):
            agent.mark_temporary(m)
        return TickRecord(observation=obs, findings=findings, reconciled=rec, plan=decided)

    # --- API views ------------------------------------------------------------------------------------------

    def status(self) -> MapekStatus:
        members_total = len(self.kn.members.ids) if self._agent is None else len(self._agent.members.members.ids)
        return MapekStatus(
            node_id=self.settings.node_id,
            enabled=self.enabled,
            state="running" if self.running else "stopped",
            tick=self.tick,
            last_tick_at=self.last_tick_at,
            interval_s=self.interval,
            phase_ms=PhaseMs(**{k: round(v, 3) for k, v in self.phase_ms.items()}),
            members_total=members_total,
            members_reachable=self.kn.members_reachable() if self.tick else 0,
            active_incidents=self.kn.active_incidents(),
            membership=self.membership(),
            quarantined=self.quarantined(),
        )

    def incidents(self, since: float) -> list[Incident]:
        return self.kn.incidents_since(since)

    def _view(self) -> dict[str, MemberView]:
        """The membership view right now (the API reads it live; the knowledge has the last tick's copy)."""
        return self.swim.view() if self.swim is not None else self.kn.membership

    def _member_status(self, node_id: str, view: dict[str, MemberView]) -> MemberStatus | None:
        v = view.get(node_id)
        if v is None:
            return None
        return MemberStatus(
            node_id=node_id,
            state=v.state,
            incarnation=v.incarnation,
            since=round(v.since, 3),
            by=v.by,
            rtt_ms=round(v.rtt_s * 1000, 3) if v.rtt_s is not None else None,
            last_ack=round(v.last_ack, 3) if v.last_ack is not None else None,
            drill_until=v.drill_until or None,
        )

    def membership(self) -> Membership:
        swim = self.swim
        if swim is None:
            why = "X0_MAPEK_ENABLED=false" if not self.enabled else (self.swim_error or "not started")
            return Membership(
                enabled=False,
                detail=f"SWIM membership off: {why}",
                incarnation=0,
                local_health=0,
                alive=0,
                suspect=0,
                dead=0,
                joining=0,
                not_alive=[],
                drilling={},
            )
        s = swim.swim
        view = self._view()
        counts = {state: s.count(state) for state in ("alive", "suspect", "dead", "joining")}
        c = s.config
        return Membership(
            enabled=True,
            detail=f"SWIM over UDP port {swim.port}: {len(s.watched)} watched every {c.probe_interval_s:g} s, "
            f"{c.rotation} other every {c.rotation_every} intervals in rotation; "
            f"{c.indirect_checks} indirect probes",
            incarnation=s.inc,
            local_health=s.local_health,
            not_alive=[
                ms
                for m in sorted(view)
                if view[m].state != "alive" and (ms := self._member_status(m, view)) is not None
            ],
            drilling=s.drilling(time.time()),
            **counts,
        )

    def member_list(self) -> MemberList:
        view = self._view()
        members = [ms for m in sorted(view) if (ms := self._member_status(m, view)) is not None]
        return MemberList(
            node_id=self.settings.node_id, incarnation=self.swim.swim.inc if self.swim else 0, members=members
        )

    def quarantined(self) -> list[Quarantine]:
        now = time.time()
        out = []
        for m, until, level in self.kn.quarantines(now):
            flaps = self.kn.state(m).new_flaps()
            out.append(
                Quarantine(
                    node_id=m,
                    until=round(until, 3),
                    level=level,
                    reason=f"link to {m} flapped ({len(self.kn.state(m).flaps)} drops within "
                    f"{self.thresholds.flap_window_s:g} s, {flaps} since the quarantine began): no forced redials "
                    "and no stand-in use until then",
                )
            )
        return out

    def _membership_metrics(self) -> MembershipView:
        """Per-member detail for neighbours, stand-ins and members with an open incident (from the knowledge, so
        with or without SWIM running), and SWIM's own counts."""
        kn = self.kn
        detail = set(kn.neighbours()) | {i.subject for i in kn.active.values()} | set(kn.temporary_members())
        samples: list[MemberSample] = []
        for m in sorted(detail):
            v = kn.membership.get(m)
            if v is None:
                st = kn.states.get(m)
                probe = st.overlay if st is not None else None  # no membership layer: our own last probe
                if probe is not None:
                    samples.append(MemberSample(member=m, path="overlay", reachable=probe.ok, rtt_s=probe.rtt_s))
                continue
            samples.append(
                MemberSample(
                    member=m,
                    path="overlay",
                    reachable=v.state == "alive",
                    rtt_s=v.rtt_s,
                    incarnation=v.incarnation,
                )
            )
            st = kn.states.get(m)
            under = st.underlay if st is not None else None
            if under is not None:
                samples.append(MemberSample(member=m, path="underlay", reachable=under.ok, rtt_s=under.rtt_s))
        swim = self.swim
        if swim is None:
            return MembershipView(members=tuple(samples))
        s = swim.swim
        return MembershipView(
            enabled=True,
            states={state: s.count(state) for state in ("alive", "suspect", "dead", "joining")},
            incarnation=s.inc,
            local_health=s.local_health,
            sent=dict(s.counters.sent),
            received=dict(s.counters.received),
            dropped=dict(swim.dropped),
            suspicions=s.counters.suspicions,
            refutations=s.counters.refutations,
            members=tuple(samples),
        )


def _ipv6_capable(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return True  # a name: resolved by the OS, which may give IPv6


def _resolve(host: str) -> str | None:
    """An agent_url host as an IP (IP literals as they are; names through the resolver, in a worker thread)."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except OSError:
        return None
    return str(infos[0][4][0]) if infos else None
