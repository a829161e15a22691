"""The x0-agent app factory: `create_app(settings) -> Litestar`.

Controllers and msgspec payloads live with their domain (agent/mesh, agent/mapek, agent/drills; none of them
imports this package, which keeps only the factory, shared error handling and the request timer), and a lifespan
that starts and stops the background work: daemon supervisor (when YGGDRASIL_CONFIG is set), monitor, peering,
and the extensions (MAPE-K, drills).

Extensions: an object with `route_handlers` (controllers/handlers it serves), `async start(agent)` and
`async stop()`; `start` gets the shared `AgentState` (see agent/state.py for what it offers) and runs after the
monitor, supervisor and peering have started; `stop` runs before they stop, in reverse order. Register one in
`default_extensions` below, or pass `extensions=[...]` to `create_app` (tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from litestar import Litestar
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.types import ControllerRouterHandler

from agent import __version__
from agent.admission import PeerAdmission
from agent.api.errors import EXCEPTION_HANDLERS
from agent.api.middleware import RequestTimer
from agent.api.strict import AllowHeader, mark_closed_objects, strict_body
from agent.consensus.extension import ConsensusExtension
from agent.drills.extension import DrillsExtension
from agent.mapek.loop import MapekLoop
from agent.mesh.controllers import HealthController, MeshController, MetricsController
from agent.mesh.responses import ResponseCache
from agent.monitor import Monitor
from agent.peering import Peering
from agent.settings import Settings
from agent.state import AgentState
from agent.supervisor import DaemonSupervisor, daemon_log_path

log = logging.getLogger("x0.agent")

# Request bodies on this API are small JSON documents (drills); anything larger is refused with 413.
MAX_BODY_BYTES = 64 * 1024


class AgentExtension(Protocol):
    """A part that adds routes and background work to the agent (agent.mapek, agent.drills)."""

    route_handlers: Sequence[ControllerRouterHandler]

    async def start(self, agent: AgentState) -> None: ...

    async def stop(self) -> None: ...


def default_extensions(settings: Settings) -> list[AgentExtension]:
    """The extensions a production agent runs. MAPE-K, consensus and drills register here (drills after
    consensus: they take the mesh-wide drill lease through it)."""
    return [MapekLoop(settings), ConsensusExtension(settings), DrillsExtension(settings)]


def _log_task_end(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("background task %s crashed", task.get_name(), exc_info=exc)


class _Background:
    """The lifespan's tasks, started in dependency order and stopped in reverse."""

    def __init__(self, agent: AgentState, extensions: Sequence[AgentExtension]) -> None:
        self.agent = agent
        self.extensions = extensions
        self.monitor = Monitor(agent)
        self.tasks: list[asyncio.Task[None]] = []
        self.started: list[AgentExtension] = []

    def _spawn(self, coro: object, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)  # type: ignore[arg-type]
        task.add_done_callback(_log_task_end)
        self.tasks.append(task)

    async def start(self) -> None:
        agent, settings = self.agent, self.agent.settings
        # The members file once, here, before anything that reads it starts (Raft binds its own member's address);
        # later re-reads happen in the monitor, off the event loop.
        if agent.members.check():
            agent.record_members_change()
        agent.peering = Peering(agent)
        agent.request_snapshot = self.monitor.refresh_now
        enforce = settings.yggdrasil_config is not None and settings.peer_admission
        agent.admission = PeerAdmission(
            agent,
            log_path=settings.daemon_log
            or (daemon_log_path(settings.yggdrasil_config) if settings.yggdrasil_config is not None else None),
            config_path=settings.yggdrasil_config if enforce else None,
            keys_file=settings.admission_file if settings.peer_admission else None,
        )
        # Before the daemon's first start: it never runs open while the members' keys are known.
        await asyncio.to_thread(agent.admission.sync_config)
        if settings.yggdrasil_config is not None:

            def on_daemon_change() -> None:
                agent.notify()
                self.monitor.poke()

            agent.supervisor = DaemonSupervisor(
                settings.yggdrasil_config,
                binary=settings.yggdrasil_bin,
                admin_endpoint=settings.yggdrasil_admin,
                restart_delay=settings.daemon_restart_delay,
                on_change=on_daemon_change,
            )
            self._spawn(agent.supervisor.run(), "x0-supervisor")
        self._spawn(self.monitor.run(), "x0-monitor")
        self._spawn(agent.peering.run(), "x0-peering")
        self._spawn(agent.admission.run(), "x0-admission")
        for ext in self.extensions:
            await ext.start(agent)
            self.started.append(ext)

    async def stop(self) -> None:
        for ext in reversed(self.started):
            try:
                await ext.stop()
            except Exception:
                log.exception("stopping extension %s failed", type(ext).__name__)
        # The daemon first, gracefully (SIGTERM; its loop then ends by itself): cancelling the supervisor task
        # first would make it SIGKILL the daemon as if the agent had crashed.
        if self.agent.supervisor is not None:
            await self.agent.supervisor.close()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def create_app(
    settings: Settings,
    *,
    extensions: Sequence[AgentExtension] | None = None,
    background: bool = True,
    agent: AgentState | None = None,
) -> Litestar:
    """Build the agent app. `background=False` serves the state without starting any task (tests that drive
    `AgentState` themselves)."""
    agent = agent or AgentState(settings)
    exts = list(default_extensions(settings) if extensions is None else extensions)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if not background:
            yield
            return
        bg = _Background(agent, exts)
        try:
            await bg.start()
            yield
        finally:
            await bg.stop()

    handlers: list[ControllerRouterHandler] = [HealthController, MeshController, MetricsController]
    for ext in exts:
        handlers.extend(ext.route_handlers)
    app = Litestar(
        route_handlers=handlers,
        state=State({"agent": agent, "responses": ResponseCache()}),
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=OpenAPIConfig(
            title="x0-agent",
            version=__version__,
            description="Per-node agent of an x0tta6bl4 Yggdrasil mesh (docs/contracts.md §3).",
            path="/schema",
            render_plugins=[SwaggerRenderPlugin()],
        ),
        request_max_body_size=MAX_BODY_BYTES,
        logging_config=None,
        debug=False,
        before_request=strict_body,
    )
    mark_closed_objects(app)
    # Outermost wrapper, so 404/405 answers are timed too (see agent.api.middleware).
    app.asgi_handler = RequestTimer(AllowHeader(app.asgi_handler, app), agent.metrics)
    return app
