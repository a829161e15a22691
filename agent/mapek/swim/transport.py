"""SWIM over UDP: one datagram socket per agent, on the agent's own port (LISTEN_HOST:LISTEN_PORT, UDP).

Runs `agent.mapek.swim.protocol.Swim` on the agent's event loop: datagrams go in as they arrive, `tick` runs at
the protocol's next due time, and what either returns is sent at once. A datagram that does not decode, comes
from an address that is no member's, or names another member than the one it came from is counted and dropped.
Costs per agent are O(watched + rotation) messages per probe interval, whatever the mesh size.

`on_change` is called (on the loop) whenever a member's state changes, so MAPE-K can react between its ticks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterable
from typing import cast

import msgspec

from agent.mapek.knowledge import MemberView
from agent.mapek.swim.addresses import Addr, AddressBook
from agent.mapek.swim.protocol import (
    MAX_DATAGRAM,
    Change,
    ProbeResult,
    Send,
    Swim,
    SwimConfig,
    decode,
    encode,
)

log = logging.getLogger("x0.swim")


class SwimTransport(asyncio.DatagramProtocol):
    def __init__(
        self,
        node_id: str,
        host: str,
        port: int,
        config: SwimConfig | None = None,
        *,
        on_change: Callable[[list[Change]], None] | None = None,
    ) -> None:
        self.node_id = node_id
        self.host = host
        self.port = port
        self.swim = Swim(node_id, [], config, now=time.monotonic())
        self.book = AddressBook()
        self.on_change = on_change
        self.error: str | None = None  # why SWIM is not running (bind failed), for /mapek
        self.dropped: dict[str, int] = {"undecodable": 0, "unknown_sender": 0, "wrong_sender": 0, "unsendable": 0}
        self._transport: asyncio.DatagramTransport | None = None
        self._v6 = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._results: list[ProbeResult] = []

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def start(self) -> bool:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
            family, _, proto, _, addr = infos[0]
            sock = socket.socket(family, socket.SOCK_DGRAM, proto)
            try:
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind(addr)
            except BaseException:
                sock.close()
                raise
        except OSError as exc:
            self.error = f"cannot bind UDP {self.host}:{self.port}: {exc.strerror or exc}"
            log.error("SWIM membership off: %s", self.error)
            return False
        self._v6 = family == socket.AF_INET6
        self._transport, _ = await loop.create_datagram_endpoint(lambda: self, sock=sock)
        self._task = loop.create_task(self._run(), name="x0-swim")
        log.info("SWIM membership on UDP %s:%d", self.host, self.port)
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._transport is not None:
            self._transport.close()

    @property
    def running(self) -> bool:
        return self._transport is not None and self.error is None

    # --- configuration from the agent ---------------------------------------------------------------------

    def set_members(self, ids: Iterable[str], book: AddressBook) -> None:
        learned = self.book.learned()
        self.book = book
        for m, a in learned.items():
            if m in book.fallback:
                book.learn(m, a)
        self.swim.set_members(ids, time.monotonic())
        self.swim.underlay = book.has_underlay()
        self._wake.set()

    def set_watched(self, ids: Iterable[str]) -> None:
        self.swim.set_watched(ids, time.monotonic())
        self._wake.set()

    def set_daemon(self, up: bool | None, api: str | None) -> None:
        self.swim.daemon_up, self.swim.api = up, api

    def announce_drill(self, until_wall: float) -> None:
        self._send(self.swim.announce_drill(until_wall, time.monotonic()))
        self._wake.set()

    def pending_for(self, members: set[str]) -> bool:
        """A probe of one of `members` finished since MAPE-K last took the results."""
        return any(r.member in members for r in self.swim.pending_results())

    def take_results(self) -> list[ProbeResult]:
        """Finished probes since the last call, with `at` on the wall clock (MAPE-K's time)."""
        offset = time.time() - time.monotonic()
        out = [
            ProbeResult(r.member, r.path, r.ok, r.at + offset, r.rtt_s, r.error, r.daemon_up, r.api)
            for r in self.swim.take_results()
        ]
        return out

    def cut_off(self) -> bool:
        return self.swim.cut_off(time.monotonic())

    def view(self) -> dict[str, MemberView]:
        """Every member as this node sees it, times on the wall clock."""
        offset = time.time() - time.monotonic()
        return {
            m: MemberView(
                state=e.state,
                incarnation=e.inc,
                since=e.since + offset,
                by=e.by,
                drill_until=e.drill_until,
                last_ack=e.last_ack + offset if e.last_ack is not None else None,
                rtt_s=e.srtt_s,
            )
            for m, e in self.swim.members.items()
        }

    # --- I/O ----------------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[type-arg]
        try:
            message = decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.dropped["undecodable"] += 1
            return
        src: Addr = (addr[0], addr[1])
        who = self.book.sender(src)
        if who is None and self.book.learn(message.src, src):
            who = self.book.sender(src)
            log.info("learned %s's overlay address %s from its first datagram", message.src, src[0])
        if who is None:
            self.dropped["unknown_sender"] += 1
            return
        sender, path = who
        path = self.book.sender_path(sender, path)
        if message.src != sender:
            self.dropped["wrong_sender"] += 1
            return
        self._send(self.swim.receive(time.monotonic(), sender, path, message))
        self._after()

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like arrive here on Linux; the protocol's timeouts handle them.
        log.debug("SWIM socket: %s", exc)

    def _send(self, sends: list[Send]) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        for s in sends:
            addr = (self.book.mesh if s.path == "mesh" else self.book.underlay).get(s.to)
            if addr is None:
                self.dropped["unsendable"] += 1
                continue
            data = encode(s.message)
            if len(data) > MAX_DATAGRAM:
                log.warning("SWIM message to %s of %d bytes not sent", s.to, len(data))
                continue
            host = addr[0]
            if self._v6 and ":" not in host:
                host = "::ffff:" + host
            try:
                transport.sendto(data, (host, addr[1]))
            except OSError as exc:
                log.debug("SWIM send to %s: %s", s.to, exc)

    def _after(self) -> None:
        changes = self.swim.take_changes()
        if changes and self.on_change is not None:
            self.on_change(changes)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            now = time.monotonic()
            due = self.swim.next_due()
            if due > now:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(due - now):
                        await self._wake.wait()
                continue
            try:
                self._send(self.swim.tick(now))
            except Exception:
                log.exception("SWIM tick failed")
                await asyncio.sleep(0.1)
            self._after()
