"""The agent's HTTP server limits: what uvicorn alone does not bound (issue 11 item 3).

uvicorn closes a keep-alive connection idle after a response, but a connection that never completes a request
(silent, or sending its headers a byte at a time) stays open for ever, every one holding a file descriptor: 20,000
of them exhausted the agent's descriptors, the admin socket and MAPE-K failed with them, and asyncio logged every
failed accept. `HardenedHttpToolsProtocol` (uvicorn's httptools protocol plus these limits) adds:

- a connection cap: past `max_connections`, the oldest connections that have not completed their request
  headers (idle or slow) are evicted, so a fresh client is still served while a flood holds every slot; past
  twice the cap (every slot busy inside a request, or a burst faster than eviction) new ones get 503;
- a request deadline: a connection must complete its first request (headers and body) within `request_timeout`
  s of opening, and each later one within that time of its first byte, else it is closed (408 when a request had
  started); between requests uvicorn's keep-alive timeout closes an idle connection as before;
- limits on the URL and header sizes, answered 414 / 431 with the API's JSON error body, and every malformed
  request answered 400 with that body too (uvicorn sends text/plain);
- the descriptors it may use: `fd_budget` raises the soft RLIMIT_NOFILE to the hard limit and keeps
  `FD_RESERVE` descriptors out of the cap, for the admin socket, MAPE-K's probes, the daemon, logs and nft;
- memory back after a flood: once connections reached the cap and fell back to a few, the garbage is collected
  and the C heap's free pages returned to the system (glibc `malloc_trim`): thousands of connections' buffers
  otherwise stayed in the process, RSS 10-12 MB above its level before the floods (bench/http_floods.py).

`QuietServer` is uvicorn's server with a main loop that sleeps a second instead of 0.1 s (issue 10 item 1, idle
cost flat and small): ten wake-ups a second in every agent only to look at a flag; a signal wakes it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from collections import OrderedDict
from dataclasses import dataclass
from types import FrameType
from typing import Any, ClassVar

import msgspec
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from agent.memory import release_memory
from agent.mesh.schemas import ErrorBody

log = logging.getLogger("x0.http")

FD_RESERVE = 256  # descriptors HTTP connections may never take: admin socket, probes, daemon, logs, nft
EVICT_MIN_AGE_S = 0.05
# After a flood (connections at the cap), memory is given back once at most this many stay open, this long after.
RELEASE_BELOW = 8
RELEASE_DELAY_S = 1.0


@dataclass(frozen=True)
class ServerLimits:
    max_connections: int = 512
    request_timeout: float = 10.0
    # Idle keep-alive. Longer than uvicorn's 5 s: forwarding clients ask their voter every 5 s (agent.consensus),
    # and at 5 s each ask opened a new TCP connection over the overlay: ~11 packets through the daemons for a
    # request that takes ~4 on a kept connection (20-node mesh, nft counters on the TUNs).
    keep_alive: float = 15.0
    max_url_bytes: int = 8 * 1024
    max_header_bytes: int = 16 * 1024


@dataclass
class ServerCounters:
    """What the limits did, for the log and tests."""

    evicted: int = 0
    rejected: int = 0
    timed_out: int = 0
    refused_requests: int = 0
    peak: int = 0  # most connections open at once since memory was last released
    releases: int = 0


def fd_budget(requested: int) -> tuple[int, int]:
    """Raise the soft descriptor limit as far as allowed; returns (connection cap, soft limit). The cap leaves
    FD_RESERVE descriptors to everything else, so an HTTP flood cannot starve the admin socket or MAPE-K."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    # Up to twice the cap may be open for a moment (see HardenedHttpToolsProtocol.connection_made).
    return max(1, min(requested, (soft - FD_RESERVE) // 2)), soft


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; `send_400_response` answers with its status."""


def _error_response(status: int, reason: str, detail: str) -> bytes:
    body = msgspec.json.encode(ErrorBody(status_code=status, detail=detail))
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    ).encode("ascii") + body


class HardenedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above. Use `protocol_class(limits)` for a configured one."""

    limits: ClassVar[ServerLimits] = ServerLimits()
    counters: ClassVar[ServerCounters]
    # Connections that have not completed their current request's headers, oldest first: eviction candidates.
    waiting: ClassVar[OrderedDict[HardenedHttpToolsProtocol, None]]
    trim_pending: ClassVar[list[bool]]  # one flag per server (a list: shared, mutable, per class)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._refusal: tuple[int, str, str] | None = None
        self._in_request = False
        self._made = 0.0

    # --- connection ----------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= 2 * self.limits.max_connections:
            # Past twice the cap (the trim below cannot keep up): refuse outright.
            self.counters.rejected += 1
            transport.write(_error_response(503, "Service Unavailable", "too many connections; retry"))
            transport.close()
            return
        super().connection_made(transport)
        self.counters.peak = max(self.counters.peak, len(self.connections))
        self._made = self.loop.time()
        self._arm()
        if len(self.connections) > self.limits.max_connections:
            self._schedule_trim(0.0)

    # Eviction happens in a trim shortly after, not in connection_made: uvloop accepts every queued connection
    # in one go, and evicting there would drop a fresh client of the same batch before its request is read.
    # A connection younger than EVICT_MIN_AGE_S is never evicted: its first bytes have not been read yet.
    def _schedule_trim(self, delay: float) -> None:
        if not self.trim_pending[0]:
            self.trim_pending[0] = True
            self.loop.call_later(delay, self._trim)

    def _trim(self) -> None:
        self.trim_pending[0] = False
        now = self.loop.time()
        while len(self.connections) > self.limits.max_connections and self.waiting:
            oldest = next(iter(self.waiting))
            if now - oldest._made < EVICT_MIN_AGE_S:
                self._schedule_trim(EVICT_MIN_AGE_S - (now - oldest._made))
                return
            oldest._close("evicted")
            self.counters.evicted += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.transport is None:  # rejected in connection_made: never registered
            return
        super().connection_lost(exc)
        if self.counters.peak >= self.limits.max_connections and len(self.connections) <= RELEASE_BELOW:
            peak, self.counters.peak = self.counters.peak, 0  # once per flood
            self.loop.call_later(RELEASE_DELAY_S, self._release, peak)

    def _release(self, peak: int) -> None:
        if len(self.connections) > RELEASE_BELOW:
            self.counters.peak = max(self.counters.peak, peak)  # the flood is back: release after it
            return
        self.counters.releases += 1
        log.info("connection flood over (%d open at its peak): %s", peak, release_memory())

    def data_received(self, data: bytes) -> None:
        if self.parser is None:
            return
        super().data_received(data)

    def _arm(self) -> None:
        self.waiting[self] = None
        self._header_bytes = 0
        self._in_request = False
        self._deadline = self.loop.call_later(self.limits.request_timeout, self._timed_out)

    def _disarm(self) -> None:
        self.waiting.pop(self, None)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        self.counters.timed_out += 1
        if self._in_request and not self.transport.is_closing():
            detail = f"request not completed within {self.limits.request_timeout:g} s"
            self.transport.write(_error_response(408, "Request Timeout", detail))
        self._close("timed out")

    def _close(self, why: str) -> None:
        self._disarm()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # --- parser callbacks ----------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_request = True
        if self._deadline is None:  # a request on a kept-alive connection: its own deadline from its first byte
            self._header_bytes = 0
            self.waiting[self] = None
            self._deadline = self.loop.call_later(self.limits.request_timeout, self._timed_out)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_url_bytes:
            self._refuse(414, "URI Too Long", f"URL longer than {self.limits.max_url_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.limits.max_header_bytes:
            self._refuse(
                431, "Request Header Fields Too Large", f"headers over {self.limits.max_header_bytes} bytes"
            )
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        # Busy from here: a connection inside a request is never evicted (its deadline still runs until the body
        # is complete).
        self.waiting.pop(self, None)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._in_request = False
        super().on_message_complete()

    def _refuse(self, status: int, reason: str, detail: str) -> None:
        self._refusal = (status, reason, detail)
        raise _Refused(detail)

    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this for any parser error, including the _Refused raised by our callbacks.
        status, reason, detail = self._refusal or (400, "Bad Request", f"malformed HTTP request ({msg})")
        self.counters.refused_requests += 1
        self._disarm()
        if not self.transport.is_closing():
            self.transport.write(_error_response(status, reason, detail))
            self.transport.close()


def protocol_class(limits: ServerLimits) -> type[HardenedHttpToolsProtocol]:
    """A protocol class for one server: its own limits, counters and eviction queue."""
    return type(
        "AgentHttpProtocol",
        (HardenedHttpToolsProtocol,),
        {"limits": limits, "counters": ServerCounters(), "waiting": OrderedDict(), "trim_pending": [False]},
    )


class QuietServer(uvicorn.Server):
    """uvicorn.Server whose main loop waits for an exit signal, waking once a second to refresh the Date header
    (uvicorn's `on_tick` does that when its counter is a multiple of 10) instead of every 0.1 s."""

    _wake: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    async def main_loop(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 10) % 864000
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._wake.wait()
            should_exit = await self.on_tick(counter)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._loop is not None and self._wake is not None:
            # A signal handler runs between two bytecodes of the loop's thread: wake the loop through its pipe.
            self._loop.call_soon_threadsafe(self._wake.set)
