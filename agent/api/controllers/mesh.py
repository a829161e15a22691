"""GET /mesh/status, /mesh/peers, /mesh/routes: served from the monitor's latest snapshot, never the daemon."""

from __future__ import annotations

from litestar import Controller, get
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec

from agent.api.errors import ServiceUnavailable
from agent.api.schemas import ErrorBody, MeshPeers, MeshRoutes, MeshStatus

_NO_SNAPSHOT = {
    503: ResponseSpec(data_container=ErrorBody, description="The daemon has not been read successfully yet")
}


def _unavailable(state: State) -> ServiceUnavailable:
    agent = state.agent
    why = f": {type(agent.last_error).__name__}: {agent.last_error}" if agent.last_error is not None else ""
    return ServiceUnavailable(detail=f"no daemon snapshot yet{why}")


class MeshController(Controller):
    path = "/mesh"
    tags = ["mesh"]

    @get("/status", summary="This node and its mesh at a glance", responses=_NO_SNAPSHOT, sync_to_thread=False)
    def status(self, state: State) -> MeshStatus:
        view = state.agent.mesh_status()
        if view is None:
            raise _unavailable(state)
        return view

    @get(
        "/peers",
        summary="Peer links, and planned peers without a link (`missing`)",
        responses=_NO_SNAPSHOT,
        sync_to_thread=False,
    )
    def peers(self, state: State) -> MeshPeers:
        view = state.agent.mesh_peers()
        if view is None:
            raise _unavailable(state)
        return view

    @get(
        "/routes",
        summary="Routing view (DHT or tree, paths, sessions) with member ids and next hops",
        responses=_NO_SNAPSHOT,
        sync_to_thread=False,
    )
    def routes(self, state: State) -> MeshRoutes:
        view = state.agent.mesh_routes()
        if view is None:
            raise _unavailable(state)
        return view
