"""A local HTTP server that answers like Nomad's HTTP API (command/agent/http.go, reference/nomad.md §1.2/§1.4).

python-nomad talks `requests`, which pytest-httpx cannot intercept, so the provider is tested over a real socket:
JSON bodies with `Content-Type: application/json` and X-Nomad-Index/KnownLeader/LastContact headers on reads,
plain-text error bodies with the real status codes, and /v1/event/stream as chunked NDJSON that starts with an
immediate `{}` heartbeat. Tests set routes, push event frames, and read back the requests python-nomad made.
"""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

CLOSE = object()  # pushed on the event queue: end the current stream


@dataclass
class Reply:
    body: Any = None  # JSON-encodable, or str for a plain-text body
    status: int = 200
    delay_s: float = 0.0
    index: int = 100


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeNomad:
    routes: dict[tuple[str, str], Reply] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)
    events: queue.Queue[Any] = field(default_factory=queue.Queue)
    stream_status: int = 200
    stream_body: str = ""
    streams_opened: int = 0
    # Called (in the server thread) with each request before it is answered: a test can play Nomad's side
    # effects there (stop a node's processes, change the routes the reply is taken from).
    on_request: Callable[[Seen], None] | None = None

    def __post_init__(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = Seen(
                    self.command,
                    parts.path,
                    parse_qs(parts.query, keep_blank_values=True),
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
                fake.requests.append(seen)
                if fake.on_request is not None:
                    fake.on_request(seen)
                if parts.path == "/v1/event/stream" and self.command == "GET":
                    self._stream()
                    return
                reply = fake.routes.get((self.command, parts.path))
                if reply is None:
                    # Nomad's mux answers unknown paths with a plain-text 404.
                    reply = Reply("404 page not found", status=404)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                self._send(reply)

            def _send(self, reply: Reply) -> None:
                if isinstance(reply.body, str):
                    data, ctype = reply.body.encode(), "text/plain; charset=utf-8"
                elif reply.body is None:
                    data, ctype = b"", "application/json"
                else:
                    data, ctype = json.dumps(reply.body).encode(), "application/json"
                self.send_response(reply.status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                if reply.status == 200 and self.command == "GET":
                    self.send_header("X-Nomad-Index", str(reply.index))
                    self.send_header("X-Nomad-KnownLeader", "true")
                    self.send_header("X-Nomad-LastContact", "0")
                self.end_headers()
                self.wfile.write(data)

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _stream(self) -> None:
                fake.streams_opened += 1
                if fake.stream_status != 200:
                    self._send(Reply(fake.stream_body or "Permission denied", status=fake.stream_status))
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    self._chunk(b"{}\n")  # JsonHeartbeat, sent at once on subscribe
                    while True:
                        try:
                            item = fake.events.get(timeout=0.1)
                        except queue.Empty:
                            if getattr(self.server, "closing", False):
                                return
                            continue
                        if item is CLOSE:
                            self.wfile.write(b"0\r\n\r\n")
                            self.close_connection = True
                            return
                        self._chunk(json.dumps(item, separators=(",", ":")).encode() + b"\n")
                except (BrokenPipeError, ConnectionResetError):
                    return

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # serve_forever checks for shutdown() every poll_interval: its default 0.5 s cost every test that used
        # the fake Nomad half a second at teardown (8 s of the suite).
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def set(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        status: int = 200,
        delay_s: float = 0.0,
        index: int = 100,
    ) -> None:
        self.routes[(method, path)] = Reply(body, status, delay_s, index)

    def seen(self, method: str, path: str) -> list[Seen]:
        return [r for r in self.requests if r.method == method and r.path == path]

    def close(self) -> None:
        self._server.closing = True  # type: ignore[attr-defined]
        self._server.shutdown()
        self._server.server_close()


def closed_port_url() -> str:
    """A loopback URL where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
