"""GET /metrics: Prometheus text exposition of agent.metrics (contracts §5)."""

from __future__ import annotations

from litestar import Controller, Response, get

from agent.metrics import CONTENT_TYPE


class MetricsController(Controller):
    path = "/metrics"
    tags = ["metrics"]

    @get("", summary="Prometheus metrics (text format 0.0.4)", media_type=CONTENT_TYPE, sync_to_thread=False)
    def metrics(self) -> Response[bytes]:
        return Response(self.owner.state.agent.metrics.render(), media_type=CONTENT_TYPE)
