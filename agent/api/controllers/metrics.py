"""GET /metrics: Prometheus text exposition of agent.metrics (contracts §5)."""

from __future__ import annotations

from litestar import Controller, Response, get
from litestar.datastructures import State

from agent.metrics import CONTENT_TYPE


class MetricsController(Controller):
    path = "/metrics"
    tags = ["metrics"]

    @get("", summary="Prometheus metrics (text format 0.0.4)", media_type=CONTENT_TYPE, sync_to_thread=False)
    def metrics(self, state: State) -> Response[bytes]:
        return Response(state.agent.metrics.render(), media_type=CONTENT_TYPE)
