"""GET /health: 200 when every check passes, 503 naming the failing check."""

from __future__ import annotations

from litestar import Controller, get
from litestar.openapi.datastructures import ResponseSpec

from agent.api.responses import JSONResponse
from agent.api.schemas import Health


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
            200: ResponseSpec(data_container=Health, description="Every check passed"),
            503: ResponseSpec(
                data_container=Health, description="A check failed; `checks[].name`/`detail` say which and why"
            ),
        },
        sync_to_thread=False,
    )
    def health(self) -> JSONResponse:
        # `owner` is the app this controller is registered on; its state holds the agent (see agent.api.app).
        state = self.owner.state
        body, code = state.agent.health()
        return state.responses.health.response(body, code)
