"""The MAPE-K loop as an agent extension (see agent.api.app `AgentExtension`).

Every X0_MAPEK_INTERVAL s (fixed schedule; a slow tick does not shift later ones):
Monitor (agent.mapek.monitor) -> Knowledge.observe -> Analyze -> incidents reconciled -> Plan -> Execute -> each
outcome recorded. Each phase is timed (`/mapek` phase_ms, x0_mapek_tick_duration_seconds). With
X0_MAPEK_ENABLED=false nothing runs and `/mapek` says `enabled: false` (the daemons alone are measured then).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from litestar import Router
from litestar.di import Provide

from agent.mapek.analyze import analyze
from agent.mapek.controller import MapekController
from agent.mapek.execute import Executor
from agent.mapek.knowledge import Finding, Knowledge, Observation, PlannedAction, Reconciled, Thresholds
from agent.mapek.monitor import MapekMonitor
from agent.mapek.plan import Plan, plan
from agent.mapek.schemas import INCIDENT_KINDS, Incident, MapekStatus, Outcome, PhaseMs
from agent.settings import Settings
from agent.views import member_of_link
from agent.yggdrasil.client import AdminClient
from agent.yggdrasil.models import PeerLink

if TYPE_CHECKING:
    from agent.state import AgentState

log = logging.getLogger("x0.mapek")

PHASES = ("monitor", "analyze", "plan", "execute")
# Down links this node dials have their peering port checked this often between ticks, so a redial follows the
# peer's return within a fraction of a second instead of waiting for the next tick.
PORT_WATCH_S = 0.25


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
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.thresholds = thresholds or Thresholds()
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

    async def start(self, agent: AgentState) -> None:
        self._agent = agent
        self.kn.started_at = self.clock()
        if not self.enabled:
            log.info("MAPE-K disabled (X0_MAPEK_ENABLED=false): the daemons heal on their own")
            return
        # Its own client: the loop's admin calls must not wait behind the monitor's snapshot.
        admin = AdminClient(self.settings.yggdrasil_admin, timeout=min(self.settings.admin_timeout, 1.0))

        def member_of(link: PeerLink) -> str | None:
            m = member_of_link(link, agent.context())
            return m.node_id if m is not None else None

        monitor = MapekMonitor(
            admin, member_of, timeout=self.thresholds.probe_timeout_s, fanout=self.thresholds.probe_fanout
        )
        self.attach(agent, monitor, Executor(admin))
        self._task = asyncio.get_running_loop().create_task(self._run(), name="x0-mapek")
        self._watch = asyncio.get_running_loop().create_task(self._watch_ports(monitor), name="x0-mapek-ports")
        log.info(
            "MAPE-K running every %g s (degree %d, probe timeout %g s)",
            self.interval,
            self.kn.degree,
            self.thresholds.probe_timeout_s,
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
        self.running = False

    async def _run(self) -> None:
        self.running = True
        try:
            next_at = time.monotonic()
            react = False
            while True:
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
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), next_at - now)
                    react = True  # a peering port answered: react now, the regular schedule is kept
                except TimeoutError:
                    react = False
        finally:
            self.running = False

    async def _watch_ports(self, monitor: MapekMonitor) -> None:
        """Between ticks: wake the loop at once when a link we had up drops (the daemon saw an RST: no need to
        wait for the tick) or when the peering port of a down link we dial answers again."""
        while True:
            await asyncio.sleep(PORT_WATCH_S)
            try:
                dropped = await monitor.links_dropped(self.kn)
                answering = await monitor.ports_answering(self.kn)
            except Exception:
                log.exception("link/port watch failed")
                continue
            if dropped:
                log.info("link to %s dropped: reacting now", ", ".join(dropped))
                self._wake.set()
            if answering:
                log.info("peering port of %s answers again: reacting now", ", ".join(answering))
                self._wake.set()

    # --- one tick -------------------------------------------------------------------------------------------

    async def run_tick(self, *, react: bool = False) -> TickRecord:
        agent, monitor, executor = self._agent, self._monitor, self._executor
        assert agent is not None and monitor is not None and executor is not None
        kn = self.kn
        metrics = agent.metrics
        if agent.members.generation != self._members_gen:
            self._members_gen = agent.members.generation
            for gone in set(kn.states) - set(agent.members.members.by_id):
                metrics.forget_member(gone)
            kn.set_members(agent.members.members)

        t0 = time.perf_counter()
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
            if p.path == "dial":
                continue
            metrics.member_reachable.labels(member=p.member, path=p.path).set(1 if p.ok else 0)
            if p.ok and p.rtt_s is not None:
                metrics.member_rtt.labels(member=p.member, path=p.path).set(p.rtt_s)
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
        )

    def incidents(self, since: float) -> list[Incident]:
        return self.kn.incidents_since(since)
