"""The snapshot refresher: every X0_MONITOR_INTERVAL s, re-check the members file and take one daemon snapshot.

Handlers never talk to the daemon; they serve what this task stored in `AgentState`. Ticks run on a fixed
schedule (a slow pass does not shift the next ones). After a daemon (re)start the monitor polls every
`FAST_POLL_S` for a few seconds, so peering can add links as soon as the admin socket answers.
"""

from __future__ import annotations

import asyncio
import logging
import time

from agent.state import AgentState
from agent.yggdrasil.client import AdminClient
from agent.yggdrasil.errors import AdminError
from agent.yggdrasil.models import DaemonSnapshot

log = logging.getLogger("x0.monitor")

FAST_POLL_S = 0.1
FAST_WINDOW_S = 5.0
# getNodeInfo can block 6 s inside the daemon (reference §1.2) before it gives up on a lookup.
DISCOVERY_TIMEOUT_S = 7.0
DISCOVERY_RETRY_S = 10.0
DISCOVERY_CONCURRENCY = 2


class RouteDiscovery:
    """Members missing from the routing view get one `getNodeInfo` (at most every DISCOVERY_RETRY_S each).

    A 0.4 daemon's DHT lists only a few key-space neighbours, and paths/sessions appear only once traffic flows,
    so without this /mesh/routes would show a member only after someone talked to it. The lookup makes the daemon
    find a path and open a session; the next snapshot lists them. Runs beside the monitor, never delaying it.
    """

    def __init__(self, state: AgentState) -> None:
        self.state = state
        self.client = AdminClient(state.settings.yggdrasil_admin, timeout=DISCOVERY_TIMEOUT_S)
        self._last: dict[str, float] = {}
        self._running: set[asyncio.Task[None]] = set()

    def after_snapshot(self, snapshot: DaemonSnapshot) -> None:
        known = {r.key for r in snapshot.routes}
        ctx = self.state.context()
        now = time.monotonic()
        for member in ctx.members.members:
            if len(self._running) >= DISCOVERY_CONCURRENCY:
                return
            key = ctx.key_of(member.node_id)
            if not key or key == snapshot.self_info.key or key in known:
                continue
            if now - self._last.get(key, -DISCOVERY_RETRY_S) < DISCOVERY_RETRY_S:
                continue
            self._last[key] = now
            task = asyncio.get_running_loop().create_task(self._lookup(member.node_id, key))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _lookup(self, node_id: str, key: str) -> None:
        try:
            await self.client.call("getNodeInfo", {"key": key})
        except AdminError as exc:
            log.debug("route discovery of %s: %s", node_id, exc)

    def cancel(self) -> None:
        for task in list(self._running):
            task.cancel()


class Monitor:
    def __init__(self, state: AgentState) -> None:
        self.state = state
        self._poke = asyncio.Event()
        self._fast_until = time.monotonic() + FAST_WINDOW_S
        self.discovery = RouteDiscovery(state)

    def poke(self) -> None:
        """Take a snapshot now and poll fast for a while (the daemon was just started)."""
        self._fast_until = time.monotonic() + FAST_WINDOW_S
        self._poke.set()

    def refresh_now(self) -> None:
        """Take a snapshot now (someone needs one fresher than the interval gives); the interval runs from it."""
        self._poke.set()

    async def check_members(self) -> None:
        if await self.state.members.check_async():
            log.info("members file changed: %d members", len(self.state.members.members.members))
            self.state.record_members_change()
        elif self.state.members.error is not None and self.state.members.path is not None:
            log.debug("members file: %s", self.state.members.error)

    async def refresh(self) -> bool:
        """One pass; returns whether the daemon answered."""
        state = self.state
        started = time.perf_counter()
        try:
            snapshot = await state.admin.snapshot()
        except AdminError as exc:
            state.metrics.monitor_errors.labels(error=type(exc).__name__).inc()
            if state.last_ok or state.last_error is None or str(state.last_error) != str(exc):
                log.warning("daemon snapshot failed: %s: %s", type(exc).__name__, exc)
            state.record_error(exc)
            return False
        finally:
            state.metrics.monitor_refresh_duration.observe(time.perf_counter() - started)
        if not state.last_ok:
            log.info("daemon answering at %s (%s API)", state.settings.yggdrasil_admin, snapshot.api_version)
        supervisor = state.supervisor
        state.record_snapshot(snapshot, process_epoch=supervisor.epoch if supervisor else None)
        self.discovery.after_snapshot(snapshot)
        return True

    async def run(self) -> None:
        state = self.state
        interval = state.settings.monitor_interval
        state.monitor_alive = True
        try:
            while True:
                tick_start = time.monotonic()
                self._poke.clear()  # a poke arriving during this pass still wakes the next one early
                await self.check_members()
                ok = await self.refresh()
                now = time.monotonic()
                # Measured from the tick's start, so a slow pass does not push later ones back.
                wake = tick_start + interval
                if not ok and now < self._fast_until:
                    wake = min(wake, now + FAST_POLL_S)
                try:  # asyncio.timeout: wait_for can swallow a cancellation on 3.11 (see AgentState.wait_changed)
                    async with asyncio.timeout(max(0.0, wake - time.monotonic())):
                        await self._poke.wait()
                except TimeoutError:
                    pass
        finally:
            state.monitor_alive = False
            self.discovery.cancel()
