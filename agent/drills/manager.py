"""Drill lifecycle on one node: apply a fault, revert it when its time is up, on DELETE, and on agent shutdown.

- One drill at a time per node (a second one gets 409 naming the active one).
- A fault is applied completely or not at all (one nft transaction; checks before anything is touched).
- Reverting does not depend on anyone watching: an asyncio timer in the agent, and for network faults also a
  detached watchdog process that deletes the drill's table at `ends_at` even if the agent was SIGKILLed. It only
  deletes a table carrying its own drill id, so it never removes a later drill.
- An agent that starts removes leftover drill/hold tables of an earlier agent (`cleanup_leftovers`).
- After a revert, it measures how long until the planned peers are all up again (x0_drill_recovery_seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shlex
import signal
import subprocess
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from agent.drills import faults
from agent.drills.faults import FaultUnavailable, Nft, NftError
from agent.drills.schemas import Drill, DrillKind, DrillList, DrillState
from agent.members import Members
from agent.metrics import AgentMetrics

log = logging.getLogger("x0.drills")

RECOVERY_WATCH_S = 120.0
RECOVERY_POLL_S = 0.1
PAST_KEPT = 50


class DrillConflict(Exception):
    """Another drill is active (API: 409)."""


class DrillNotFound(Exception):
    """No such drill id (API: 404)."""


class DrillUnavailable(Exception):
    """The mesh-wide drill lease cannot be taken now (no leader, no quorum; API: 503)."""


class DrillCoordinator(Protocol):
    """Mesh-wide drill lease and history (agent.consensus.drill_lease); absent when Raft is off."""

    async def begin(
        self,
        *,
        kind: str,
        node_id: str,
        duration_s: float,
        holder: str | None,
        lease_id: str | None,
        drill_id: str | None = None,
    ) -> str | None: ...

    async def abandon(self, lease_id: str) -> None: ...

    def finished(self, drill: Drill, lease_id: str | None, holder: str | None) -> None: ...


class DaemonHold(Protocol):
    """The supervisor's drill hooks (agent.supervisor.DaemonSupervisor)."""

    async def stop_for(self, duration: float, *, kill: bool = True) -> None: ...

    def start(self) -> None: ...


@dataclass
class _Running:
    drill: Drill
    timer: asyncio.Task[None] | None = None
    watchdog: subprocess.Popen[bytes] | None = None
    lease_id: str | None = None  # the mesh-wide lease this node took for the drill (released at the end)
    holder: str | None = None


def stop_watchdog(proc: subprocess.Popen[bytes]) -> None:
    """Kill a watchdog and everything it started: it leads its own session (`start_new_session`), so its process
    group is exactly its `sh` and the `sleep` under it. Killing only the `sh` left the `sleep` behind, up to
    600 s per drill (issue 11 item 4)."""
    if proc.poll() is None:  # still running: its group is still ours (the id cannot have been reused)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=1)


