"""Request duration histogram (`x0_http_request_duration_seconds`) by route template, method and status.

It wraps the app's whole ASGI handler rather than being a Litestar route middleware, because route middleware
only runs for matched routes: 404s and 405s (scanners, typos) must be counted too. Unmatched requests are labelled
route="unmatched" and unknown methods "other", so garbage cannot create unbounded label values.
"""

from __future__ import annotations

import time
from typing import Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from agent.metrics import AgentMetrics

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestTimer:
    def __init__(self, app: ASGIApp, metrics: AgentMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app dies before answering, the server sends a 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            s: Any = scope
            method = s.get("method", "")
            self.metrics.observe_http(
                s.get("path_template") or "unmatched",
                method if method in _METHODS else "other",
                status,
                time.perf_counter() - started,
            )
