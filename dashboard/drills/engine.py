"""The drill engine: one drill at a time, the same for the UI and `x0dash drill`.

1. Preflight: the target exists and has an agent, no drill runs (here or on any agent), we can inject.
2. Wait for the steady state and record it (a drill on a mesh that is already broken measures nothing).
3. Inject: blackhole/partition through the target agent's `POST /drills`; node loss through the source
   (stop the local node, stop the Nomad allocation) or else the agent's `kill-daemon` drill; the Nomad-only
   drills through the source: restart the allocation in place, drain the Nomad node (with a deadline).
4. Follow every observer's MAPE-K incidents and heal actions (via the session's poll cycles) until the fault
   is reverted and the mesh is back to its steady state, or the recovery timeout passes. When the source undoes
   the fault itself (Nomad replaces a stopped allocation, restarts one, re-places it after a drain), the mesh is
   back only once each node it took runs on a running (new, or restarted) allocation whose agent is healthy.
5. Score (drills/scoring.py) and hand back the report. `abort()` reverts the fault at once (DELETE /drills/{id},
   restoring the node, undoing the drain) and still reports what was measured.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Literal, get_args

import msgspec

from agent import __version__
from dashboard.agent_client import AgentError
from dashboard.drills import lease
from dashboard.drills.filing import holder
from dashboard.drills.scoring import (
    SLO,
    ActionSeen,
    DrillReport,
    FaultWindow,
    IncidentSeen,
    SteadyHold,
    SteadyState,
    environment,
    relevant,
    returned_to,
    score,
    steady_state,
    wary_detectors,
)
from dashboard.drills.workload import Workload, WorkloadResult
from dashboard.events import step_event
from dashboard.models import MeshView, NodeView
from dashboard.nomad.view import AGENT_TASK
from dashboard.providers.base import SOURCE_DRILL_KINDS, DrillKind, NomadPlacement, ProviderError
from dashboard.session import MeshSession

DRILL_KINDS: tuple[str, ...] = get_args(DrillKind)
AGENT_DRILL_KINDS: tuple[str, ...] = tuple(k for k in DRILL_KINDS if k not in SOURCE_DRILL_KINDS)
DURATION_RANGE = (1, 600)  # the agents' limit for POST /drills (contracts §3)
DEADLINE_RANGE = (1, 3600)  # drain deadline, s
DEFAULT_DRAIN_DEADLINE_S = 30
# After the fault, the mesh must stay back this long before the drill calls it a full recovery: a link stuck in TCP
# retransmission backoff, or an observer whose probe timeouts are still stretched by its local health, reopens an
# incident a second or two after everything looked whole, and the report must count that repair, not hide it.
SETTLE_S = 2.0
# Before the fault, a drill waits this long at most for every node's failure detector to be back at full
# sensitivity; a 2-3 s blackhole started right after an earlier fault went unnoticed by the node that had been
# cut off (its probe timeouts stretched to 3.5 s). Past it the drill runs and says which detectors were wary.
CALM_WAIT_S = 10.0
REVERT_RETRY_S = 2.0  # between attempts to undo a fault the source made (restore a node, undo a drain)


class DrillPlan(msgspec.Struct, kw_only=True, frozen=True):
    kind: str
    target: str
    duration_s: int = 10
    slo: SLO = SLO()
    # drain: how long Nomad lets the node's allocations migrate before it stops them (DrainSpec.Deadline)
    deadline_s: int = DEFAULT_DRAIN_DEADLINE_S
    task: str | None = None  # restart-alloc: restart only this task (None: all of them)


def restarts_agent(plan: DrillPlan) -> bool:
    """A restart-alloc drill restarts the agent too (all tasks, or the agent's): its younger uptime proves it."""
    return plan.kind == "restart-alloc" and plan.task in (None, AGENT_TASK)


def _alloc(p: NomadPlacement) -> str:
    return f"allocation {p.alloc_id[:8]} ({p.alloc_name}) on Nomad node {p.node_name or p.node_id[:8]}"


def describe(
    plan: DrillPlan, *, via_source: bool, placement: NomadPlacement | None = None, preview: str | None = None
) -> str:
    """What a drill will do, for the confirmation dialog and the headless log. `placement` is the target's
    Nomad allocation (Nomad source), `preview` the source's own account of a drain (which node, which
    allocations, the deadline)."""
    kind, target, duration_s = plan.kind, plan.target, plan.duration_s
    after = "then the fault is reverted and the mesh must return to its steady state."
    # Nomad brings the node back by itself: the fault lasts until it is back, the duration only bounds the wait.
    waits = (
        f"(repair is timed from then); waited for at most {duration_s} s plus the recovery timeout. Every "
        "other node should detect it and the mesh should heal."
    )
    if kind == "blackhole":
        what = (
            f"{target}'s agent installs nftables rules that silently drop its Yggdrasil traffic, so its "
            "peers see links that stay open but carry nothing"
        )
    elif kind == "partition":
        what = f"{target}'s agent cuts it off from every other node (nftables), as a network partition would"
    elif kind == "node-loss" and via_source and placement is not None:
        what = f"Nomad stops {target}'s {_alloc(placement)} (agent and Yggdrasil), as if the node died"
        return (
            f"{what}. Nomad places a replacement allocation by itself: the fault lasts until the "
            f"replacement's agent is healthy {waits} The drill ends once the mesh is whole again."
        )
    elif kind == "node-loss" and via_source:
        what = f"the source stops {target} (agent and Yggdrasil daemon), as if the host died"
    elif kind == "node-loss":
        what = f"{target}'s agent kills its Yggdrasil daemon (kill-daemon drill), as if the node died"
    elif kind == "leader-loss":
        return (
            f"The Raft leader ({target} now) is lost: "
            + describe(msgspec.structs.replace(plan, kind="node-loss"), via_source=via_source, placement=placement)
            + " Meanwhile every other node runs a store writer and reader; the report adds each one's time to a "
            "new leader, the write-unavailability window and a consistency verdict."
        )
    elif kind == "restart-alloc":
        tasks = f"task {plan.task}" if plan.task else "all tasks (Yggdrasil and the agent)"
        where = _alloc(placement) if placement is not None else f"{target}'s allocation"
        what = f"Nomad restarts {tasks} of {target}'s {where}, in place"
        if not restarts_agent(plan):
            # The agent keeps running, so nothing shows when the task is back: the duration is the window.
            return (
                f"{what}. Nomad starts it again by itself; the drill watches for {duration_s} s, then until "
                f"{target} is healthy and the mesh is whole again. Every other node should detect it."
            )
        return (
            f"{what}. Nomad starts them again by itself: the fault lasts until {target}'s agent is healthy on "
            f"the restarted allocation {waits} The drill ends once the mesh is whole again."
        )
    elif kind == "drain":
        what = preview or (
            f"the Nomad node running {target} is drained with a deadline of {plan.deadline_s} s "
            "(marked ineligible, its allocations stopped)"
        )
        return (
            f"{what}\n\nThe drain stays on for {duration_s} s; every other node should detect {target}'s "
            "loss. Then the drain is undone automatically (also on abort with a; u undoes it at any time), "
            f"restoring the node's eligibility: Nomad places {target} back and the mesh must return to its "
            "steady state."
        )
    else:
        what = f"{kind} on {target}"
    return f"{what}, for {duration_s} s. Every other node should detect it and the mesh should heal; {after}"


class DrillRefused(Exception):
    """The drill was not started; the message says why (missing node, another drill running, no token…)."""


StepLevel = Literal["info", "ok", "warn", "error"]


class DrillStep(msgspec.Struct, kw_only=True, frozen=True):
    at: float
    t_s: float | None  # since the fault was injected; None before it
    what: str
    level: StepLevel = "info"
    node: str | None = None


class DrillEngine:
    """One per session. `running` guards against a second drill from this dashboard; the agents' GET /drills
    guards against drills started elsewhere."""

    def __init__(
        self,
        session: MeshSession,
        *,
        follow_interval: float = 0.5,
        steady_timeout: float = 60.0,
        settle_s: float = SETTLE_S,
        skew_s: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.session = session
        self.follow_interval = follow_interval
        self.steady_timeout = steady_timeout
        self.settle_s = settle_s
        self.skew_s = skew_s
        self.clock = clock
        self.running: DrillPlan | None = None
        self.listeners: list[Callable[[DrillStep], None]] = []
        self._abort = asyncio.Event()
        # Set once the running drill's fault is reverted (or no fault is on): quitting waits for it.
        self.fault_reverted = asyncio.Event()
        self.fault_reverted.set()
        self._t0: float | None = None
        self._live: tuple[DrillPlan, FaultWindow, str] | None = None  # what to revert if we are cancelled
        # The target whose Nomad node this engine drained and has not yet undone (the UI offers `u` for it).
        self.undo_pending: str | None = None
        self._revert_retry_at = 0.0
        self._lease: lease.Taken | None = None  # the mesh-wide lease held for a fault the source makes

    # ---------------------------------------------------------------------------------------------- helpers
    def _step(
        self, what: str, level: StepLevel = "info", node: str | None = None, at: float | None = None
    ) -> None:
        at = self.clock() if at is None else at
        step = DrillStep(at=at, t_s=None if self._t0 is None else at - self._t0, what=what, level=level, node=node)
        self.session.add_event(step_event(at, what, level, node))
        for listener in list(self.listeners):
            listener(step)

    def abort(self) -> None:
        """Revert the running fault now; run() still returns a report (marked aborted)."""
        if self.running is not None:
            self._abort.set()

    @property
    def uses_source_for_node_loss(self) -> bool:
        return self.session.provider.supports_node_loss

    @property
    def kinds(self) -> tuple[str, ...]:
        """The drill kinds this session can run: the agents' own, plus the ones only the source can make."""
        return AGENT_DRILL_KINDS + tuple(self.session.provider.source_drill_kinds)

    def via_source(self, kind: str) -> bool:
        """True when the source makes this fault (no agent drill, no agent API token needed)."""
        kind = "node-loss" if kind == "leader-loss" else kind
        return kind in SOURCE_DRILL_KINDS or (kind == "node-loss" and self.uses_source_for_node_loss)

    @staticmethod
    def resolve_leader(plan: DrillPlan, view: MeshView) -> DrillPlan:
        """leader-loss: the target is whoever leads the Raft group now (as the agents report it)."""
        if plan.kind != "leader-loss":
            return plan
        leaders = [n.id for n in view.nodes if n.is_leader and n.state == "up"]
        named = {n.raft_leader_id for n in view.nodes if n.raft_leader_id}
        if len(leaders) != 1 or named - set(leaders):
            seen = ", ".join(f"{n.id}: {n.raft_role or 'no Raft data'}" for n in view.nodes)
            raise DrillRefused(f"no single Raft leader the agents agree on ({seen}); nothing to take away")
        return msgspec.structs.replace(plan, target=leaders[0])

    def source_brings_back(self, kind: str) -> bool:
        """True when the source undoes the fault by itself (Nomad restarts or re-places the allocation)."""
        return kind in SOURCE_DRILL_KINDS or (
            kind == "node-loss" and self.uses_source_for_node_loss and self.session.provider.replaces_lost_nodes
        )

    @staticmethod
    def affected(view: MeshView, plan: DrillPlan) -> list[str]:
        """Mesh nodes the fault takes: the target, and for a drain every mesh node on the same Nomad node."""
        target = view.node(plan.target)
        if plan.kind != "drain" or target is None or target.nomad is None:
            return [plan.target]
        host = target.nomad.node_id
        return [
            n.id for n in view.nodes if n.id == plan.target or (n.nomad is not None and n.nomad.node_id == host)
        ]

    def _agent_url(self, view: MeshView, node_id: str) -> str:
        node = view.node(node_id)
        if node is None or node.agent_url is None:
            raise DrillRefused(f"{node_id} has no agent URL known to the source")
        return node.agent_url

    async def _view(self) -> MeshView:
        return (await self.session.update()).view

    # ---------------------------------------------------------------------------------------------- preflight
    async def preflight(self, plan: DrillPlan) -> MeshView:
        if self.running is not None:
            raise DrillRefused(f"another drill is running: {self.running.kind} on {self.running.target}")
        if plan.kind not in DRILL_KINDS:
            raise DrillRefused(f"unknown drill kind {plan.kind!r}; choose one of {', '.join(DRILL_KINDS)}")
        if plan.kind not in self.kinds:
            raise DrillRefused(
                f"{plan.kind} drills need a Nomad source (--nomad or NOMAD_ADDR); the "
                f"{self.session.provider.name} source cannot make them"
            )
        lo, hi = DURATION_RANGE
        if not lo <= plan.duration_s <= hi:
            raise DrillRefused(f"duration must be {lo}..{hi} s, got {plan.duration_s}")
        lo, hi = DEADLINE_RANGE
        if plan.kind == "drain" and not lo <= plan.deadline_s <= hi:
            raise DrillRefused(f"drain deadline must be {lo}..{hi} s, got {plan.deadline_s}")
        view = self.session.view or await self._view()
        node = view.node(plan.target)
        if node is None:
            known = ", ".join(n.id for n in view.nodes) or "none"
            raise DrillRefused(f"no node {plan.target!r} in {view.source} (nodes: {known})")
        if node.agent_url is None:
            raise DrillRefused(f"{plan.target}: the source does not say how to reach its agent")
        if not self.via_source(plan.kind) and not self.session.client.token:
            raise DrillRefused(
                "no API token for this mesh: the agents refuse drills without one (set "
                "X0_API_TOKEN, or use an inventory that has api_token)"
            )
        await self._check_no_active_drill(view)
        await self._check_no_lease(view)
        await self._check_no_quarantine(view, plan)
        return view

    def _lease_urls(self, view: MeshView, target: str | None = None) -> list[str]:
        """Agents to ask about the mesh-wide lease, best first: up, and not the drill's target."""
        nodes = sorted(
            (n for n in view.nodes if n.agent_url), key=lambda n: (n.state != "up", n.id == target, n.id)
        )
        return [n.agent_url for n in nodes if n.agent_url][:3]

    async def _check_no_lease(self, view: MeshView) -> None:
        """Refuse while another holder has the mesh-wide drill lease (a fault another x0dash's source made is
        invisible in the agents' GET /drills). A lease naming an agent drill that has ended is stale: the next
        POST /drills takes it over, so it does not refuse."""
        held = await lease.current(self.session.client, self._lease_urls(view))
        if held is None or held.expires_at <= self.clock():
            return
        if held.drill_id is not None:
            return  # an agent drill: refused above while it runs, and taken over once it has ended
        raise DrillRefused("another drill is running: " + lease.describe(held, self.clock()))

    async def _check_no_active_drill(self, view: MeshView) -> None:
        async def active(node_id: str, url: str) -> list[str]:
            try:
                listed = await self.session.client.drills(url)
            except AgentError:
                # An agent we cannot ask shows as silent/down on screen; refusing for it would block every drill.
                return []
            return [
                f"{d.kind} on {node_id} (id {d.id}, ends in {max(0.0, d.ends_at - self.clock()):.0f} s)"
                for d in listed.active
            ]

        found = await asyncio.gather(*(active(n.id, n.agent_url) for n in view.nodes if n.agent_url))
        running = [d for ds in found for d in ds]
        if running:
            raise DrillRefused("another drill is running: " + "; ".join(running))

    async def _check_no_quarantine(self, view: MeshView, plan: DrillPlan) -> None:
        """Refuse while any agent's MAPE-K holds the target in quarantine, or the target holds one of its peers:
        the flap guard would hold the repair back, and the drill would measure the guard, not the mesh."""
        now = self.clock()

        async def held(node_id: str, url: str) -> list[str]:
            try:
                st = await self.session.client.mapek(url)
            except AgentError:
                return []  # shown as silent/down on screen; not a reason to refuse
            return [
                f"{node_id}'s MAPE-K holds {q.node_id} in quarantine for {max(0.0, q.until - now):.0f} s more "
                f"({q.reason})"
                for q in st.quarantined
                if plan.target in (node_id, q.node_id) and q.until > now
            ]

        found = await asyncio.gather(*(held(n.id, n.agent_url) for n in view.nodes if n.agent_url))
        holds = [h for hs in found for h in hs]
        if holds:
            raise DrillRefused(
                "; ".join(holds) + f". A drill on {plan.target} now would measure the flap guard, not the "
                "mesh: retry once the quarantine ends"
            )

    # ---------------------------------------------------------------------------------------------- run
    async def run(self, plan: DrillPlan) -> DrillReport:
        if plan.kind == "leader-loss":
            plan = self.resolve_leader(plan, await self._view())
        view = await self.preflight(plan)
        self.running = plan
        self._abort.clear()
        self.fault_reverted.clear()
        self._t0 = None
        self._live = None
        self._revert_retry_at = 0.0
        self.session.poller.urgent = True  # every observer's records every cycle while the drill runs
        try:
            return await self._run(plan, view)
        except asyncio.CancelledError:
            # Ctrl-C / SIGTERM / the app closing: never leave a fault behind.
            live = self._live
            if live is not None and live[1].ended_at is None:
                self._abort.set()
                await asyncio.shield(self._force_end(*live))
            raise
        finally:
            try:
                await asyncio.shield(asyncio.wait_for(self._release_lease(), timeout=10))
            except (TimeoutError, asyncio.CancelledError):
                pass  # it expires by itself (its TTL bounds how long it can block the mesh)
            self.running = None
            self._live = None
            self.session.poller.urgent = False
            self.fault_reverted.set()

    async def _wait_steady(self, plan: DrillPlan) -> tuple[MeshView, SteadyState]:
        deadline = self.clock() + self.steady_timeout
        self._step("waiting for the mesh's steady state")
        calm_by: float | None = None
        while True:
            view = await self._view()
            before = steady_state(view)
            if before.steady:
                wary = wary_detectors(view)
                if not wary:
                    self._step(f"steady state: {before.summary()}", "ok")
                    return view, before
                if calm_by is None:
                    calm_by = self.clock() + CALM_WAIT_S
                    self._step(f"waiting for failure detectors still wary of a recent fault: {', '.join(wary)}")
                elif self.clock() >= calm_by:
                    self._step(
                        f"steady state: {before.summary()}; failure detectors still wary after {CALM_WAIT_S:g} s: "
                        f"{', '.join(wary)}: they may detect the fault late",
                        "warn",
                    )
                    return view, before
            if self._abort.is_set():
                raise DrillRefused("aborted before the fault was injected")
            if self.clock() >= deadline:
                broken = ", ".join(before.nodes_not_up + before.links_not_up) or "members unreachable"
                raise DrillRefused(
                    f"the mesh is not in a steady state after {self.steady_timeout:g} s "
                    f"({before.summary()}: {broken}); a drill would measure nothing"
                )
            await asyncio.sleep(self.follow_interval)

    async def _run(self, plan: DrillPlan, view: MeshView) -> DrillReport:
        view, before = await self._wait_steady(plan)
        start_view = view
        target = view.node(plan.target)
        assert target is not None
        shown_kind = plan.kind
        if plan.kind == "leader-loss":
            if not target.is_leader:
                raise DrillRefused(f"{plan.target} no longer leads the Raft group; start the drill again")
            plan = msgspec.structs.replace(plan, kind="node-loss")  # the fault itself is a node loss
        # A drill on the Raft leader drives a small store workload and judges its consistency.
        with_workload = shown_kind == "leader-loss" or (
            plan.kind in ("partition", "blackhole") and target.is_leader
        )
        taken = self.affected(view, plan)
        observers = [n.id for n in view.nodes if n.id not in taken and n.state == "up"]
        if not observers and len(taken) > 1:
            raise DrillRefused(
                f"draining {plan.target}'s Nomad node takes every mesh node ({', '.join(taken)}): "
                "nobody would be left to detect it"
            )
        aliases = {plan.target} | {x for x in (target.key, target.address) if x}
        url = self._agent_url(view, plan.target)
        # For faults the source undoes itself: each taken node's allocation now, to tell its replacement apart.
        allocs_before = (
            {n: p.alloc_id for n in taken if (p := self._placement(view, n)) is not None}
            if self.source_brings_back(plan.kind)
            else {}
        )
        if plan.kind == "drain":
            await self._announce_drain(plan)
        workload: Workload | None = None
        if with_workload:
            urls = {o: u for o in observers if (u := (view.node(o) or target).agent_url)}
            workload = Workload(
                urls=urls, token=self.session.client.token, prefix=f"x0dash/drills/{self.clock():.0f}"
            )
            await workload.start()
            warm = await workload.warmed_up()
            self._step(
                f"store workload on {', '.join(urls)}: a writer and a reader each (leader {workload.old_leader})"
                + ("" if warm else "; NOT every writer got a write acknowledged before the fault"),
                "info" if warm else "warn",
            )
            workload.fault()
        try:
            fault = await self._inject(plan, url)
        except BaseException:
            if workload is not None:
                await workload.finish()
            raise
        self._live = (plan, fault, url)
        self._t0 = fault.started_at
        self._step(f"fault injected: {fault.method}", "warn", plan.target, at=fault.started_at)

        seen: dict[tuple[str, str], IncidentSeen] = {}
        acted: dict[tuple[str, str], ActionSeen] = {}
        announced: set[str] = set()
        after: SteadyState | None = None
        steady_at: float | None = None
        hold = SteadyHold(self.settle_s)
        give_up_at = fault.started_at + plan.duration_s + plan.slo.recover_timeout_s + 10.0
        while True:
            await asyncio.sleep(self.follow_interval)
            view = await self._view()
            self._collect(observers, fault, seen, acted, announced, aliases)
            if allocs_before and fault.back_at is None:
                back = self._back(plan, view, fault, allocs_before)
                if back is not None:
                    fault = msgspec.structs.replace(fault, back_at=self.clock(), back_what=back)
                    self._live = (plan, fault, url)
                    self._step(f"back: {back}", "ok", plan.target)
            if fault.ended_at is None:
                fault = await self._maybe_end(plan, fault, url)
                self._live = (plan, fault, url)
                if fault.ended_at is not None:
                    self.fault_reverted.set()
                    give_up_at = fault.ended_at + plan.slo.recover_timeout_s
                    if fault.aborted or not self._self_healing(plan, fault):  # else the "back" step said it
                        self._step(
                            "fault aborted and reverted" if fault.aborted else "fault reverted",
                            "info",
                            plan.target,
                            at=fault.ended_at,
                        )
                    continue
            else:
                after = steady_state(view)
                mine = [i for i in seen.values() if relevant(i, aliases, fault, self.skew_s)]
                back = not allocs_before or fault.back_at is not None
                now = self.clock()
                whole = back and returned_to(before, after) and all(i.resolved_at is not None for i in mine)
                if hold.poll(now, whole):
                    # The polls may have missed an incident that opened and closed between two of them (an
                    # agent reopens a recent one under its old id): read each observer's records once more.
                    silent = await self.session.poller.reread_incidents(observers, fault.started_at - self.skew_s)
                    self._collect(observers, fault, seen, acted, announced, aliases)
                    mine = [i for i in seen.values() if relevant(i, aliases, fault, self.skew_s)]
                    if silent or any(i.resolved_at is None for i in mine):
                        hold = SteadyHold(self.settle_s)
                        continue
                    steady_at = hold.since
                    held = f" (held {now - hold.since:.1f} s)" if self.settle_s > 0 else ""
                    self._step(f"full recovery: {after.summary()}{held}", "ok", at=hold.since)
                    break
            if self.clock() >= give_up_at:
                after = steady_state(view)
                if fault.ended_at is None and not self._self_healing(plan, fault):
                    fault = await self._force_end(plan, fault, url)
                self._step(
                    "recovery timeout: the mesh did not return to its steady state"
                    + (
                        ""
                        if fault.back_at is not None or not allocs_before
                        else f" ({plan.target} never came back on a running allocation with a healthy agent)"
                    ),
                    "error",
                )
                break
        self._collect(observers, fault, seen, acted, announced, aliases)
        result = await self._end_workload(workload, observers) if workload is not None else None
        report = score(
            source=view.source,
            fault=fault,
            aliases=aliases,
            observers=observers,
            incidents=list(seen.values()),
            actions=list(acted.values()),
            before=before,
            after=after,
            steady_confirmed_at=steady_at,
            slo=plan.slo,
            created_at=self.clock(),
            skew_s=self.skew_s,
        )
        report = msgspec.structs.replace(report, environment=environment(start_view, __version__))
        if shown_kind != plan.kind or result is not None:
            report = self._with_workload(report, shown_kind, result)
        self._step(
            "PASS" if report.passed else "FAIL: " + "; ".join(report.failures), "ok" if report.passed else "error"
        )
        return report

    async def _end_workload(self, workload: Workload, observers: list[str]) -> WorkloadResult:
        result = await workload.finish(live=observers)
        for obs, took in sorted(result.new_leader_after_s.items()):
            self._step(
                f"{obs} names a new leader {took:.2f} s after the fault" if took is not None
                else f"{obs} never named a new leader",
                "ok" if took is not None else "error",
                obs,
            )  # fmt: skip
        gap = result.unavailable_s
        self._step("write unavailability: " + ("-" if gap is None else f"{gap:.2f} s"))
        v = result.verdict
        self._step(v.summary(), "ok" if v.consistent else "error")
        return result

    def _with_workload(self, report: DrillReport, kind: str, result: WorkloadResult | None) -> DrillReport:
        failures = list(report.failures)
        if result is not None:
            if not result.verdict.consistent:
                failures.append(result.verdict.summary())
            if result.verdict.writes_acked == 0:
                failures.append("the store workload got no write acknowledged (no API token, or no quorum)")
            if any(t is None for t in result.new_leader_after_s.values()) and kind == "leader-loss":
                failures.append("an observer never named a new leader")
        return msgspec.structs.replace(
            report,
            kind=kind,
            fault=msgspec.structs.replace(report.fault, kind=kind),
            consistency=result,
            failures=failures,
            passed=report.passed and failures == report.failures,
        )

    @staticmethod
    def _placement(view: MeshView, node_id: str) -> NomadPlacement | None:
        node = view.node(node_id)
        return node.nomad if node is not None else None

    def _back(
        self, plan: DrillPlan, view: MeshView, fault: FaultWindow, allocs_before: dict[str, str]
    ) -> str | None:
        """How every node the fault took is back (None while one is not): up, on a running allocation that is
        a new one (stop, drain) or, for a restart, one whose agent started after the restart was asked."""
        since = view.taken_at - fault.started_at
        parts = []
        for node_id, old in allocs_before.items():
            node: NodeView | None = view.node(node_id)
            p = node.nomad if node is not None else None
            if node is None or p is None or node.state != "up" or p.client_status != "running":
                return None
            if plan.kind == "restart-alloc":
                # A restart keeps the allocation; only a younger agent proves it happened (unless only another
                # task was restarted, which leaves the agent running).
                if restarts_agent(plan) and (node.uptime_s is None or node.uptime_s >= since):
                    return None
                parts.append(f"{node_id}'s allocation {p.alloc_id[:8]} restarted, agent healthy")
            else:
                if p.alloc_id == old:
                    return None
                where = p.node_name or p.node_id[:8]
                parts.append(f"{node_id} on replacement allocation {p.alloc_id[:8]} ({where}), agent healthy")
        return "; ".join(parts)

    async def _announce_drain(self, plan: DrillPlan) -> None:
        """Say exactly what the drain will do before doing it (also the headless command's record)."""
        try:
            preview = await asyncio.to_thread(self.session.provider.drain_preview, plan.target, plan.deadline_s)
        except ProviderError as exc:
            raise DrillRefused(f"cannot drain {plan.target}'s Nomad node: {exc}") from exc
        for line in preview.splitlines():
            self._step(line.strip(), "warn", plan.target)

    async def _inject(self, plan: DrillPlan, url: str) -> FaultWindow:
        client = self.session.client
        if self.via_source(plan.kind):
            await self._take_lease(plan)
            provider = self.session.provider
            started = self.clock()
            try:
                if plan.kind == "restart-alloc":
                    detail = await asyncio.to_thread(provider.restart_allocation, plan.target, plan.task)
                elif plan.kind == "drain":
                    detail = await asyncio.to_thread(provider.drain_node, plan.target, plan.deadline_s)
                    self.undo_pending = plan.target
                else:
                    detail = await asyncio.to_thread(provider.node_loss, plan.target, plan.duration_s)
            except ProviderError as exc:
                verb = {"restart-alloc": "restart", "drain": "drain the Nomad node of"}.get(plan.kind, "stop")
                raise DrillRefused(f"the source could not {verb} {plan.target}: {exc}") from exc
            return FaultWindow(
                kind=plan.kind,
                method=f"source: {detail}",
                target=plan.target,
                duration_s=plan.duration_s,
                started_at=started,
                ended_at=None,
                clock="dashboard",
                source_brings_back=self.source_brings_back(plan.kind),
            )
        agent_kind = "kill-daemon" if plan.kind == "node-loss" else plan.kind
        try:
            drill = await client.start_drill(url, agent_kind, plan.duration_s, holder=holder())
            self.session.poller.own_drills.add(drill.id)  # its steps are ours; the poll need not announce it
        except AgentError as exc:
            raise DrillRefused(f"{plan.target} refused the {agent_kind} drill: {exc.detail}") from exc
        return FaultWindow(
            kind=plan.kind,
            method=f"agent drill {agent_kind}",
            target=plan.target,
            duration_s=plan.duration_s,
            started_at=drill.started_at,
            ended_at=None,
            clock="agent",
            drill_id=drill.id,
            detail=drill.detail,
        )

    async def _take_lease(self, plan: DrillPlan) -> None:
        """The agents do not know a fault the source makes: hold the mesh-wide lease for it meanwhile."""
        view = self.session.view
        urls = self._lease_urls(view, plan.target) if view is not None else []
        ttl = min(3600.0, plan.duration_s + plan.slo.recover_timeout_s + lease.LEASE_SLACK_S)
        try:
            self._lease, note = await lease.take(
                self.session.client, urls, holder=holder(), kind=plan.kind, node_id=plan.target, ttl_s=ttl
            )
        except lease.LeaseHeld as exc:
            raise DrillRefused(f"another drill holds the mesh-wide drill lease: {exc}") from exc
        self._step(note, "info" if self._lease is not None else "warn")

    async def _release_lease(self) -> None:
        taken, self._lease = self._lease, None
        if taken is None:
            return
        view = self.session.view
        note = await lease.release(self.session.client, taken, self._lease_urls(view) if view is not None else [])
        self._step(note, "info" if "released" in note and "not" not in note else "warn")

    async def _maybe_end(self, plan: DrillPlan, fault: FaultWindow, url: str) -> FaultWindow:
        if fault.drill_id is None:  # made by the source: we end it
            if self.clock() < self._revert_retry_at:
                return fault  # the last revert failed: retry, but not at every follow tick
            if self._self_healing(plan, fault) and not self._abort.is_set():
                # Nothing for us to revert: the fault is over when the source has the node back, and the repair
                # clock starts there (like a local node that answers again).
                return fault if fault.back_at is None else msgspec.structs.replace(fault, ended_at=fault.back_at)
            if self._abort.is_set() or self.clock() >= fault.started_at + fault.duration_s:
                return await self._force_end(plan, fault, url)
            return fault
        if self._abort.is_set():
            return await self._force_end(plan, fault, url)
        try:
            listed = await self.session.client.drills(url)
        except AgentError:
            return fault  # the target may be cut off by its own drill; ask again next round
        for d in (*listed.active, *listed.past):
            if d.id == fault.drill_id and d.state != "active":
                ended = d.reverted_at if d.reverted_at is not None else self.clock()
                return msgspec.structs.replace(
                    fault,
                    ended_at=ended,
                    detail=d.detail or fault.detail,
                    aborted=fault.aborted or d.state == "aborted",
                )
        return fault

    @staticmethod
    def _self_healing(plan: DrillPlan, fault: FaultWindow) -> bool:
        """A fault the source undoes by itself and we can see undone: a stopped allocation replaced, or one
        restarted with its agent. (A drain we undo; another task's restart ends with the duration.)"""
        if plan.kind == "restart-alloc":
            return restarts_agent(plan)
        return fault.source_brings_back and plan.kind != "drain"

    async def _force_end(self, plan: DrillPlan, fault: FaultWindow, url: str) -> FaultWindow:
        aborted = self._abort.is_set()
        if fault.drill_id is None:
            ended = self.clock()
            try:
                if plan.kind == "drain":
                    done = await asyncio.to_thread(self.session.provider.undo_drain, plan.target)
                    if self.undo_pending == plan.target:
                        self.undo_pending = None
                    self._step(done, "ok", plan.target)
                elif plan.kind == "node-loss":
                    await asyncio.to_thread(self.session.provider.restore_node, plan.target)
                    if not self.session.provider.replaces_lost_nodes:
                        # restore_node returned once the node's agent answers again: its own boot is not the
                        # mesh's repair, so the repair clock starts here and the boot time is shown.
                        booted = self.clock()
                        self._step(
                            f"{plan.target} back and answering after {booted - ended:.2f} s; repair timed "
                            "from here",
                            "ok",
                            plan.target,
                        )
                        ended = booted
                # restart-alloc: Nomad started the tasks again itself; nothing to undo
            except ProviderError as exc:
                what = "undo the drain of" if plan.kind == "drain" else "restore"
                self._revert_retry_at = self.clock() + REVERT_RETRY_S
                self._step(
                    f"could not {what} {plan.target}: {exc} (retrying in {REVERT_RETRY_S:g} s)",
                    "error",
                    plan.target,
                )
                return msgspec.structs.replace(fault, aborted=aborted, detail=str(exc))
            return msgspec.structs.replace(fault, ended_at=ended, aborted=aborted)
        try:
            drill = await self.session.client.stop_drill(url, fault.drill_id)
        except AgentError as exc:
            if exc.kind == "not_found" or exc.kind == "conflict":
                return await self._maybe_end(plan, msgspec.structs.replace(fault, aborted=aborted), url)
            self._step(f"could not revert the drill on {plan.target}: {exc.detail}", "error", plan.target)
            return msgspec.structs.replace(fault, aborted=aborted)
        return msgspec.structs.replace(fault, ended_at=drill.reverted_at or self.clock(), aborted=aborted)

    async def undo_drain(self, target: str) -> str:
        """Undo a drain outside a drill's own end (the UI's `u`: a failed automatic undo, or a node left
        draining): restores the Nomad node's eligibility. Raises ProviderError."""
        done = await asyncio.to_thread(self.session.provider.undo_drain, target)
        if self.undo_pending == target:
            self.undo_pending = None
        self._step(done, "ok", target)
        return done

    def _collect(
        self,
        observers: list[str],
        fault: FaultWindow,
        seen: dict[tuple[str, str], IncidentSeen],
        acted: dict[tuple[str, str], ActionSeen],
        announced: set[str],
        aliases: set[str],
    ) -> None:
        """Fold the poller's records of every observer into the drill's own, keeping each incident's earliest
        detection, and tell the listeners what is new."""
        since = fault.started_at - self.skew_s
        for obs in observers:
            agent = self.session.poller.agents.get(obs)
            if agent is None:
                continue
            for inc in agent.incidents.values():
                if inc.detected_at < since and (inc.resolved_at is None or inc.resolved_at < since):
                    continue
                key = (obs, inc.id)
                old = seen.get(key)
                now = seen[key] = IncidentSeen.fold(
                    old, obs, inc.id, inc.kind, inc.subject, inc.detected_at, inc.resolved_at, inc.detail, since
                )
                first = now.detected_at
                if not relevant(now, aliases, fault, self.skew_s):
                    continue
                if obs not in announced:
                    announced.add(obs)
                    self._step(f"first detection by {obs}: {inc.kind} {inc.subject}", "warn", obs, at=first)
                if now.resolved_at is not None and (old is None or old.resolved_at is None):
                    self._step(f"{obs} resolved {inc.kind} {inc.subject}", "ok", obs, at=now.resolved_at)
            for act in agent.actions.values():
                if act.at < since or (obs, act.id) in acted:
                    continue
                acted[(obs, act.id)] = ActionSeen(
                    observer=obs,
                    id=act.id,
                    at=act.at,
                    action=act.action,
                    target=act.target,
                    outcome=act.outcome,
                    reason=act.reason,
                )
                self._step(
                    f"heal action by {obs}: {act.action} {act.target} {act.outcome}",
                    "ok" if act.outcome == "ok" else "warn",
                    obs,
                    at=act.at,
                )
