"""Async client for a Yggdrasil daemon's admin socket (0.4.x and 0.5.x APIs).

Protocol facts (shared/reference/yggdrasil.md §1): one JSON object per request, replies pretty-printed over several
lines (so we decode a stream, not lines), the server closes after each reply unless the request says
`"keepalive": true`. We always ask for keepalive and close the socket ourselves.

Every public call has one deadline (`timeout` seconds, connect included) and raises only the errors in
`agent.yggdrasil.errors`:
- `AdminUnavailable`: no socket file, connection refused (stale socket), reset;
- `AdminTimeout`: no complete reply before the deadline (hung daemon, never-ending reply);
- `AdminProtocolError`: garbage, early close, wrong envelope, reply that does not normalize;
- `AdminCommandError`: the daemon answered `status: error`.

Usage:
    client = AdminClient("unix:///var/run/yggdrasil/yggdrasil.sock")
    snap = await client.snapshot()              # one connection, self + peers + routes
    async with client.session() as s:           # several calls on one keepalive connection
        await s.remove_peer(uri)
        await s.add_peer(uri)
"""

from __future__ import annotations

import asyncio
import codecs
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

from agent.yggdrasil import normalize
from agent.yggdrasil.errors import (
    AdminCommandError,
    AdminError,
    AdminProtocolError,
    AdminTimeout,
    AdminUnavailable,
)
from agent.yggdrasil.models import ApiVersion, DaemonSnapshot, PeerLink, RouteEntry, SelfInfo

