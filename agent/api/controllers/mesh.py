"""GET /mesh/status, /mesh/peers, /mesh/routes: served from the monitor's latest snapshot, never the daemon."""

from __future__ import annotations

from litestar import Controller, get
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec

from agent.api.errors import ServiceUnavailable
from agent.api.responses import JSONResponse, json_response
from agent.api.schemas import ErrorBody, MeshPeers, MeshRoutes, MeshStatus

_NO_SNAPSHOT = ResponseSpec(data_container=ErrorBody, description="The daemon has not been read successfully yet")


def _unavailable(state: State) -> ServiceUnavailable:
    agent = state.agent
    why = f": {type(agent.last_error).__name__}: {agent.last_error}" if agent.last_error is not None else ""
    return ServiceUnavailable(detail=f"no daemon snapshot yet{why}")


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
        view = state.agent.mesh_status()  # uptime and snapshot age change with every request: encoded each time
        if view is None:
            raise _unavailable(state)
        return json_response(view)

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
        view = state.agent.mesh_peers()
        if view is None:
            raise _unavailable(state)
        return state.responses.peers.response(view)

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
        view = state.agent.mesh_routes()
        if view is None:
            raise _unavailable(state)
        return state.responses.routes.response(view)
