"""Helpers shared by the yggdrasil test modules."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def short_tmp_dir() -> Iterator[Path]:
    """A unique directory directly under /tmp, removed afterwards. Short on purpose: AF_UNIX socket paths are
    limited to 108 bytes, and pytest's tmp_path (with long test names) can exceed that."""
    path = Path(tempfile.mkdtemp(prefix="x0t-ygg-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    """A free 127.0.0.1 TCP port (bind to 0; the tiny race before the daemon binds it is acceptable here)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A responder gets (request dict, writer) and writes whatever it wants; returning False closes the connection.
Responder = Callable[[dict[str, Any], asyncio.StreamWriter], Awaitable[bool | None]]


class FakeAdmin:
    """A unix-socket server speaking (or mis-speaking) the admin protocol."""

    def __init__(self, path: str, responder: Responder) -> None:
        self.path = path
        self.responder = responder
        self.connections = 0
        self.requests: list[dict[str, Any]] = []
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def endpoint(self) -> str:
        return f"unix://{self.path}"

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._handle, self.path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        decoder = json.JSONDecoder()
        buf = ""
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                buf += chunk.decode()
                while buf.strip():
                    try:
                        req, end = decoder.raw_decode(buf.lstrip())
                    except json.JSONDecodeError:
                        break
                    buf = buf.lstrip()[end:]
                    self.requests.append(req)
                    if await self.responder(req, writer) is False:
                        return
        except (asyncio.CancelledError, ConnectionError):
            pass
        finally:
            writer.close()
            self._handlers.discard(task)


def rogue_config(directory: Path, dial: str) -> tuple[Path, str]:
    """A daemon config with a fresh key, no listener and no TUN, dialling `dial`: a node that is not a member.
    Returns the config's path and the daemon's public key."""
    from agent.yggdrasil.daemon_config import build_config, write_config

    directory.mkdir(parents=True, exist_ok=True)
    conf = write_config(
        build_config(
            "rogue", admin_listen=f"unix://{directory}/admin.sock", listen=[], if_name="none", peers=[dial]
        ),
        directory / "rogue.conf",
    )
    return conf, json.loads(conf.read_text())["PublicKey"]