DEFAULT_TIMEOUT = 2.0
# A 0.4/0.5 reply for a large mesh is tens of KiB; anything this big is not a daemon talking.
MAX_REPLY_BYTES = 8 * 1024 * 1024
_READ_CHUNK = 65536
_DECODER = json.JSONDecoder()
# Characters that cannot appear inside a truncated JSON token (see _is_truncated).
_STRUCTURAL = set('{}[],:"') | set(" \t\r\n")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A parsed AdminListen value: a UNIX socket path (abstract ones start with NUL) or a TCP host and port."""

    raw: str
    kind: Literal["unix", "tcp"]
    path: str = ""
    host: str = ""
    port: int = 0


def parse_endpoint(endpoint: str) -> Endpoint:
    """Parse `unix:///path`, `unix://@abstract`, `tcp://host:port` or bare `host:port` (as the daemon does)."""
    value = endpoint.strip()
    if value.lower() in ("", "none"):
        raise ValueError(f"admin endpoint {endpoint!r}: the admin socket is disabled (AdminListen none/empty)")
    scheme, sep, rest = value.partition("://")
    if not sep:
        return _tcp(endpoint, value)
    scheme = scheme.lower()
    if scheme == "unix":
        # The daemon takes everything after "unix://" as the path (admin.go listen()).
        if not rest:
            raise ValueError(f"admin endpoint {endpoint!r}: unix:// needs a socket path")
        return Endpoint(raw=endpoint, kind="unix", path="\0" + rest[1:] if rest.startswith("@") else rest)
    if scheme == "tcp":
        return _tcp(endpoint, rest.rstrip("/"))
    raise ValueError(
        f"admin endpoint {endpoint!r}: unknown scheme {scheme!r} (expected unix://, tcp:// or host:port)"
    )


def _tcp(endpoint: str, hostport: str) -> Endpoint:
    host, sep, port_text = hostport.rpartition(":")
    if not sep or not host:
        raise ValueError(f"admin endpoint {endpoint!r}: expected host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"admin endpoint {endpoint!r}: port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"admin endpoint {endpoint!r}: port {port} out of range 1-65535")
    return Endpoint(raw=endpoint, kind="tcp", host=host, port=port)


def _is_truncated(text: str, err: json.JSONDecodeError) -> bool:
    """True when `text` can still become valid JSON with more bytes, False when it is already garbage.

    For a valid prefix the decoder fails either inside a string ("Unterminated string") or on the one token cut
    at the end of the buffer, so everything after the error position is a single partial token (no structural
    character or whitespace in it). Garbage fails earlier, with structure still to come.
    """
    if err.msg.startswith("Unterminated string"):
        return True
    return not any(ch in _STRUCTURAL for ch in text[err.pos :])


class _Connection:
    """One open admin socket with its stream-decoding buffer. Not safe for concurrent use (the session locks)."""

    def __init__(self, endpoint: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._endpoint = endpoint
        self._reader = reader
        self._writer = writer
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._text = ""

    async def request(self, name: str, arguments: dict[str, str] | None) -> Any:
        message: dict[str, Any] = {"request": name, "keepalive": True}
        if arguments:
            message["arguments"] = arguments
        try:
            self._writer.write(json.dumps(message).encode())
            await self._writer.drain()
        except OSError as exc:
            raise AdminUnavailable(self._endpoint, f"connection lost while sending {name}: {exc}") from exc
        return _unwrap(self._endpoint, name, await self._read_value(name))

    async def _read_value(self, name: str) -> Any:
        received = 0
        while True:
            text = self._text.lstrip()
            if text:
                if text[0] != "{":
                    raise AdminProtocolError(self._endpoint, f"{name}: reply is not a JSON object: {text[:60]!r}")
                try:
                    value, end = _DECODER.raw_decode(text)
                except json.JSONDecodeError as exc:
                    if not _is_truncated(text, exc):
                        raise AdminProtocolError(
                            self._endpoint, f"{name}: reply is not valid JSON ({exc.msg} at {exc.pos})"
                        ) from None
                else:
                    self._text = text[end:]
                    return value
            try:
                chunk = await self._reader.read(_READ_CHUNK)
            except OSError as exc:
                raise AdminUnavailable(self._endpoint, f"connection lost while reading {name}: {exc}") from exc
            if not chunk:
                got = f"after {received} bytes of an incomplete reply" if received else "before replying"
                raise AdminProtocolError(self._endpoint, f"{name}: daemon closed the connection {got}")
            received += len(chunk)
            if received > MAX_REPLY_BYTES:
                raise AdminProtocolError(self._endpoint, f"{name}: reply larger than {MAX_REPLY_BYTES} bytes")
            try:
                self._text = text + self._utf8.decode(chunk)
            except UnicodeDecodeError as exc:
                raise AdminProtocolError(self._endpoint, f"{name}: reply is not UTF-8: {exc.reason}") from None

    def close(self) -> None:
        try:
            self._writer.close()
        except (OSError, RuntimeError):  # already closed, or loop shutting down
            pass


def _unwrap(endpoint: str, name: str, reply: Any) -> Any:
    if not isinstance(reply, dict) or not isinstance(reply.get("status"), str):
        raise AdminProtocolError(endpoint, f"{name}: reply has no admin envelope (status/response)")
    status = reply["status"]
    if status == "error":
        error = reply.get("error")
        raise AdminCommandError(endpoint, name, error if isinstance(error, str) and error else "unspecified error")
    if status != "success" or "response" not in reply:
        raise AdminProtocolError(endpoint, f"{name}: unexpected envelope status={status!r}")
    return reply["response"]


class AdminSession:
    """Several calls over one keepalive connection. Get one from `AdminClient.session()`.

    The connection opens lazily on the first call (inside that call's deadline). After a transport failure
    (timeout, garbage, reset) it is dropped, since its stream state is unknown; the next call reconnects.
    A `status: error` reply leaves it open. Calls from concurrent tasks are serialized.
    """

    def __init__(self, client: AdminClient) -> None:
        self._client = client
        self._conn: _Connection | None = None
        self._lock = asyncio.Lock()

    @property
    def endpoint(self) -> str:
        return self._client.endpoint

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + self._client.timeout

    async def _request(self, name: str, arguments: dict[str, str] | None, deadline: float) -> Any:
        endpoint = self._client.endpoint
        try:
            async with asyncio.timeout_at(deadline):
                await self._lock.acquire()
        except TimeoutError:
            raise AdminTimeout(endpoint, f"{name}: another call on this session did not finish in time") from None
        try:
            async with asyncio.timeout_at(deadline):
                if self._conn is None:
                    self._conn = await self._client._connect()
                return await self._conn.request(name, arguments)
        except AdminCommandError:
            raise
        except TimeoutError:
            self._drop()
            raise AdminTimeout(endpoint, f"{name}: no complete reply within {self._client.timeout:g} s") from None
        except AdminError:
            self._drop()
            raise
        except BaseException:
            # Cancelled mid-request: the stream may hold half a reply, so it cannot be reused.
            self._drop()
            raise
        finally:
            self._lock.release()

    def _convert(self, name: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except (ValueError, TypeError, KeyError) as exc:
            # A reply of the wrong shape may mean the daemon was replaced by another version: re-detect.
            self._client._forget_version()
            raise AdminProtocolError(self.endpoint, f"{name}: malformed reply: {exc}") from exc

    def _drop(self) -> None:
        self._client._forget_version()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- commands -------------------------------------------------------------------------------------------

    async def call(self, name: str, arguments: dict[str, str] | None = None) -> Any:
        """Send any admin command; returns the raw `response` payload. Arguments must be strings (as
        yggdrasilctl sends them: the daemon's Go structs reject other types). Remote calls (`getNodeInfo`,
        `debug_remote*`) can block 6 s in the daemon: use a client with a timeout above that for them."""
        return await self._request(name, arguments, self._deadline())

    async def list_commands(self) -> list[str]:
        return sorted(await self._commands(self._deadline()))

    async def _commands(self, deadline: float) -> set[str]:
        response = await self._request("list", None, deadline)
        return self._convert("list", normalize.command_names, response)

    async def detect_version(self) -> ApiVersion:
        return await self._version(self._deadline())

    async def _version(self, deadline: float) -> ApiVersion:
        cached = self._client._api_version
        if cached is not None:
            return cached
        names = await self._commands(deadline)
        version: ApiVersion = self._convert("list", normalize.version_from_commands, names)
        self._client._api_version = version
        return version

    async def get_self(self) -> SelfInfo:
        return await self._self(self._deadline())

    async def _self(self, deadline: float) -> SelfInfo:
        response = await self._request("getSelf", None, deadline)
        return self._convert("getSelf", normalize.self_info, response)

    async def get_peers(self) -> list[PeerLink]:
        return await self._peers(self._deadline())

    async def _peers(self, deadline: float) -> list[PeerLink]:
        version = await self._version(deadline)
        response = await self._request("getPeers", None, deadline)
        return self._convert("getPeers", normalize.peers, response, version)

    async def get_dht(self) -> list[RouteEntry]:
        """0.4 only; a 0.5 daemon answers AdminCommandError (unknown action)."""
        response = await self._request("getDHT", None, self._deadline())
        return self._convert("getDHT", normalize.dht, response)

    async def get_tree(self) -> list[RouteEntry]:
        """0.5 only; a 0.4 daemon answers AdminCommandError (unknown action)."""
        response = await self._request("getTree", None, self._deadline())
        return self._convert("getTree", normalize.tree, response)

    async def get_paths(self) -> list[RouteEntry]:
        deadline = self._deadline()
        version = await self._version(deadline)
        response = await self._request("getPaths", None, deadline)
        return self._convert("getPaths", normalize.paths, response, version)

    async def get_sessions(self) -> list[RouteEntry]:
        response = await self._request("getSessions", None, self._deadline())
        return self._convert("getSessions", normalize.sessions, response)

    async def _routes(self, deadline: float, self_key: str) -> list[RouteEntry]:
        """DHT (0.4) or tree (0.5) entries, then paths, then sessions, without this node itself (a 0.4 DHT
        lists the node on port 0; the 0.5 tree lists it too): a route is to somewhere else."""
        version = await self._version(deadline)
        table = "getDHT" if version == "0.4" else "getTree"
        routes: list[RouteEntry] = self._convert(
            table,
            normalize.dht if version == "0.4" else normalize.tree,
            await self._request(table, None, deadline),
        )
        routes += self._convert(
            "getPaths", normalize.paths, await self._request("getPaths", None, deadline), version
        )
        routes += self._convert(
            "getSessions", normalize.sessions, await self._request("getSessions", None, deadline)
        )
        return [r for r in routes if r.key != self_key]

    async def add_peer(self, uri: str, interface: str | None = None) -> None:
        await self._request("addPeer", _peer_args(uri, interface), self._deadline())

    async def remove_peer(self, uri: str, interface: str | None = None) -> None:
        await self._request("removePeer", _peer_args(uri, interface), self._deadline())

    async def snapshot(self) -> DaemonSnapshot:
        """Self, peers and the routing view, all under ONE deadline (this is the monitor's per-tick call)."""
        deadline = self._deadline()
        version = await self._version(deadline)
        self_info = await self._self(deadline)
        peers = await self._peers(deadline)
        routes = await self._routes(deadline, self_info.key)
        return DaemonSnapshot(
            api_version=version, self_info=self_info, peers=peers, routes=routes, taken_at=time.time()
        )


def _peer_args(uri: str, interface: str | None) -> dict[str, str]:
    if not uri:
        raise ValueError("peer uri is empty")
    args = {"uri": uri}
    if interface:
        args["interface"] = interface
    return args


class AdminClient:
    """Admin-socket client for one daemon. Cheap to create; holds no connection between calls.

    Each method below opens a connection, runs under one `timeout` deadline (connect included) and closes.
    Use `session()` to run several calls over one keepalive connection. The detected API version is cached
    here (shared by sessions) and forgotten after any transport failure, so a daemon replaced by another
    version is re-detected.
    """

    def __init__(self, endpoint: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        if not timeout > 0:
            raise ValueError(f"admin timeout must be > 0 s, got {timeout!r}")
        self._endpoint = parse_endpoint(endpoint)
        self.timeout = float(timeout)
        self._api_version: ApiVersion | None = None

    @property
    def endpoint(self) -> str:
        return self._endpoint.raw

    @property
    def api_version(self) -> ApiVersion | None:
        """The cached version from the last detection, or None."""
        return self._api_version

    def _forget_version(self) -> None:
        self._api_version = None

    async def _connect(self) -> _Connection:
        ep = self._endpoint
        try:
            if ep.kind == "unix":
                reader, writer = await asyncio.open_unix_connection(ep.path)
            else:
                reader, writer = await asyncio.open_connection(ep.host, ep.port)
        except TimeoutError:
            raise  # the session turns this into AdminTimeout
        except FileNotFoundError as exc:
            raise AdminUnavailable(ep.raw, f"no admin socket at {ep.path} (daemon not running?)") from exc
        except ConnectionRefusedError as exc:
            where = f"stale socket file {ep.path}" if ep.kind == "unix" else f"{ep.host}:{ep.port}"
            raise AdminUnavailable(ep.raw, f"connection refused ({where}: daemon not running?)") from exc
        except OSError as exc:
            raise AdminUnavailable(ep.raw, f"cannot connect: {exc.strerror or exc}") from exc
        return _Connection(ep.raw, reader, writer)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AdminSession]:
        """One keepalive connection for several calls; closed on exit."""
        session = AdminSession(self)
        try:
            yield session
        finally:
            session.close()

    async def call(self, name: str, arguments: dict[str, str] | None = None) -> Any:
        async with self.session() as s:
            return await s.call(name, arguments)

    async def list_commands(self) -> list[str]:
        async with self.session() as s:
            return await s.list_commands()

    async def detect_version(self) -> ApiVersion:
        async with self.session() as s:
            return await s.detect_version()

    async def get_self(self) -> SelfInfo:
        async with self.session() as s:
            return await s.get_self()

    async def get_peers(self) -> list[PeerLink]:
        async with self.session() as s:
            return await s.get_peers()

    async def get_dht(self) -> list[RouteEntry]:
        async with self.session() as s:
            return await s.get_dht()

    async def get_tree(self) -> list[RouteEntry]:
        async with self.session() as s:
            return await s.get_tree()

    async def get_paths(self) -> list[RouteEntry]:
        async with self.session() as s:
            return await s.get_paths()

    async def get_sessions(self) -> list[RouteEntry]:
        async with self.session() as s:
            return await s.get_sessions()

    async def add_peer(self, uri: str, interface: str | None = None) -> None:
        async with self.session() as s:
            await s.add_peer(uri, interface)

    async def remove_peer(self, uri: str, interface: str | None = None) -> None:
        async with self.session() as s:
            await s.remove_peer(uri, interface)

    async def snapshot(self) -> DaemonSnapshot:
        async with self.session() as s:
            return await s.snapshot()
