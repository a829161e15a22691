"""Polls every agent concurrently, with timeouts, and never two cycles at once (dolphie style).

One cycle asks each agent for /health, /mesh/status, /mesh/peers, /mapek, and (every other cycle, or every
cycle when it has open incidents or a drill runs) the incidents/actions newer than what we have; plus /metrics
every few cycles and /mesh/routes for nodes someone is looking at. Every agent gets
the same deadline; an agent that misses it keeps its last good data, marked with its age, and never holds up
the others for longer than that deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from dashboard import wire
from dashboard.agent_client import AgentClient, AgentError
from dashboard.events import Event, action_event, drill_events, incident_event
from dashboard.models import AgentData, absorb_actions, absorb_incidents
from dashboard.promtext import parse_metrics
from dashboard.providers.base import NodeTarget

# Re-read the last seconds of records every cycle: an incident written just after a newer one was served would
# otherwise fall behind the cursor. Records are deduplicated by id.
CURSOR_OVERLAP_S = 2.0
# How far back the first look at an agent's incidents and actions reaches.
FIRST_LOOK_BACK_S = 3600.0


class PollResult(msgspec.Struct, kw_only=True, frozen=True):
    started_at: float
    finished_at: float
    agents_ok: int
    agents_failed: int
    events: list[Event]

    @property
    def duration_s(self) -> float:
        return self.finished_at - self.started_at


class Poller:
    """Owns the per-agent store (`agents`). `poll` is serialized by a lock: callers (the UI loop, the drill
    engine) may ask at the same time, the agents still see one cycle after the other."""

    def __init__(
        self,
        client: AgentClient,
        *,
        clock: Callable[[], float] = time.time,
        metrics_every: int = 5,
        records_every: int = 2,
    ) -> None:
        self.client = client
        self.clock = clock
        self.metrics_every = max(1, metrics_every)
        # Incidents and actions are fetched every `records_every` cycles (nothing is lost: `since=` catches up),
        # every cycle for an agent with open incidents, and every cycle while `urgent` (a drill runs). A third
        # fewer requests per cycle in a quiet mesh.
        self.records_every = max(1, records_every)
        self.urgent = False
        self.agents: dict[str, AgentData] = {}
        self.detail_nodes: set[str] = set()  # nodes whose routes are fetched too (someone is looking)
        self.own_drills: set[str] = set()  # drill ids this session runs: its engine tells their steps itself
        # The mesh-wide drill lease, read from one answering agent with the records (any node serves it).
        self.lease: wire.DrillLease | None = None
        self.cycles = 0
        self._lock = asyncio.Lock()

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    async def poll(self, targets: Sequence[NodeTarget]) -> PollResult:
        async with self._lock:
            return await self._cycle(targets)

    async def _cycle(self, targets: Sequence[NodeTarget]) -> PollResult:
        started = self.clock()
        wanted = {t.id for t in targets}
        for gone in set(self.agents) - wanted:
            del self.agents[gone]
        with_metrics = self.cycles % self.metrics_every == 0
        records_due = self.urgent or self.cycles % self.records_every == 0
        self.cycles += 1
        jobs = []
        for t in targets:
            data = self.agents.get(t.id)
            if data is None or data.agent_url != t.agent_url:
                data = self.agents[t.id] = AgentData(node_id=t.id, agent_url=t.agent_url)
            if t.agent_url is not None:
                busy = data.mapek is not None and bool(data.mapek.active_incidents)
                jobs.append(
                    self._poll_agent(
                        data,
                        t.agent_url,
                        with_metrics,
                        t.id in self.detail_nodes,
                        records_due or busy or data.cursor is None,
                    )
                )
        per_agent = await asyncio.gather(*jobs)
        if records_due:
            await self._read_lease(targets)
        events = [e for evs in per_agent for e in evs]
        ok = sum(1 for t in targets if t.agent_url and self.agents[t.id].ok)
        return PollResult(
            started_at=started, finished_at=self.clock(), agents_ok=ok, agents_failed=len(jobs) - ok, events=events
        )

    async def reread_incidents(self, node_ids: Sequence[str], since: float) -> list[str]:
        """Fetch every incident of these agents detected or resolved since `since`, outside the poll rhythm, and
        merge them in (between two cycles: the lock). A drill does this before it calls the mesh recovered, so
        its report rests on the agents' records as they are then, not on what the polls happened to catch.
        Returns the nodes that did not answer."""
        async with self._lock:
            asked: list[tuple[str, AgentData, str]] = []
            for node_id in node_ids:
                data = self.agents.get(node_id)
                if data is not None and data.agent_url:
                    asked.append((node_id, data, data.agent_url))
            replies = await asyncio.gather(
                *(self.client.incidents(url, since) for _, _, url in asked), return_exceptions=True
            )
            failed = []
            for (node_id, data, _), reply in zip(asked, replies, strict=True):
                if isinstance(reply, BaseException):
                    if not isinstance(reply, AgentError):
                        raise reply
                    failed.append(node_id)
                    continue
                absorb_incidents(data, reply)
            return failed

    async def _read_lease(self, targets: Sequence[NodeTarget]) -> None:
        """One request a records cycle, to the first agent that answered this cycle (flat in the mesh's size), read
        from its replica (no Raft round per poll)."""
        for t in targets:
            data = self.agents.get(t.id)
            if t.agent_url is None or data is None or not data.ok:
                continue
            try:
                self.lease = await self.client.drill_lease(t.agent_url, stale=True)
            except AgentError:
                self.lease = None  # Raft off or no leader: nobody can tell (agent drills still show)
            return
        self.lease = None

    async def _poll_agent(
        self, data: AgentData, url: str, with_metrics: bool, with_routes: bool, with_records: bool
    ) -> list[Event]:
        c = self.client
        since = (data.cursor - CURSOR_OVERLAP_S) if data.cursor is not None else self.clock() - FIRST_LOOK_BACK_S
        calls: dict[str, Any] = {
            "health": self._timed_health(url),
            "status": c.status(url),
            "peers": c.peers(url),
            "mapek": c.mapek(url),
            "cluster": c.cluster(url),
        }
        if with_records:
            calls["incidents"] = c.incidents(url, since)
            calls["actions"] = c.actions(url, since)
            calls["drills"] = c.drills(url)  # drills started anywhere (another x0dash, headless, POST /drills)
        if with_metrics:
            calls["metrics"] = c.metrics_text(url)
        if with_routes:
            calls["routes"] = c.routes(url)
        attempt_at = self.clock()
        try:
            # httpx bounds each phase; this bounds the whole agent (a slow drip of bytes included).
            async with asyncio.timeout(c.timeout + 0.5):
                results = await asyncio.gather(*calls.values(), return_exceptions=True)
        except TimeoutError:
            results = [AgentError("timeout", f"no complete answer within {c.timeout + 0.5:g} s", url=url)] * len(
                calls
            )
        replies = dict(zip(calls, results, strict=True))
        data.last_attempt_at = attempt_at
        errors: dict[str, str] = {}
        for name, value in replies.items():
            if isinstance(value, BaseException):
                if not isinstance(value, AgentError):
                    raise value
                errors[name] = value.detail
        data.endpoint_errors = errors
        health = replies["health"]
        if isinstance(health, AgentError):
            data.ok, data.error, data.error_kind = False, health.detail, health.kind
            return []
        data.health, data.rtt_ms = health
        data.ok, data.error, data.error_kind = True, None, None
        data.last_ok_at = self.clock()
        if not isinstance(replies["status"], AgentError):
            data.status = replies["status"]
        if not isinstance(replies["peers"], AgentError):
            data.peers = replies["peers"]
        cluster = replies["cluster"]
        if isinstance(cluster, AgentError):
            data.cluster = None
            if cluster.kind == "not_found":  # an agent from before consensus: not an error worth showing
                errors.pop("cluster", None)
        else:
            data.cluster = cluster
        if "routes" in replies and not isinstance(replies["routes"], AgentError):
            data.routes = replies["routes"]
        if "metrics" in replies and not isinstance(replies["metrics"], AgentError):
            data.prev_metrics = data.metrics
            data.metrics = parse_metrics(replies["metrics"], self.clock())
        events: list[Event] = []
        incidents: list[wire.Incident] = []
        if not isinstance(replies["mapek"], AgentError):
            data.mapek = replies["mapek"]
            incidents.extend(data.mapek.active_incidents)
        if "incidents" in replies and not isinstance(replies["incidents"], AgentError):
            incidents.extend(replies["incidents"])
            if data.cursor is None:
                data.cursor = since  # looked once: a quiet agent joins the every-other-cycle rhythm
        events.extend(incident_event(data.node_id, inc, what) for inc, what in absorb_incidents(data, incidents))
        if "actions" in replies and not isinstance(replies["actions"], AgentError):
            events.extend(action_event(data.node_id, a) for a in absorb_actions(data, replies["actions"]))
        if "drills" in replies and not isinstance(replies["drills"], AgentError):
            events.extend(drill_events(data.node_id, data.drills, replies["drills"], self.own_drills))
            data.drills = replies["drills"]
        return events

    async def _timed_health(self, url: str) -> tuple[wire.Health, float]:
        t0 = time.perf_counter()
        health = await self.client.health(url)
        return health, (time.perf_counter() - t0) * 1000.0
