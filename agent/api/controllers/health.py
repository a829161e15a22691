"""GET /health: 200 when every check passes, 503 naming the failing check."""

from __future__ import annotations

from litestar import Controller, Response, get
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec

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
            503: ResponseSpec(
                data_container=Health,
                description="A check failed; `checks[].name`/`detail` say which and why",
            )
        },
        sync_to_thread=False,
    )
    def health(self, state: State) -> Response[Health]:
        body, code = state.agent.health()
        return Response(body, status_code=code)
