"""Pre-encoded JSON responses for the hot read endpoints (/health, /mesh/*).

`AgentState` hands back the same payload object until something changes (a new snapshot, a new health verdict),
so its response is encoded once and replayed. `JSONResponse` is a minimal ASGI app (Litestar sends what a handler
returns as-is when it is one): no per-request header building, which keeps these endpoints at least as cheap as a
minimal Litestar handler returning a constant (bench/agent_http.py). OpenAPI documents the payload types through
each handler's `responses=`.
"""

from __future__ import annotations

import msgspec
from litestar.types import Receive, Scope, Send

_encoder = msgspec.json.Encoder()
_CONTENT_TYPE = (b"content-type", b"application/json")


class JSONResponse:
    """An encoded JSON body with its status; stateless when sent, so one instance serves any number of requests."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, body: bytes, status: int = 200) -> None:
        self.body = body
        self.status = status
        self.headers = [_CONTENT_TYPE, (b"content-length", str(len(body)).encode())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body, "more_body": False})


def json_response(payload: msgspec.Struct, status: int = 200) -> JSONResponse:
    return JSONResponse(_encoder.encode(payload), status)


class CachedJSON:
    """The response for the last payload object seen; rebuilt when the object (or status) changes."""

    __slots__ = ("_payload", "_response", "_status")

    def __init__(self) -> None:
        self._payload: object = None
        self._status = 0
        self._response: JSONResponse | None = None

    def response(self, payload: msgspec.Struct, status: int = 200) -> JSONResponse:
        if self._response is None or payload is not self._payload or status != self._status:
            self._response = json_response(payload, status)
            self._payload, self._status = payload, status
        return self._response


class ResponseCache:
    """One per app (in `app.state.responses`)."""

    def __init__(self) -> None:
        self.health = CachedJSON()
        self.peers = CachedJSON()
        self.routes = CachedJSON()
