"""Mesh nodes from a Nomad job (nomad/mesh.nomad.hcl): allocations, their Nomad nodes and agent URLs.

refresh() re-reads Nomad when the event stream says something changed, every `resync_s` anyway, and on every call
while the stream is down (polling fallback). Nomad failures never raise: the snapshot turns ok=False with the
reason, keeps the last node list (the agents may well be fine) and the next attempt waits an exponential backoff.
Each refresh also asks every agent's /health once so the snapshot can say where Nomad and the agents disagree.

Drills through Nomad: node loss stops the node's allocation (Nomad places the replacement itself, so
restore_node has nothing to undo; the drill report measures until the replacement's agent is healthy and the mesh
whole), restart_allocation restarts the allocation or one task in place, drain_node/undo_drain drain the Nomad
node with a deadline and give back its previous eligibility.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from dashboard.agent_client import AgentClient, AgentError
from dashboard.logs import MAX_LOG_BYTES, LogSource
from dashboard.nomad.backoff import Backoff
from dashboard.nomad.client import NomadClient
from dashboard.nomad.errors import NomadError
from dashboard.nomad.events import EventStream
from dashboard.nomad.settings import NomadSettings, NomadSettingsError, load_settings
from dashboard.nomad.view import (
    AGENT_SERVICE,
    AGENT_TASK,
    YGGDRASIL_TASK,
    MeshNode,
    NomadView,
    agent_warnings,
    alloc_api_url,
    build_view,
    field,
)
from dashboard.providers.base import Provider, ProviderError, SourceSnapshot

ChangeListener = Callable[[], None]


class NomadProvider(Provider):
    name = "nomad"
    replaces_lost_nodes = True  # a stopped allocation is replaced by Nomad's scheduler

    def __init__(
        self,
        settings: NomadSettings | None = None,
        *,
        address: str | None = None,
        job: str | None = None,
        env: Mapping[str, str] | None = None,
        events: bool = True,
        resync_s: float = 30.0,
        probe_timeout_s: float = 1.5,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        env = os.environ if env is None else env
        try:
            self.settings = settings or load_settings(env, address=address, job=job)
        except NomadSettingsError as exc:
            raise ProviderError(str(exc)) from None
        self._env_token = (env.get("X0_API_TOKEN") or "").strip() or None
        self._use_events = events
        self._resync_s = resync_s
        self._probe_timeout_s = probe_timeout_s
        self._backoff = backoff or Backoff(1.0, 30.0)
        self._clock = clock
        self._client: NomadClient | None = None
        self._events: EventStream | None = None
        self._listeners: list[ChangeListener] = []
        self._dirty = threading.Event()
        self._view: NomadView | None = None
        self._view_at = 0.0  # monotonic time of the last successful Nomad read
        self._retry_at = 0.0  # monotonic time before which Nomad is not asked again after a failure
        self._last_error: NomadError | None = None
        self._alloc_urls: dict[str, str] = {}
        self._token: str | None = None
        self.token_detail = ""
        self._prior_eligibility: dict[str, str] = {}

    # Lifecycle ------------------------------------------------------------------------------------------------
    @property
    def api_token(self) -> str | None:
        return self._env_token or self._token

    @property
    def client(self) -> NomadClient:
        if self._client is None:
            raise ProviderError("nomad provider not started")
        return self._client

    def start(self) -> None:
        self._client = NomadClient(self.settings)
        self._read_token()
        if self._use_events:
            job = self.settings.job
            # Filter keys: Allocation events carry [JobID, DeploymentID], Service events [JobID, ServiceName].
            topics = [f"Allocation:{job}", f"Service:{job}", "Node"]
            self._events = EventStream(self._client, topics, self._on_event)
            self._events.start()

    def stop(self) -> None:
        if self._events is not None:
            self._events.stop()
            self._events = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def add_change_listener(self, listener: ChangeListener) -> None:
        """Called (from the event thread) when Nomad reports a change to the job's allocations, services or
        nodes, so the UI can refresh now instead of at its next tick."""
        self._listeners.append(listener)

    def _on_event(self, frame: dict[str, Any]) -> None:
        self._dirty.set()
        for listener in list(self._listeners):
            listener()

    @property
    def events_state(self) -> str:
        if not self._use_events:
            return "off (polling)"
        return self._events.state if self._events is not None else "not started"

    def _read_token(self) -> None:
        """The agents' API token from the job's Nomad variable (nomad/jobs/<job>, item api_token)."""
        if self._env_token:
            self.token_detail = "API token from X0_API_TOKEN"
            return
        path = f"nomad/jobs/{self.settings.job}"
        try:
            var = self.client.variable(path)
        except NomadError as exc:
            self.token_detail = f"no API token for drills: {exc.message}"
            return
        items = field(var, "VariableDecrypted.Items", {})
        token = items.get("api_token") if isinstance(items, dict) else None
        if token:
            self._token = token
            self.token_detail = f"API token from Nomad variable {path}"
        else:
            self.token_detail = f"no API token for drills: variable {path} has no api_token item"

    # Refresh --------------------------------------------------------------------------------------------------
    def log_sources(self, node_id: str) -> list[LogSource]:
        view = self._view
        node = next((n for n in view.nodes if n.node_id == node_id), None) if view is not None else None
        alloc_id = node.alloc_id if node is not None else ""
        if not alloc_id:
            return []
        # The agent logs to stderr (Python logging); Yggdrasil to stdout.
        return [
            LogSource(
                name=f"{task} {stream}",
                where=f"Nomad allocation {alloc_id[:8]}, task {task}, {stream}",
                alloc_id=alloc_id,
                task=task,
                stream=stream,
            )
            for task, stream in ((AGENT_TASK, "stderr"), (YGGDRASIL_TASK, "stdout"), (AGENT_TASK, "stdout"))
        ]

    def read_log(self, source: LogSource, max_bytes: int = MAX_LOG_BYTES) -> str:
        if source.alloc_id is None or source.task is None or source.stream is None:
            return super().read_log(source, max_bytes)
        client = self._client
        if client is None:
            raise ProviderError("Nomad is not connected")
        try:
            return client.alloc_logs(source.alloc_id, source.task, source.stream, max_bytes)
        except NomadError as exc:
            raise ProviderError(str(exc)) from exc

    def refresh(self) -> SourceSnapshot:
        now = time.monotonic()
        if now < self._retry_at:
            return self._failed_snapshot(self._last_error, wait_s=self._retry_at - now)
        if self._needs_read(now):
            self._dirty.clear()  # events arriving during the read mark the next refresh dirty again
            try:
                self._view = self._read_view()
            except NomadError as exc:
                self._last_error = exc
                self._retry_at = time.monotonic() + self._backoff.fail()
                return self._failed_snapshot(exc, wait_s=self._backoff.delay)
            self._view_at = time.monotonic()
            self._last_error = None
            self._backoff.reset()
        view = self._view
        assert view is not None
        health = self._probe(view.nodes)
        warnings = view.warnings + agent_warnings(view.nodes, health)
        if not self.api_token:
            warnings.append(self.token_detail)
        if self._events is not None and not self._events.live and self._events.last_error is not None:
            # Reads still work (polling fallback), but changes now show only at the next poll: say why first.
            warnings.insert(0, f"Nomad event stream {self._events.state}; polling Nomad on every refresh")
        detail = (
            f"job {view.job_id} ({view.job_type}, {view.job_status or 'unknown'}): {len(view.nodes)} nodes; "
            f"events {self.events_state}"
        )
        return SourceSnapshot(
            source=self.settings.describe(),
            ok=True,
            detail=detail,
            nodes=view.targets(),
            planned_links=view.planned_links(),
            warnings=warnings,
            taken_at=self._clock(),
        )

    def _needs_read(self, now: float) -> bool:
        if self._view is None or self._dirty.is_set() or now - self._view_at >= self._resync_s:
            return True
        return self._events is None or not self._events.live  # polling fallback

    def _read_view(self) -> NomadView:
        client, job_id = self.client, self.settings.job
        try:
            job = client.job(job_id)
        except NomadError as exc:
            if exc.kind == "not_found":
                raise NomadError(
                    "not_found",
                    "read job",
                    f"no job {job_id!r} in namespace {self.settings.namespace_or_default!r} (run "
                    f"`nomad job run nomad/mesh.nomad.hcl`, or pass --job)",
                    status=404,
                ) from None
            raise
        allocs = client.job_allocations(job_id)
        nodes = client.nodes()
        registrations = client.service(AGENT_SERVICE)
        view = build_view(job, allocs, nodes, registrations, self._alloc_urls)
        if view.need_ports:
            for alloc_id in view.need_ports:
                try:
                    url = alloc_api_url(client.allocation(alloc_id))
                except NomadError as exc:
                    if exc.kind != "not_found":  # garbage-collected since the list was read: no URL, no failure
                        raise
                    continue
                if url:
                    self._alloc_urls[alloc_id] = url
            view = build_view(job, allocs, nodes, registrations, self._alloc_urls)
        known = {field(a, "AllocListStub.ID") for a in allocs}
        self._alloc_urls = {k: v for k, v in self._alloc_urls.items() if k in known}
        return view

    def _failed_snapshot(self, error: NomadError | None, *, wait_s: float) -> SourceSnapshot:
        reason = error.message if error is not None else "Nomad not read yet"
        last = self._view
        return SourceSnapshot(
            source=self.settings.describe(),
            ok=False,
            detail=f"{reason} (retrying in {wait_s:.0f} s)",
            # The agents may be fine while Nomad is not: keep polling the nodes we last knew.
            nodes=last.targets() if last is not None else [],
            planned_links=last.planned_links() if last is not None else [],
            warnings=[],
            taken_at=self._clock(),
        )

    # Agents' view ---------------------------------------------------------------------------------------------
    def _probe(self, nodes: list[MeshNode]) -> dict[str, str | None]:
        """node_id -> None (agent healthy) or why not, for nodes with a known agent URL."""
        targets = {n.node_id: n.agent_url for n in nodes if n.agent_url}
        if not targets:
            return {}

        async def probe_all() -> dict[str, str | None]:
            async with AgentClient(timeout=self._probe_timeout_s) as agents:
                results = await asyncio.gather(*(self._probe_one(agents, url) for url in targets.values()))
            return dict(zip(targets, results, strict=True))

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(probe_all())
        # Called from inside an event loop (not how the session calls us): run the probe beside it.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, probe_all()).result()

    @staticmethod
    async def _probe_one(agents: AgentClient, url: str) -> str | None:
        try:
            health = await agents.health(url)
        except AgentError as exc:
            if exc.kind in {"refused", "timeout"}:
                return "unreachable"
            return f"not answering as an agent ({exc.detail})"
        if health.status == "ok":
            return None
        failing = [f"{c.name}: {c.detail}" for c in health.checks if not c.ok]
        return "unhealthy (" + ("; ".join(failing) or "status fail") + ")"

    # Drills through Nomad -------------------------------------------------------------------------------------
    def _node(self, node_id: str) -> MeshNode:
        if self._view is None:
            self.refresh()
        node = self._view.by_id(node_id) if self._view is not None else None
        if node is None:
            known = ", ".join(n.node_id for n in self._view.nodes) if self._view else "none"
            raise ProviderError(f"nomad: no mesh node {node_id!r} in job {self.settings.job} (nodes: {known})")
        return node

    def _write(self, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        try:
            result = fn()
        except NomadError as exc:
            raise ProviderError(exc.message) from None
        self._dirty.set()
        return result

    def node_loss(self, node_id: str, duration_s: float) -> str:
        node = self._node(node_id)
        if not node.live:
            raise ProviderError(
                f"nomad: {node_id}'s allocation {node.alloc_id[:8]} is not running "
                f"({field(node.alloc, 'AllocListStub.ClientStatus')})"
            )
        resp = self._write(lambda: self.client.stop_allocation(node.alloc_id))
        eval_id = field(resp, "AllocStopResponse.EvalID", "")
        return (
            f"stopped allocation {node.alloc_id[:8]} ({field(node.alloc, 'AllocListStub.Name')}) on "
            f"{field(node.alloc, 'AllocListStub.NodeName')}; evaluation {eval_id[:8]} places a replacement "
            f"(Nomad brings the node back itself, so the {duration_s:g} s window only bounds the report)"
        )

    def restore_node(self, node_id: str) -> None:
        """Nothing to undo: Nomad replaced the stopped allocation on its own."""

    def restart_allocation(self, node_id: str, task: str | None = None) -> str:
        """Restart the node's allocation in place (all running tasks), or only `task` ("agent", "yggdrasil")."""
        node = self._node(node_id)
        self._write(lambda: self.client.restart_allocation(node.alloc_id, task))
        what = f"task {task}" if task else "all tasks"
        where = field(node.alloc, "AllocListStub.NodeName")
        return f"restarted {what} of allocation {node.alloc_id[:8]} on {where}"

    def drain_node(self, node_id: str, deadline_s: float) -> str:
        """Drain the Nomad node running `node_id` (system allocations go last, after `deadline_s` at most)."""
        if deadline_s <= 0:
            raise ProviderError("nomad: the drain deadline must be positive (seconds)")
        node = self._node(node_id)
        placement = node.placement()
        nomad_node_id = placement.node_id
        if placement.eligibility:
            self._prior_eligibility.setdefault(nomad_node_id, placement.eligibility)
        resp = self._write(lambda: self.client.drain_node(nomad_node_id, deadline_s))
        return (
            f"draining Nomad node {placement.node_name} (deadline {deadline_s:g} s, index "
            f"{field(resp, 'NodeDrainUpdateResponse.NodeModifyIndex')})"
        )

    def drain_preview(self, node_id: str, deadline_s: float) -> str:
        """Exactly what drain_node(node_id, deadline_s) will do: the Nomad node, every allocation on it (any job,
        read from Nomad now), the mesh nodes that go with it, the deadline, and what the undo gives back."""
        node = self._node(node_id)
        placement = node.placement()
        nomad_node_id = placement.node_id
        view = self._view
        mesh_by_alloc = {n.alloc_id: n.node_id for n in view.nodes} if view is not None else {}
        mesh_here = sorted(
            n.node_id
            for n in (view.nodes if view is not None else [])
            if n.live and field(n.alloc, "AllocListStub.NodeID") == nomad_node_id
        )
        where = ", ".join(x for x in (placement.datacenter, placement.node_status, placement.eligibility) if x)
        lines = [
            f"Nomad node {placement.node_name} (id {nomad_node_id[:8]}{', ' + where if where else ''}) is "
            f"marked ineligible and drained with a deadline of {deadline_s:g} s. Allocations on it:"
        ]
        try:
            allocs = self.client.node_allocations(nomad_node_id)
        except NomadError as exc:
            allocs = None
            lines.append(f"  (could not list them: {exc.message}; at least the mesh's own:)")
            for mesh_id in mesh_here or [node_id]:
                n = self._node(mesh_id)
                lines.append(
                    f"  - {field(n.alloc, 'AllocListStub.Name')} ({n.alloc_id[:8]}, job "
                    f"{self.settings.job}) = mesh node {mesh_id}"
                )
        for alloc in allocs or []:
            if field(alloc, "Allocation.DesiredStatus") != "run":
                continue  # already stopping: the drain changes nothing for it
            alloc_id = field(alloc, "Allocation.ID", "")
            mesh = mesh_by_alloc.get(alloc_id)
            job, status = field(alloc, "Allocation.JobID"), field(alloc, "Allocation.ClientStatus")
            lines.append(
                f"  - {field(alloc, 'Allocation.Name')} ({alloc_id[:8]}, job {job}, {status})"
                + (f" = mesh node {mesh}" if mesh else "")
            )
        if allocs is not None and len(lines) == 1:
            lines.append("  (none running)")
        lines.append(
            f"Nomad migrates service and batch allocations first and stops system ones last; after "
            f"{deadline_s:g} s it stops whatever still runs there."
        )
        others = [m for m in mesh_here if m != node_id]
        if others:
            lines.append(
                f"This also takes down mesh node{'s' if len(others) > 1 else ''} {', '.join(others)}: "
                f"{'they run' if len(others) > 1 else 'it runs'} on the same Nomad node."
            )
        before = self._prior_eligibility.get(nomad_node_id, placement.eligibility or "eligible")
        lines.append(
            f"Undo cancels the drain and makes the node {before} again"
            + (", so Nomad places the mesh allocation back." if before == "eligible" else ".")
        )
        return "\n".join(lines)

    def undo_drain(self, node_id: str) -> str:
        """Cancel the drain of the node running `node_id` and give back its eligibility from before the drill."""
        placement = self._node(node_id).placement()
        nomad_node_id = placement.node_id
        eligible = self._prior_eligibility.pop(nomad_node_id, "eligible") == "eligible"
        self._write(lambda: self.client.drain_node(nomad_node_id, None, mark_eligible=eligible))
        return (
            f"drain of Nomad node {placement.node_name} cancelled; "
            f"{'eligible' if eligible else 'left ineligible as before'}"
        )
