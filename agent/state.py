"""The agent's shared runtime object: what the background tasks write and the HTTP handlers read.

One `AgentState` per agent, created by `agent.api.app.create_app`, reachable from handlers as
`request.app.state.agent` and passed to every extension's `start()`. Everything runs on the one event loop, so
plain attributes need no locks. Writers (monitor, members watcher, supervisor, MAPE-K) call the `record_*` /
`mark_*` methods, which bump `generation`; readers get payloads rebuilt at most once per generation.

Hooks for MAPE-K and drills (agent.mapek / agent.drills):
- read: `snapshot`, `context()`, `planned_status()`, `yggdrasil_ok()`, `members.members`, `last_error`;
- wait: `await wait_changed(after_generation, within=seconds)` to run right after a fresh snapshot;
- act: `admin` (AdminClient), `supervisor` (`stop_for(seconds)` / `start()` for the kill-daemon drill, None
  when the daemon is not supervised), `peering.uri_for(node_id)` (the URI the agent dials a member with);
- mark: `mark_temporary(node_id)` / `unmark_temporary(node_id)` flag stand-in links in /mesh/peers,
  `learn_key(node_id, key)` records a key found by probing;
- count: `metrics` (agent.metrics.AgentMetrics).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from agent import __version__, views
from agent.members import MembersWatcher
from agent.mesh.schemas import Health, HealthCheck, MeshPeers, MeshRoutes, MeshStatus, RefusedPeer
from agent.metrics import AgentMetrics, MetricsView
from agent.settings import Settings
from agent.yggdrasil.address import address_for_key
from agent.yggdrasil.client import AdminClient
from agent.yggdrasil.errors import AdminError
from agent.yggdrasil.models import DaemonSnapshot

# Invalid members named in the /health detail; the count says how many more there are.
MEMBER_PROBLEMS_SHOWN = 5

if TYPE_CHECKING:
    from agent.admission import PeerAdmission
    from agent.supervisor import DaemonSupervisor


class PeeringHandle(Protocol):
    """What other parts use of agent.peering.Peering (state does not import it: peering reads the state)."""

    def uri_for(self, node_id: str) -> str | None: ...


class ConsensusHandle(Protocol):
    """What other parts use of agent.consensus.service.ConsensusService (state does not import it)."""

    role: str
    drill_coordinator: Any


class AgentState:
    def __init__(self, settings: Settings, *, admin: AdminClient | None = None) -> None:
        self.settings = settings
        self.version = __version__
        self.started_at = time.time()
        self._started_mono = time.monotonic()
        self.admin = admin or AdminClient(settings.yggdrasil_admin, settings.admin_timeout)
        self.members = MembersWatcher(settings.mesh_members)
        self.metrics = AgentMetrics(view=self._metrics_view_now)
        self.supervisor: DaemonSupervisor | None = None
        self.peering: PeeringHandle | None = None
        self.admission: PeerAdmission | None = None  # set at start (agent.api.app)
        # Set by agent.consensus when it starts (None: consensus not loaded, e.g. tests with other extensions).
        self.consensus: ConsensusHandle | None = None

        self.snapshot: DaemonSnapshot | None = None
        self.snapshot_mono: float | None = None  # when `snapshot` was stored (monotonic)
        self.snapshot_epoch = 0  # the daemon_epoch `snapshot` was taken in
        self.last_ok: bool = False  # did the latest monitor attempt succeed
        self.last_error: AdminError | None = None
        self.last_error_at: float | None = None  # wall clock
        self.last_attempt_mono: float | None = None
        self.monitor_alive: bool = False
        # Bumps on a new daemon (supervised: a new process; otherwise: reachable again after it was not): peering
        # re-adds its links then, since a restarted daemon forgot every runtime peer.
        self.daemon_epoch = 0
        self._seen_process_epoch = -1

        self.temporary: set[str] = set()
        self.learned_keys: dict[str, str] = {}
        # Keys the nodes published in the replicated store (agent.consensus.key_directory), by node id; peer
        # admission admits them for members the members file gives no key (Nomad).
        self.published_keys: dict[str, str] = {}
        self.published_keys_gen = 0
        # Drills: the manager sets `own_drill_until` (unix s) while this node faults itself on purpose, and awaits
        # `announce_drill(until)` (set by MAPE-K's membership layer) before the fault goes in, so the mesh knows
        # the link drops that follow are intentional (not flapping).
        self.own_drill_until = 0.0
        self.announce_drill: Callable[[float], Awaitable[None]] | None = None
        # Set by the agent's monitor: take a snapshot now instead of at the next interval (`fresh_snapshot`).
        self.request_snapshot: Callable[[], None] | None = None

        self.generation = 0
        self._changed = asyncio.Event()
        self._cache_gen = -1
        self._ctx: views.MeshContext | None = None
        self._peers: MeshPeers | None = None
        self._routes: MeshRoutes | None = None
        self._status: MeshStatus | None = None
        self._planned: list[views.PlannedPeerStatus] = []
        self._metrics_view = MetricsView()
        self._health_key: tuple[int, bool, bool] | None = None
        self._health: tuple[Health, int] | None = None

    # --- writers ------------------------------------------------------------------------------------------

    def _bump(self) -> None:
        self.generation += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def record_snapshot(self, snapshot: DaemonSnapshot, *, process_epoch: int | None = None) -> None:
        """A successful monitor pass. `process_epoch` is the supervisor's start count, so a daemon restarted
        between two passes still counts as a new daemon."""
        if process_epoch is not None:
            # Supervised: only a new daemon process is a new daemon. A snapshot that failed (a busy agent, a slow
            # admin socket) while the same process ran is not: that daemon still holds every peer it had.
            new_daemon = process_epoch != self._seen_process_epoch
            self._seen_process_epoch = process_epoch
        else:
            # Not ours: a daemon that stopped answering may have been restarted behind our back. Peering re-adds
            # its targets then (harmless if the daemon still has them) and never forgets what it added.
            new_daemon = not self.last_ok or self.snapshot is None
        if new_daemon:
            self.daemon_epoch += 1
        self.snapshot = snapshot
        self.snapshot_epoch = self.daemon_epoch
        self.snapshot_mono = time.monotonic()
        self.last_attempt_mono = self.snapshot_mono
        self.last_ok = True
        learned = views.learn_keys(snapshot, self.members.members)
        for node_id, key in learned.items():
            self.learned_keys[node_id] = key
        self._bump()

    def note_daemon_restarted(self) -> None:
        """Someone else restarted the daemon (a Nomad sidecar's start script, at admission's request), maybe
        between two monitor passes: it forgot every runtime peer, so peering re-adds them."""
        self.daemon_epoch += 1
        self._bump()

    def record_error(self, error: AdminError) -> None:
        self.last_ok = False
        self.last_error = error
        self.last_error_at = time.time()
        self.last_attempt_mono = time.monotonic()
        self._bump()

    def record_members_change(self) -> None:
        self._bump()

    def notify(self) -> None:
        """Something readers show changed outside the monitor (supervisor state, drills)."""
        self._bump()

    def mark_temporary(self, node_id: str) -> None:
        if node_id not in self.temporary:
            self.temporary.add(node_id)
            self._bump()

    def unmark_temporary(self, node_id: str) -> None:
        if node_id in self.temporary:
            self.temporary.discard(node_id)
            self._bump()

    def set_published_keys(self, keys: dict[str, str]) -> None:
        if keys != self.published_keys:
            self.published_keys = keys
            self.published_keys_gen += 1
            self._bump()

    def learn_key(self, node_id: str, key: str) -> None:
        if self.learned_keys.get(node_id) != key:
            self.learned_keys[node_id] = key.lower()
            self._bump()

    async def wait_changed(self, after_generation: int, within: float | None = None) -> int:
        """Wait until `generation` moves past `after_generation` (at most `within` s); returns the generation."""
        if self.generation > after_generation:
            return self.generation
        event = self._changed
        # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that arrives as the event is set,
        # and a background task waiting here would then never stop.
        try:
            async with asyncio.timeout(within):
                await event.wait()
        except TimeoutError:
            pass
        return self.generation

    async def fresh_snapshot(self, newer_than: float, within: float) -> DaemonSnapshot | None:
        """Ask the monitor for a snapshot now and wait (at most `within` s) for one taken after `newer_than`
        (unix s); returns it, or None when none came (no monitor, the daemon does not answer, or too slow)."""
        deadline = time.monotonic() + within
        if self.request_snapshot is None:
            return None
        self.request_snapshot()
        while (snap := self.snapshot) is None or snap.taken_at <= newer_than:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            await self.wait_changed(self.generation, within=left)
        return snap

    # --- readers ------------------------------------------------------------------------------------------

    def uptime_s(self) -> float:
        return time.monotonic() - self._started_mono

    def snapshot_age_s(self) -> float | None:
        return None if self.snapshot_mono is None else time.monotonic() - self.snapshot_mono

    def yggdrasil_ok(self) -> bool:
        """The daemon answered the latest pass, and recently enough that a hang would already show."""
        age = self.snapshot_age_s()
        return self.last_ok and age is not None and age <= self.settings.stale_after

    def _refresh(self) -> None:
        if self._cache_gen == self.generation:
            return
        snap = self.snapshot
        ctx = views.MeshContext(
            node_id=self.settings.node_id,
            members=self.members.members,
            # Keys seen on our own links win; the keys members published in the store fill the gaps: a node that
            # only ever receives its links (the dialled end, Nomad's members file naming no key) could not tell
            # which member an inbound link was and counted its planned peers down for good.
            learned_keys={**self.published_keys, **self.learned_keys},
            temporary=frozenset(self.temporary),
            static_peers=self.settings.yggdrasil_peers,
            self_key=snap.self_info.key if snap is not None else None,
        )
        self._ctx = ctx
        if snap is not None:
            matched = views.match_peers(snap, ctx)
            self._planned = views.planned_status(matched, ctx)
            self._peers = views.peers_view(snap, ctx)
            if self.admission is not None:
                self._peers.admission = self.admission.detail
                self._peers.refused = [
                    RefusedPeer(
                        key=p.key,
                        address=address_for_key(p.key),
                        remote=p.remote,
                        attempts=p.attempts,
                        first_at=p.first_at,
                        last_at=p.last_at,
                    )
                    for p in self.admission.recent()
                ]
            self._routes = views.routes_view(snap, ctx)
        else:
            self._planned = views.planned_status([], ctx)
            self._peers = self._routes = None
        self._status = views.status_view(snap, ctx, uptime_s=0.0, snapshot_age_s=None)
        self._metrics_view = views.metrics_view(snap, ctx, yggdrasil_up=self.last_ok)
        self._cache_gen = self.generation

    def context(self) -> views.MeshContext:
        self._refresh()
        assert self._ctx is not None
        return self._ctx

    def planned_status(self) -> list[views.PlannedPeerStatus]:
        self._refresh()
        return self._planned

    def mesh_peers(self) -> MeshPeers | None:
        self._refresh()
        return self._peers

    def mesh_routes(self) -> MeshRoutes | None:
        self._refresh()
        return self._routes

    def mesh_status(self) -> MeshStatus | None:
        self._refresh()
        if self.snapshot is None or self._status is None:
            return None
        return msgspec.structs.replace(
            self._status, uptime_s=round(self.uptime_s(), 3), snapshot_age_s=round(self.snapshot_age_s() or 0.0, 3)
        )

    def _metrics_view_now(self) -> MetricsView:
        self._refresh()
        return self._metrics_view

    def health(self) -> tuple[Health, int]:
        """The /health payload and its HTTP status; rebuilt only when state or the staleness verdict changes."""
        self._refresh()
        key = (self.generation, self.yggdrasil_ok(), self._monitor_ok())
        if key != self._health_key or self._health is None:
            checks = [self._yggdrasil_check(), self._monitor_check(), self._members_check()]
            if self.yggdrasil_ok():
                checks.append(views.peers_check(self._planned))
            else:
                # The last peer list describes a daemon that is gone or hung; do not present it as current.
                checks.append(HealthCheck(name="peers", ok=False, detail="unknown: the daemon is not answering"))
            health = views.health_view(
                node_id=self.settings.node_id,
                version=self.version,
                endpoint=self.settings.yggdrasil_admin,
                api_version=self.snapshot.api_version if self.snapshot else None,
                peers_up=sum(1 for p in self.snapshot.peers if p.up)
                if self.snapshot and self.yggdrasil_ok()
                else 0,
                checks=checks,
            )
            self._health = (health, 200 if health.status == "ok" else 503)
            self._health_key = key
        return self._health

    # --- health checks --------------------------------------------------------------------------------------

    def daemon_problem(self) -> str:
        """Why the daemon does not count as answering (see yggdrasil_ok): the latest call's error, or how long it
        has been silent. Not the error of a call that failed before a later one succeeded: that one is history."""
        age = self.snapshot_age_s()
        if not self.last_ok and self.last_error is not None:
            return f"{type(self.last_error).__name__}: {self.last_error}"
        if age is not None:
            return f"no answer from {self.settings.yggdrasil_admin} for {age:.1f} s (daemon hung?)"
        return f"no snapshot yet from {self.settings.yggdrasil_admin}"

    def _yggdrasil_check(self) -> HealthCheck:
        if self.yggdrasil_ok():
            assert self.snapshot is not None
            return HealthCheck(
                name="yggdrasil",
                ok=True,
                detail=f"{self.snapshot.api_version} daemon answering at {self.settings.yggdrasil_admin}",
            )
        parts = [self.daemon_problem()]
        if self.supervisor is not None:
            parts.append(self.supervisor.describe())
        return HealthCheck(name="yggdrasil", ok=False, detail="; ".join(parts))

    def _monitor_ok(self) -> bool:
        if not self.monitor_alive:
            return False
        if self.last_attempt_mono is None:
            # Still in the first pass: give it one admin timeout before calling the monitor stuck.
            return self.uptime_s() <= self.settings.admin_timeout + self.settings.stale_after
        limit = self.settings.admin_timeout + self.settings.stale_after
        return time.monotonic() - self.last_attempt_mono <= limit

    def _monitor_check(self) -> HealthCheck:
        if self._monitor_ok():
            return HealthCheck(
                name="monitor", ok=True, detail=f"refreshing every {self.settings.monitor_interval:g} s"
            )
        if not self.monitor_alive:
            return HealthCheck(name="monitor", ok=False, detail="monitor task is not running")
        return HealthCheck(name="monitor", ok=False, detail="monitor task has not completed a pass recently")

    def _members_check(self) -> HealthCheck:
        w = self.members
        if w.path is None:
            return HealthCheck(name="members", ok=True, detail="no members file (MESH_MEMBERS unset)")
        count = len(w.members.members)
        if w.error is not None:
            keep = f"; keeping the previous {count} members" if w.generation else ""
            return HealthCheck(name="members", ok=False, detail=f"{w.error}{keep}")
        if self.settings.node_id not in w.members.by_id:
            return HealthCheck(
                name="members", ok=False, detail=f"this node ({self.settings.node_id}) is not in {w.path}"
            )
        ctx = self.context()
        bad = [(n, why) for n in w.members.by_id if n != ctx.node_id and (why := ctx.not_dialled(n)) is not None]
        if bad:
            shown = "; ".join(f"{n}: {why}" for n, why in bad[:MEMBER_PROBLEMS_SHOWN])
            more = f"; and {len(bad) - MEMBER_PROBLEMS_SHOWN} more" if len(bad) > MEMBER_PROBLEMS_SHOWN else ""
            return HealthCheck(
                name="members",
                ok=False,
                detail=f"{len(bad)} of {count} members from {w.path} are never dialled: {shown}{more}",
            )
        return HealthCheck(name="members", ok=True, detail=f"{count} members from {w.path}")
