"""The read API of a node: GET /health, /mesh/status, /mesh/peers, /mesh/routes and /metrics (contracts §3, §5).

Everything is served from the monitor's latest snapshot (agent.state), never from the daemon. Handlers read
`self.owner.state` (the app's state: agent and response cache), not injected parameters: these are the hottest
routes and need no per-request argument parsing.
"""

from __future__ import annotations

import msgspec
from litestar import Controller, Response, get
from litestar.datastructures import State
from litestar.exceptions import ServiceUnavailableException

from agent.mesh.responses import CachedJSON, JSONResponse, json_response
from agent.mesh.schemas import ErrorBody, Health, MeshPeers, MeshRoutes, MeshStatus
from agent.metrics import CONTENT_TYPE
from agent.openapi import response_spec


class HealthController(Controller):
    path = "/health"
    tags = ["health"]

    @get(
        "",
        summary="Agent and daemon health",
        description="Checks: `yggdrasil` (admin socket answering, reported within 2 s of the daemon dying), "
        "`monitor` (snapshot task alive), `members` (members file readable), `peers` (at least one planned "
        "peer up when the node has planned peers). 503 when any check fails.",
        responses={
            200: response_spec(data_container=Health, description="Every check passed"),
            503: response_spec(
                data_container=Health, description="A check failed; `checks[].name`/`detail` say which and why"
            ),
        },
        sync_to_thread=False,
    )
    def health(self) -> JSONResponse:
        # `owner` is the app this controller is registered on; its state holds the agent (agent.api.app).
        state = self.owner.state
        body, code = state.agent.health()
        return state.responses.health.response(body, code)


_NO_SNAPSHOT = response_spec(data_container=ErrorBody, description="The daemon has not been read successfully yet")


def _served(state: State, view: msgspec.Struct | None, cache: CachedJSON | None = None) -> JSONResponse:
    """The view as JSON (replayed from `cache` while unchanged), or 503 when no snapshot was ever taken."""
    if view is None:
        agent = state.agent
        why = f": {type(agent.last_error).__name__}: {agent.last_error}" if agent.last_error is not None else ""
        raise ServiceUnavailableException(detail=f"no daemon snapshot yet{why}")
    return cache.response(view) if cache is not None else json_response(view)


class MeshController(Controller):
    path = "/mesh"
    tags = ["mesh"]

    @get(
        "/status",
        summary="This node and its mesh at a glance",
        responses={
            200: response_spec(data_container=MeshStatus, description="Served from the latest snapshot"),
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
            200: response_spec(data_container=MeshPeers, description="Served from the latest snapshot"),
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
            200: response_spec(data_container=MeshRoutes, description="Served from the latest snapshot"),
            503: _NO_SNAPSHOT,
        },
        sync_to_thread=False,
    )
    def routes(self) -> JSONResponse:
        state = self.owner.state
        return _served(state, state.agent.mesh_routes(), state.responses.routes)


class MetricsController(Controller):
    path = "/metrics"
    tags = ["metrics"]

    @get("", summary="Prometheus metrics (text format 0.0.4)", media_type=CONTENT_TYPE, sync_to_thread=False)
    def metrics(self) -> Response[bytes]:
        return Response(self.owner.state.agent.metrics.render(), media_type=CONTENT_TYPE)
