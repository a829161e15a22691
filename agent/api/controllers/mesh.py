"""GET /mesh/status, /mesh/peers, /mesh/routes: served from the monitor's latest snapshot, never the daemon."""

from __future__ import annotations

import msgspec
from litestar import Controller, get
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec

from agent.api.errors import ServiceUnavailable
from agent.api.responses import CachedJSON, JSONResponse, json_response
from agent.api.schemas import ErrorBody, MeshPeers, MeshRoutes, MeshStatus

_NO_SNAPSHOT = ResponseSpec(data_container=ErrorBody, description="The daemon has not been read successfully yet")


def _served(state: State, view: msgspec.Struct | None, cache: CachedJSON | None = None) -> JSONResponse:
    """The view as JSON (replayed from `cache` while unchanged), or 503 when no snapshot was ever taken."""
    if view is None:
        agent = state.agent
        why = f": {type(agent.last_error).__name__}: {agent.last_error}" if agent.last_error is not None else ""
        raise ServiceUnavailable(detail=f"no daemon snapshot yet{why}")
    return cache.response(view) if cache is not None else json_response(view)


class MeshController(Controller):
    """Handlers read `self.owner.state` (the app's state: agent and response cache), not injected parameters:
    these are the hottest routes and need no per-request argument parsing."""

    path = "/mesh"
    tags = ["mesh"]

    @get(
        "/status",
        summary="This node and its mesh at a glance",
        responses={
            200: ResponseSpec(data_container=MeshStatus, description="Served from the latest snapshot"),
            503: _NO_SNAPSHOT,
        },
        sync_to_thread=False,
    )
    def status(self) -> JSONResponse:
        state = self.owner.state
        # uptime and snapshot age change with every request: encoded each time, not cached
        return _served(state, state.agent.mesh_status())

    @get(
        "/peers",
        summary="Peer links, and planned peers without a link (`missing`)",
        responses={
            200: ResponseSpec(data_container=MeshPeers, description="Served from the latest snapshot"),
            503: _NO_SNAPSHOT,
        },
        sync_to_thread=False,
    )
    def peers(self) -> JSONResponse:
        state = self.owner.state
        return _served(state, state.agent.mesh_peers(), state.responses.peers)

    @get(
        "/routes",
        summary="Routing view (DHT or tree, paths, sessions) with member ids and next hops",
        responses={
            200: ResponseSpec(data_container=MeshRoutes, description="Served from the latest snapshot"),
            503: _NO_SNAPSHOT,
        },
        sync_to_thread=False,
    )
    def routes(self) -> JSONResponse:
        state = self.owner.state
        return _served(state, state.agent.mesh_routes(), state.responses.routes)
