"""Supervised reader of Nomad's event stream (GET /v1/event/stream, NDJSON).

Why not python-nomad's `get_stream()` thread: when Nomad is unreachable its request raises inside the thread, the
`except ConnectionError` there never matches (python-nomad wraps it), and the thread dies with a traceback on
stderr (which would tear a Textual screen); when the server closes the stream it reconnects with the *same*
index, replaying events (reference/nomad.md §2.4). Here one daemon thread owns the connection: it resumes from
the last index it saw, drops frames it already had, treats 45 s without even a heartbeat as a dead connection,
and backs off between failed attempts. The provider polls on its own whenever `live` is False.

Events are only invalidations: `on_change(frame)` tells the provider to re-read Nomad now instead of waiting.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import requests

from dashboard.nomad.backoff import Backoff
from dashboard.nomad.client import NomadClient
from dashboard.nomad.errors import NomadError, classify
from dashboard.nomad.view import field


class EventStream:
    def __init__(
        self,
        client: NomadClient,
        topics: list[str],
        on_change: Callable[[dict[str, Any]], None],
        *,
        backoff: Backoff | None = None,
    ) -> None:
        self._client = client
        self._topics = topics
        self._on_change = on_change
        self._backoff = backoff or Backoff(1.0, 30.0)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._resp: requests.Response | None = None
        self._thread: threading.Thread | None = None
        self.last_index = 0
        self.live = False
        self.connects = 0  # successful subscriptions (1 + reconnects)
        self.frames = 0
        self.duplicates = 0  # frames at or below last_index (a replay after reconnect)
        self.last_error: NomadError | None = None

    @property
    def state(self) -> str:
        if self.live:
            return f"live (index {self.last_index})"
        if self.last_error is not None:
            return f"down: {self.last_error.message}; retry in {self._backoff.delay:.0f} s"
        return "connecting"

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="x0dash-nomad-events", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        with self._lock:
            resp = self._resp
        if resp is not None:
            _interrupt(resp)
        if self._thread is not None:
            self._thread.join(timeout)
        self.live = False

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._consume_once()
                # The server ended the stream cleanly (agent restart, leader change): reconnect at once.
                self._backoff.reset()
            except NomadError as exc:
                self.last_error = exc
            except Exception as exc:  # a broken stream mid-read: requests/urllib3 raise many types
                self.last_error = classify(exc, "event stream", address=self._client.settings.address)
            self.live = False
            if self._stop.is_set():
                return
            if self.last_error is not None:
                self._stop.wait(self._backoff.fail())

    def _consume_once(self) -> None:
        # Resume after the last frame seen; Nomad starts at the next available index if that one is gone.
        index = self.last_index + 1 if self.last_index else 0
        resp = self._client.open_event_stream(index=index, topics=self._topics)
        with self._lock:
            self._resp = resp
        try:
            for raw in resp.iter_lines():
                if self._stop.is_set():
                    return
                if not raw:
                    continue
                frame = json.loads(raw)
                if not self.live:
                    # The first line (Nomad sends a `{}` heartbeat at once) proves the subscription works.
                    self.live = True
                    self.connects += 1
                    self.last_error = None
                    self._backoff.reset()
                if not isinstance(frame, dict) or not frame:
                    continue  # heartbeat
                self._frame(frame)
        finally:
            with self._lock:
                self._resp = None
            resp.close()

    def _frame(self, frame: dict[str, Any]) -> None:
        index = field(frame, "Events.Index")
        if not isinstance(index, int):
            return
        if index <= self.last_index:
            self.duplicates += 1
            return
        self.last_index = index
        self.frames += 1
        self._on_change(frame)

    def wait_live(self, timeout: float) -> bool:
        """Test/diagnostic helper: wait until subscribed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.live:
                return True
            time.sleep(0.02)
        return self.live


def _interrupt(resp: requests.Response) -> None:
    """Wake the reader thread blocked in recv(): Response.close() from another thread waits for that read to end
    (up to the 45 s read timeout); shutting the socket down makes recv return at once."""
    conn = getattr(resp.raw, "_connection", None)
    sock = getattr(conn, "sock", None)
    if sock is None:
        fp = getattr(resp.raw, "_fp", None)
        sock = getattr(getattr(getattr(fp, "fp", None), "raw", None), "_sock", None)
    if isinstance(sock, socket.socket):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed
