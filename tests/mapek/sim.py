"""One node's MAPE-K loop driven tick by tick with stated facts (no sockets, no event loop, simulated time).

`SimNode.tick()` runs the agent's own `MapekLoop.run_tick` (members reload, Monitor -> Knowledge -> Analyze ->
reconcile -> Plan -> Execute -> records, metrics and temporary-link marks on a real `AgentState`), with only the
two I/O ends replaced: `StatedMonitor` hands it the Observation built from what the test states (links up, probe
results, daemon health), and `StatedExecutor` answers each action with the outcome the test chooses. A change to
the loop is a change to what these tests run.

The tick must not wait on anything: `drive` runs it to completion in one step and fails if it would block (a
real socket or sleep reached from the loop), which also keeps thousands of simulated ticks cheap.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, TypeVar

from agent.mapek.knowledge import (
    Finding,
    Knowledge,
    LinkSample,
    MemberView,
    Observation,
    PlannedAction,
    Probe,
    Thresholds,
)
from agent.mapek.loop import MapekLoop, TickRecord
from agent.mapek.schemas import Outcome
from agent.members import Members, parse_members
from agent.settings import Settings
from agent.state import AgentState

T0 = 1_000_000.0


def members(
    ids: Iterable[str],
    links: list[list[str]] | None = None,
    versions: Mapping[str, str] | None = None,
) -> Members:
    versions = versions or {}
    doc = {
        "mesh": "sim",
        "members": [
            {
                "node_id": i,
                "agent_url": f"http://10.9.0.{n + 1}:8080",
                "listen_uri": f"tls://10.9.0.{n + 1}:12345",
                "public_key": f"{n + 1:064x}",
                "api_version": versions.get(i),
            }
            for n, i in enumerate(ids)
        ],
    }
    if links is not None:
        doc["links"] = links
    return parse_members(json.dumps(doc).encode())


R = TypeVar("R")


def drive(coro: Coroutine[Any, Any, R]) -> R:
    """Run a coroutine that never waits to its end, synchronously."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("the simulated tick waited on I/O: a real socket or sleep is reachable from run_tick")


class StatedMonitor:
    """Monitor that hands the loop the observation the test stated for this tick (built from the knowledge as
    the loop passes it, after any members reload, like the real monitor's probe set)."""

    def __init__(self) -> None:
        self.next: Callable[[Knowledge], Observation] | None = None

    async def observe(self, kn: Knowledge, *, react: bool = False) -> Observation:
        stated, self.next = self.next, None
        if stated is None:
            raise RuntimeError("no observation stated for this tick")
        return stated(kn)

    async def aclose(self) -> None:
        return None


class StatedExecutor:
    """Executor whose outcome per action the test chooses (default: the daemon accepted it)."""

    def __init__(self) -> None:
        self.outcome: Callable[[PlannedAction], Outcome] = lambda a: "ok"
        self.ran: list[PlannedAction] = []

    async def run(self, action: PlannedAction, api_version: str | None) -> tuple[Outcome, str]:
        self.ran.append(action)
        return self.outcome(action), "done"

    async def aclose(self) -> None:
        return None


class TickResult:
    """A tick's record with the questions tests ask of it."""

    def __init__(self, record: TickRecord) -> None:
        self.record = record
        self.findings: list[Finding] = record.findings
        self.reconciled = record.reconciled
        self.plan = record.plan

    def kinds(self, subject: str | None = None) -> set[str]:
        return {f.kind for f in self.findings if subject is None or f.subject == subject}

    def actions(self, action: str | None = None, executed: bool | None = None) -> list[PlannedAction]:
        return [
            a
            for a in self.plan.actions
            if (action is None or a.action == action) and (executed is None or (a.skip is None) == executed)
        ]