class DrillManager:
    def __init__(
        self,
        node_id: str,
        *,
        members: Callable[[], Members],
        supervisor: Callable[[], DaemonHold | None],
        metrics: AgentMetrics | None = None,
        planned_all_up: Callable[[], bool] | None = None,
        agent_port: int | None = None,
        nft: Nft | None = None,
        check_namespace: bool = True,
        notify: Callable[[], None] | None = None,
        coordinator: Callable[[], DrillCoordinator | None] | None = None,
        announce: Callable[[float], Awaitable[None]] | None = None,
        mark: Callable[[float], None] | None = None,
    ) -> None:
        self.node_id = node_id
        self._members = members
        self._supervisor = supervisor
        self.metrics = metrics
        self._planned_all_up = planned_all_up
        self.agent_port = agent_port
        self.nft = nft or Nft()
        self.check_namespace = check_namespace
        self._notify = notify or (lambda: None)
        self._coordinator = coordinator or (lambda: None)
        # Tell the mesh before faulting (MAPE-K's membership layer), and mark this node as drilling until then.
        self._announce = announce
        self._mark = mark or (lambda until: None)
        self._active: dict[str, _Running] = {}
        self.past: deque[Drill] = deque(maxlen=PAST_KEPT)
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()

    # --- queries --------------------------------------------------------------------------------------------

    def list(self) -> DrillList:
        return DrillList(
            active=[r.drill for r in self._active.values()],
            past=sorted(self.past, key=lambda d: d.started_at, reverse=True),
        )

    def get(self, drill_id: str) -> Drill:
        running = self._active.get(drill_id)
        if running is not None:
            return running.drill
        for d in self.past:
            if d.id == drill_id:
                return d
        raise DrillNotFound(f"no drill {drill_id!r} on {self.node_id}")

    # --- lifecycle ------------------------------------------------------------------------------------------

    def cleanup_leftovers(self) -> list[str]:
        """Remove drill/hold tables an earlier agent left behind (it was killed mid-drill). Never raises: an
        agent without nft or privileges simply has nothing of ours to clean."""
        try:
            removed = faults.remove_leftovers(self.nft)
        except (NftError, FaultUnavailable) as exc:
            log.debug("leftover check skipped: %s", exc)
            return []
        if removed:
            log.warning("removed leftover fault tables of an earlier agent: %s", ", ".join(removed))
        return removed

    async def start(
        self, kind: DrillKind, duration_s: float, *, holder: str | None = None, lease_id: str | None = None
    ) -> Drill:
        async with self._lock:
            if self._active:
                other = next(iter(self._active.values())).drill
                raise DrillConflict(
                    f"drill {other.id} ({other.kind}) is active on {self.node_id} until {other.ends_at:.0f}; "
                    f"DELETE /drills/{other.id} first"
                )
            now = time.time()
            drill = Drill(
                id=f"drl-{secrets.token_hex(4)}",
                kind=kind,
                node_id=self.node_id,
                duration_s=float(duration_s),
                started_at=now,
                ends_at=now + duration_s,
                reverted_at=None,
                state="active",
                detail="",
            )
            running = _Running(drill, holder=holder)
            coordinator = self._coordinator()
            if coordinator is not None:
                # Mesh-wide first: nothing is touched unless this drill holds the lease (409/503 otherwise).
                running.lease_id = await coordinator.begin(
                    kind=kind,
                    node_id=self.node_id,
                    duration_s=duration_s,
                    holder=holder,
                    lease_id=lease_id,
                    drill_id=drill.id,
                )
            self._mark(drill.ends_at)
            if self._announce is not None:
                try:
                    await self._announce(drill.ends_at)
                except Exception:  # the drill still runs; the mesh may then count its link drops as flapping
                    log.exception("drill %s: announcing it to the mesh failed", drill.id)
            try:
                if kind == "kill-daemon":
                    await self._start_kill(drill, duration_s)
                else:
                    running.watchdog = await self._start_net(drill, kind, duration_s)
            except BaseException:
                if coordinator is not None and running.lease_id is not None:
                    await coordinator.abandon(running.lease_id)
                self._mark(0.0)
                raise
            self._active[drill.id] = running
            running.timer = self._spawn(self._expire(drill.id, duration_s), f"x0-drill-{drill.id}")
            if self.metrics is not None:
                self.metrics.drill_active.labels(kind=kind).set(1)
            log.warning("drill %s: %s for %g s (%s)", drill.id, kind, duration_s, drill.detail)
            self._notify()
            return drill

    async def abort(self, drill_id: str) -> Drill:
        async with self._lock:
            if drill_id not in self._active:
                past = self.get(drill_id)  # raises DrillNotFound for an unknown id
                return past
            return await self._finish(drill_id, "aborted", "aborted by DELETE")

    async def shutdown(self) -> None:
        """Agent stopping: revert whatever is active and stop the timers."""
        async with self._lock:
            for drill_id in list(self._active):
                await self._finish(drill_id, "aborted", "agent shutting down")
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # --- faults ---------------------------------------------------------------------------------------------

    def _ports(self) -> list[int]:
        members = self._members()
        ports = faults.mesh_ports(m.listen_uri for m in members.members)
        if not ports:
            raise FaultUnavailable(
                "no mesh peering ports known: the members file lists no listen_uri, so there is nothing to cut"
            )
        if self.agent_port is not None and self.agent_port in ports:
            raise FaultUnavailable(
                f"the agent's HTTP port {self.agent_port} is also a mesh peering port: a drill would cut the API"
            )
        return ports

    async def _start_net(self, drill: Drill, kind: DrillKind, duration_s: float) -> subprocess.Popen[bytes] | None:
        missing = await asyncio.to_thread(
            faults.missing_for_net_faults, self.nft, check_namespace=self.check_namespace
        )
        if missing:
            raise FaultUnavailable(f"cannot run a {kind} drill on {self.node_id}: " + "; ".join(missing))
        ports = self._ports()
        note = f"x0 drill {drill.id} {kind} until {drill.ends_at:.0f}"
        try:
            await asyncio.to_thread(faults.apply_net_fault, self.nft, kind, ports, note)  # type: ignore[arg-type]
        except NftError as exc:
            # The transaction failed as a whole; make sure nothing of ours stayed behind anyway.
            with contextlib.suppress(NftError, FaultUnavailable):
                await asyncio.to_thread(faults.revert_net_fault, self.nft)
            raise FaultUnavailable(f"nft refused the {kind} rules: {exc}") from None
        verdict = "rejects" if kind == "partition" else "silently drops"
        drill.detail = (
            f"{verdict} mesh traffic on ports {', '.join(map(str, ports))} (table inet {faults.DRILL_TABLE})"
        )
        if kind == "partition":
            problem = await asyncio.to_thread(faults.kill_mesh_sockets, self.nft, ports)
            if problem:
                drill.detail += f"; open links not aborted ({problem}): they drop at their next packet"
        return self._watchdog(drill.id, duration_s)

    def _watchdog(self, drill_id: str, duration_s: float) -> subprocess.Popen[bytes] | None:
        """A detached `sleep; nft delete` that outlives a killed agent. Deletes only a table naming this drill."""
        try:
            lister = shlex.join(self.nft._argv(["list", "table", faults.FAMILY, faults.DRILL_TABLE]))
            deleter = shlex.join(self.nft._argv(["delete", "table", faults.FAMILY, faults.DRILL_TABLE]))
        except FaultUnavailable:
            return None
        script = (
            f"sleep {duration_s + 1:.1f}; "
            f"{lister} 2>/dev/null | grep -q {shlex.quote(drill_id)} && {deleter} 2>/dev/null; exit 0"
        )
        try:
            return subprocess.Popen(
                ["sh", "-c", script],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            log.warning("drill %s: no watchdog (%s); the agent's timer still reverts it", drill_id, exc)
            return None

    async def _start_kill(self, drill: Drill, duration_s: float) -> None:
        sup = self._supervisor()
        if sup is None:
            raise FaultUnavailable(
                f"cannot run a kill-daemon drill on {self.node_id}: the agent does not supervise the daemon "
                "(set YGGDRASIL_CONFIG so the agent runs it)"
            )
        await sup.stop_for(duration_s)
        drill.detail = f"daemon killed (SIGKILL) and held down for {duration_s:g} s"

    async def _revert(self, running: _Running) -> str | None:
        """Undo the fault; returns an error text when it could not."""
        drill = running.drill
        if running.watchdog is not None:
            stop_watchdog(running.watchdog)
        if drill.kind == "kill-daemon":
            sup = self._supervisor()
            if sup is not None:
                sup.start()
            return None
        try:
            await asyncio.to_thread(faults.revert_net_fault, self.nft)
        except (NftError, FaultUnavailable) as exc:
            return str(exc)
        return None

    async def _finish(self, drill_id: str, state: DrillState, why: str) -> Drill:
        running = self._active.pop(drill_id)
        if running.timer is not None and running.timer is not asyncio.current_task():
            running.timer.cancel()
        drill = running.drill
        error = await self._revert(running)
        drill.reverted_at = time.time()
        self._mark(drill.reverted_at)
        if error is not None:
            drill.state = "failed"
            drill.detail += f"; REVERT FAILED: {error}"
            log.error("drill %s: revert failed: %s", drill.id, error)
        else:
            drill.state = state
            drill.detail += f"; {why}"
        self.past.append(drill)
        coordinator = self._coordinator()
        if coordinator is not None:
            coordinator.finished(drill, running.lease_id, running.holder)
        if self.metrics is not None:
            self.metrics.drill_active.labels(kind=drill.kind).set(0)
            self.metrics.drills.labels(kind=drill.kind, outcome=drill.state).inc()
        log.warning("drill %s %s: %s", drill.id, drill.state, why)
        if error is None:
            self._spawn(self._watch_recovery(drill), f"x0-drill-recovery-{drill.id}")
        self._notify()
        return drill

    async def _expire(self, drill_id: str, duration_s: float) -> None:
        await asyncio.sleep(duration_s)
        async with self._lock:
            if drill_id in self._active:
                await self._finish(drill_id, "reverted", "reverted at the end of its duration")

    async def _watch_recovery(self, drill: Drill) -> None:
        if self._planned_all_up is None:
            return
        start = time.time()
        while time.time() - start < RECOVERY_WATCH_S:
            if self._planned_all_up():
                took = time.time() - (drill.reverted_at or start)
                drill.detail += f"; planned peers all up {took:.2f} s after the revert"
                if self.metrics is not None:
                    self.metrics.drill_recovery.labels(kind=drill.kind).set(took)
                self._notify()
                return
            await asyncio.sleep(RECOVERY_POLL_S)
        drill.detail += f"; planned peers still not all up {RECOVERY_WATCH_S:g} s after the revert"

    def _spawn(self, coro: object, name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
