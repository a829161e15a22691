"""TCP connect checks of peering ports, many at once, off the event loop: can our daemon dial that member now?

A full plan of a large members file keeps ~1,000 links down, and MAPE-K checks every one each tick. Done with
asyncio streams that took 0.3 ms of the event loop per port (socket, transport, protocol, futures): most of a
core at 1,000 ports, and the agent's /health waited behind it (issue 11 item 1, `just members-bench --topology
full`). Here each check is a non-blocking socket, a connect and a poll: a few microseconds of Python, in a worker
thread that sleeps in poll() (which releases the GIL) while the connects complete.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PortCheck:
    ok: bool
    at: float  # unix time the connect started
    rtt_s: float | None = None
    error: str | None = None


class PortProber:
    """Connects to each (host, port) with at most `in_flight` sockets open at once, each given `timeout` seconds.
    Blocking: call it in a worker thread. `peak` is the most sockets it ever held open at once."""

    def __init__(self, timeout: float, in_flight: int) -> None:
        self.timeout = timeout
        self.in_flight = max(1, in_flight)
        self.peak = 0

    def check(self, targets: Sequence[tuple[str, int]]) -> list[PortCheck]:
        results: list[PortCheck | None] = [None] * len(targets)
        poller = select.poll()
        open_: dict[int, tuple[int, socket.socket, float, float]] = {}  # fd -> (index, socket, wall, mono start)
        following = iter(range(len(targets)))
        exhausted = False
        try:
            while True:
                while not exhausted and len(open_) < self.in_flight:
                    k = next(following, None)
                    if k is None:
                        exhausted = True
                        break
                    started = self._start(k, targets[k], results, poller, open_)
                    if started:
                        self.peak = max(self.peak, len(open_))
                if not open_:
                    break
                now = time.monotonic()
                first_deadline = min(start + self.timeout for _, _, _, start in open_.values())
                wait_ms = max(0, int((first_deadline - now) * 1000) + 1)
                for fd, _ in poller.poll(wait_ms):
                    k, sock, wall, start = open_.pop(fd)
                    poller.unregister(fd)
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    results[k] = (
                        PortCheck(ok=True, at=wall, rtt_s=time.monotonic() - start)
                        if err == 0
                        else PortCheck(ok=False, at=wall, error=os.strerror(err))
                    )
                    sock.close()
                now = time.monotonic()
                for fd, (k, sock, wall, start) in list(open_.items()):
                    if now - start >= self.timeout:
                        del open_[fd]
                        poller.unregister(fd)
                        sock.close()
                        results[k] = PortCheck(ok=False, at=wall, error=f"no answer within {self.timeout:g} s")
        finally:
            for _, sock, _, _ in open_.values():
                sock.close()
        return [r if r is not None else PortCheck(ok=False, at=time.time(), error="not checked") for r in results]

    def _start(
        self,
        k: int,
        target: tuple[str, int],
        results: list[PortCheck | None],
        poller: select.poll,
        open_: dict[int, tuple[int, socket.socket, float, float]],
    ) -> bool:
        host, port = target
        wall = time.time()
        try:
            family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            results[k] = PortCheck(ok=False, at=wall, error=exc.strerror or str(exc))
            return False
        sock.setblocking(False)
        start = time.monotonic()
        err = sock.connect_ex(addr)
        if err == 0:  # loopback may connect at once
            results[k] = PortCheck(ok=True, at=wall, rtt_s=time.monotonic() - start)
            sock.close()
            return False
        if err not in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            results[k] = PortCheck(ok=False, at=wall, error=os.strerror(err))
            sock.close()
            return False
        open_[sock.fileno()] = (k, sock, wall, start)
        poller.register(sock.fileno(), select.POLLOUT)
        return True