class SimNode:
    def __init__(
        self,
        me: str,
        mesh: Members,
        degree: int = 2,
        thresholds: Thresholds | None = None,
        api: str = "0.4",
        started: float | None = None,
    ) -> None:
        self.now = T0
        settings = Settings(node_id=me, mapek_degree=degree, raft_enabled=False)
        self.agent = AgentState(settings)  # real state and metrics; its admin client is never used here
        self.loop = MapekLoop(settings, thresholds, clock=lambda: self.now)
        self.kn = self.loop.kn
        self.kn.started_at = T0 - 100 if started is None else started
        self.monitor = StatedMonitor()
        self.executor = StatedExecutor()
        self.loop.attach(self.agent, self.monitor, self.executor)
        self.set_members(mesh)
        self.api = api
        self.bytes: dict[str, int] = {}

    @property
    def outcome(self) -> Callable[[PlannedAction], Outcome]:
        return self.executor.outcome

    @outcome.setter
    def outcome(self, fn: Callable[[PlannedAction], Outcome]) -> None:
        self.executor.outcome = fn

    def set_members(self, mesh: Members) -> None:
        """A members-file reload as the agent's watcher does it: new members, new generation."""
        self.agent.members.members = mesh
        self.agent.members.generation += 1

    def tick(
        self,
        up: Iterable[str],
        *,
        overlay: Mapping[str, bool | float] | None = None,
        underlay: Mapping[str, bool] | None = None,
        dial: Mapping[str, bool] | None = None,
        quiet: Iterable[str] = (),
        daemon_ok: bool = True,
        health: Mapping[str, Mapping[str, object]] | None = None,
        latency_ms: Mapping[str, float] | None = None,
        dt: float = 1.0,
    ) -> TickResult:
        """One tick. `up`: members with a link up. `overlay`: probe result per member (True/False, or an RTT
        in seconds for a slow success); members not named answer fast. `quiet`: up links that receive no bytes
        during the probes. `dial`: peering-port probe per member."""
        self.now += dt
        now = self.now
        up = set(up)
        overlay = dict(overlay or {})
        underlay = dict(underlay or {})
        latency_ms = latency_ms or {}
        before = {m: LinkSample(member=m, up=True, bytes_recvd=self.bytes.setdefault(m, 1000)) for m in up}
        for m in up:
            if m not in quiet:
                self.bytes[m] += 100
        after = {
            m: LinkSample(member=m, up=True, bytes_recvd=self.bytes[m], latency_ms=latency_ms.get(m)) for m in up
        }

        def observe(kn: Knowledge) -> Observation:
            probes: list[Probe] = []
            for m in kn.others():
                result = overlay.get(m, True)
                ok = result is not False
                rtt = result if isinstance(result, float) else 0.005
                probes.append(
                    Probe(
                        member=m,
                        path="overlay",
                        ok=ok,
                        at=now,
                        rtt_s=rtt if ok else None,
                        error=None if ok else "timeout",
                    )
                )
                u_ok = underlay.get(m, True)
                h = (health or {}).get(m, {})
                probes.append(
                    Probe(
                        member=m,
                        path="underlay",
                        ok=u_ok,
                        at=now,
                        rtt_s=0.002 if u_ok else None,
                        error=None if u_ok else "connection refused",
                        daemon_up=h.get("daemon_up", True) if u_ok else None,  # type: ignore[arg-type]
                        api_version=h.get("api_version") if u_ok else None,  # type: ignore[arg-type]
                    )
                )
            for m, ok in (dial or {}).items():
                probes.append(Probe(member=m, path="dial", ok=ok, at=now, error=None if ok else "refused"))
            # The membership layer's view: what SWIM concludes from the same facts (a member whose overlay probe
            # fails is suspected, unless it was never heard from and this node is still starting).
            membership = {}
            in_grace = now - kn.started_at < kn.thresholds.startup_grace_s
            for m in kn.others():
                prev = kn.membership.get(m)
                state = "suspect" if overlay.get(m, True) is False else "alive"
                if state == "suspect" and in_grace and (prev is None or prev.state == "joining"):
                    state = "joining"
                since = prev.since if prev is not None and prev.state == state else now
                membership[m] = MemberView(state=state, since=since, by=kn.node_id if state == "suspect" else "")
            return Observation(
                at=now,
                daemon_ok=daemon_ok,
                daemon_error=None if daemon_ok else "no admin socket",
                api_version=self.api if daemon_ok else None,
                links=after if daemon_ok else {},
                links_before=before if daemon_ok else None,
                probes=probes,
                membership=membership,
            )

        self.monitor.next = observe
        return TickResult(drive(self.loop.run_tick()))
