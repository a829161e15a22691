"""AdminClient against a fake admin socket written here: every way a daemon can misbehave maps to one typed
error within the timeout. Also replays the 0.5 fixtures, since no 0.5 daemon can be installed here."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import socket
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.yggdrasil.client import AdminClient, _is_truncated, parse_endpoint
from agent.yggdrasil.errors import (
    AdminCommandError,
    AdminError,
    AdminProtocolError,
    AdminTimeout,
    AdminUnavailable,
)
from tests.agent.yggdrasil.support import FakeAdmin, Responder, short_tmp_dir

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "yggdrasil"
V047 = FIXTURES / "0.4.7"
V05 = FIXTURES / "0.5"
TIMEOUT = 0.5
# Scheduling noise on a shared 2-core machine; the bound under test is TIMEOUT.
MARGIN = 0.5


def fixture_bytes(path: Path) -> bytes:
    return path.read_bytes()


def replay(files: dict[str, Path]) -> Responder:
    """Answer each request (by lower-case name) with the stored reply bytes, as the daemon sent them."""

    async def respond(req: dict[str, Any], writer: asyncio.StreamWriter) -> bool | None:
        path = files.get(str(req.get("request", "")).lower())
        if path is None:
            writer.write(b'{\n  "status": "error",\n  "error": "unknown action",\n  "response": null\n}\n')
        else:
            writer.write(fixture_bytes(path))
        await writer.drain()
        return req.get("keepalive") is True

    return respond


V047_FILES = {
    "list": V047 / "list.json",
    "getself": V047 / "a_getSelf.json",
    "getpeers": V047 / "a_getPeers.json",
    "getdht": V047 / "a_getDHT.json",
    "getpaths": V047 / "a_getPaths.json",
    "getsessions": V047 / "a_getSessions.json",
    "addpeer": V047 / "error_already_configured.json",
    "removepeer": V047 / "error_not_configured.json",
}
V05_FILES = {
    "list": V05 / "0.5.14_list.json",
    "getself": V05 / "0.5.14_getSelf.json",
    "getpeers": V05 / "0.5.14_getPeers.json",
    "gettree": V05 / "0.5.14_getTree.json",
    "getpaths": V05 / "0.5.14_getPaths.json",
    "getsessions": V05 / "0.5.14_getSessions.json",
    "addpeer": V05 / "0.5.14_error_already_configured.json",
    "removepeer": V05 / "0.5.14_error_not_configured.json",
}


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    with short_tmp_dir() as path:
        yield path


@pytest.fixture
async def serve(sock_dir: Path) -> AsyncIterator[Callable[[Responder], Awaitable[FakeAdmin]]]:
    servers: list[FakeAdmin] = []

    async def start(responder: Responder) -> FakeAdmin:
        server = FakeAdmin(str(sock_dir / f"fake{len(servers)}.sock"), responder)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


async def timed(coro: Awaitable[Any]) -> tuple[Any, float]:
    start = time.monotonic()
    try:
        result: Any = await coro
    except AdminError as exc:
        result = exc
    return result, time.monotonic() - start


def send(data: bytes, *, close: bool = False) -> Responder:
    async def respond(req: dict[str, Any], writer: asyncio.StreamWriter) -> bool | None:
        writer.write(data)
        await writer.drain()
        return not close

    return respond


async def never_answer(req: dict[str, Any], writer: asyncio.StreamWriter) -> bool | None:
    await asyncio.sleep(3600)
    return None


# --- endpoint parsing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "kind", "where"),
    [
        ("unix:///var/run/yggdrasil/yggdrasil.sock", "unix", "/var/run/yggdrasil/yggdrasil.sock"),
        ("unix://@ygg", "unix", "\0ygg"),
        ("tcp://127.0.0.1:9001", "tcp", ("127.0.0.1", 9001)),
        ("tcp://[::1]:9001", "tcp", ("::1", 9001)),
        ("localhost:9001", "tcp", ("localhost", 9001)),
        ("[::1]:9001", "tcp", ("::1", 9001)),
    ],
)
def test_parse_endpoint(raw: str, kind: str, where: Any) -> None:
    ep = parse_endpoint(raw)
    assert ep.kind == kind and ep.raw == raw
    assert (ep.path if kind == "unix" else (ep.host, ep.port)) == where


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ("none", "disabled"),
        ("", "disabled"),
        ("http://127.0.0.1:9001", "unknown scheme 'http'"),
        ("udp://127.0.0.1:9001", "unknown scheme 'udp'"),
        ("unix://", "needs a socket path"),
        ("tcp://127.0.0.1", "expected host:port"),
        ("localhost:x", "not a number"),
        ("localhost:70000", "out of range"),
    ],
)
def test_parse_endpoint_rejects(raw: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        AdminClient(raw)


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="> 0"):
        AdminClient("unix:///x.sock", timeout=0)


# --- nothing listening -----------------------------------------------------------------------------------------


async def test_missing_socket_file_is_unavailable(sock_dir: Path) -> None:
    result, elapsed = await timed(AdminClient(f"unix://{sock_dir}/absent.sock", TIMEOUT).get_self())
    assert isinstance(result, AdminUnavailable) and "no admin socket" in result.message
    assert elapsed < TIMEOUT


async def test_stale_socket_file_is_unavailable(sock_dir: Path) -> None:
    """What a SIGKILLed daemon leaves: the file exists, nobody listens -> ECONNREFUSED."""
    path = sock_dir / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
    assert path.exists()
    result, elapsed = await timed(AdminClient(f"unix://{path}", TIMEOUT).snapshot())
    assert isinstance(result, AdminUnavailable) and "stale socket" in result.message
    assert elapsed < TIMEOUT


async def test_tcp_connection_refused_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: connects are refused
        port = s.getsockname()[1]
        result, elapsed = await timed(AdminClient(f"tcp://127.0.0.1:{port}", TIMEOUT).get_peers())
    assert isinstance(result, AdminUnavailable) and "refused" in result.message
    assert elapsed < TIMEOUT


async def test_not_a_socket_is_unavailable(sock_dir: Path) -> None:
    path = sock_dir / "plain-file"
    path.write_text("x")
    result, _ = await timed(AdminClient(f"unix://{path}", TIMEOUT).get_self())
    assert isinstance(result, AdminUnavailable)


# --- misbehaving servers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "close", "needle"),
    [
        (b"\x00\xff\xfegarbage", False, "not UTF-8"),
        (b"\x00garbage", False, "not a JSON object"),
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", False, "not a JSON object"),
        (b"{garbage}", False, "not valid JSON"),  # starts like JSON: must still fail fast, not time out
        # A valid object followed by junk: the junk would belong to the next reply.
        (b'{"status": "success", "response": {}}}}', False, None),
        (b'{"status": "success", "request": null, "resp', True, "after 44 bytes of an incomplete reply"),
        (b"", True, "before replying"),
        (b'{"a": "\xff\xfe"}', False, "not UTF-8"),
        (b'["status", "success"]', False, "not a JSON object"),
        (b'{"status": "ok", "response": {}}', False, "unexpected envelope"),
        (b'{"response": {}}', False, "no admin envelope"),
        (b'{"status": "success"}', False, "unexpected envelope"),
    ],
)
async def test_bad_replies_are_protocol_errors(
    serve: Callable[[Responder], Awaitable[FakeAdmin]], reply: bytes, close: bool, needle: str | None
) -> None:
    server = await serve(send(reply, close=close))
    result, elapsed = await timed(AdminClient(server.endpoint, TIMEOUT).call("getSelf"))
    if needle is None:
        assert result == {}  # decoding stops at the end of the first object
        return
    assert isinstance(result, AdminProtocolError), result
    assert needle in result.message
    assert elapsed < TIMEOUT  # detected from the bytes, not by waiting


async def test_reply_that_does_not_normalize_is_protocol_error(
    serve: Callable[[Responder], Awaitable[FakeAdmin]],
) -> None:
    bad = {"list": V047 / "list.json"}

    async def respond(req: dict[str, Any], writer: asyncio.StreamWriter) -> bool | None:
        if req["request"] == "list":
            writer.write(fixture_bytes(bad["list"]))
        else:
            writer.write(json.dumps({"status": "success", "response": {"peers": "not a list"}}).encode())
        await writer.drain()
        return None

    server = await serve(respond)
    result, _ = await timed(AdminClient(server.endpoint, TIMEOUT).get_peers())
    assert isinstance(result, AdminProtocolError) and "getPeers: malformed reply" in result.message


async def test_list_of_unknown_api_is_protocol_error(serve: Callable[[Responder], Awaitable[FakeAdmin]]) -> None:
    server = await serve(send(b'{"status":"success","response":{"list":[{"command":"getself"}]}}'))
    result, _ = await timed(AdminClient(server.endpoint, TIMEOUT).detect_version())
    assert isinstance(result, AdminProtocolError) and "unknown admin API" in result.message


async def test_hang_times_out_within_timeout(serve: Callable[[Responder], Awaitable[FakeAdmin]]) -> None:
    server = await serve(never_answer)
    result, elapsed = await timed(AdminClient(server.endpoint, TIMEOUT).get_self())
    assert isinstance(result, AdminTimeout) and "within 0.5 s" in result.message
    assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + MARGIN


async def test_snapshot_has_one_deadline_overall(serve: Callable[[Responder], Awaitable[FakeAdmin]]) -> None:
    """Each reply arrives in time for a per-request timeout, but the snapshot as a whole does not."""
    inner = replay(V047_FILES)

    async def slow(req: dict[str, Any], writer: asyncio.StreamWriter) -> bool | None:
        await asyncio.sleep(TIMEOUT * 0.4)
        return await inner(req, writer)

    server = await serve(slow)
    result, elapsed = await timed(AdminClient(server.endpoint, TIMEOUT).snapshot())
    assert isinstance(result, AdminTimeout)
    assert elapsed < TIMEOUT + MARGIN


async def test_trickling_reply_hits_the_deadline(serve: Callable[[Responder], Awaitable[FakeAdmin]]) -> None:
    """A reply dripping one byte at a time never resets the clock: the deadline is per call, not per read."""

    async def drip(req: dict[str, Any], writer: asyncio.StreamWriter) -> bool | None:
        for byte in fixture_bytes(V047 / "b_getPeers.json"):
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.01)
        return None

    server = await serve(drip)
    result, elapsed = await timed(AdminClient(server.endpoint, TIMEOUT).call("getPeers"))
    assert isinstance(result, AdminTimeout)
    assert elapsed < TIMEOUT + MARGIN


async def test_reply_split_into_small_chunks_decodes(serve: Callable[[Responder], Awaitable[FakeAdmin]]) -> None:
    """Pretty-printed multi-line reply cut at arbitrary points (inside strings, numbers, literals)."""
    data = fixture_bytes(V047 / "b_getPeers.json")

    async def chunked(req: dict[str, Any], writer: asyncio.StreamWriter) -> bool | None:
        for i in range(0, len(data), 7):
            writer.write(data[i : i + 7])
            await writer.drain()
            await asyncio.sleep(0)
        return None

    server = await serve(chunked)
    peers = await AdminClient(server.endpoint, 5.0).call("getPeers")
    assert peers == json.loads(data)["response"]


async def test_status_error_is_command_error(serve: Callable[[Responder], Awaitable[FakeAdmin]]) -> None:
    server = await serve(replay(V047_FILES))
    client = AdminClient(server.endpoint, TIMEOUT)
    with pytest.raises(AdminCommandError) as info:
        await client.add_peer("tls://127.0.0.1:1")
    assert info.value.kind == "already_configured" and info.value.request == "addPeer"
    assert info.value.error == "peer already configured"
    assert server.requests[-1] == {
        "request": "addPeer",
        "arguments": {"uri": "tls://127.0.0.1:1"},
        "keepalive": True,
    }
    with pytest.raises(AdminCommandError) as info:
        await client.remove_peer("tls://127.0.0.1:1", interface="eth0")
    assert info.value.kind == "not_configured"
    assert server.requests[-1]["arguments"] == {"uri": "tls://127.0.0.1:1", "interface": "eth0"}


async def test_session_survives_command_error_but_not_timeout(
    serve: Callable[[Responder], Awaitable[FakeAdmin]],
) -> None:
    inner = replay(V047_FILES)
    hang_once = {"armed": True}

    async def respond(req: dict[str, Any], writer: asyncio.StreamWriter) -> bool | None:
        if req["request"] == "getSessions" and hang_once["armed"]:
            hang_once["armed"] = False
            await asyncio.sleep(3600)
        return await inner(req, writer)

    server = await serve(respond)
    client = AdminClient(server.endpoint, TIMEOUT)
    async with client.session() as s:
        await s.get_self()
        with pytest.raises(AdminCommandError):
            await s.add_peer("tls://127.0.0.1:1")
        await s.get_self()
        assert server.connections == 1  # an error reply keeps the keepalive connection
        with pytest.raises(AdminTimeout):
            await s.get_sessions()
        # The timed-out stream may still deliver the old reply: the session must not reuse it.
        assert (await s.get_self()).key
        assert server.connections == 2


async def test_session_reuses_one_connection(serve: Callable[[Responder], Awaitable[FakeAdmin]]) -> None:
    server = await serve(replay(V047_FILES))
    client = AdminClient(server.endpoint, TIMEOUT)
    async with client.session() as s:
        for _ in range(3):
            await s.snapshot()
        await asyncio.gather(s.get_self(), s.get_peers(), s.get_paths())  # concurrent callers are serialized
    assert server.connections == 1
    assert all(r.get("keepalive") is True for r in server.requests)
    await client.get_self()
    await client.get_self()
    assert server.connections == 3  # plain calls: one connection each


async def test_v05_replayed(serve: Callable[[Responder], Awaitable[FakeAdmin]]) -> None:
    server = await serve(replay(V05_FILES))
    client = AdminClient(server.endpoint, TIMEOUT)
    snap = await client.snapshot()
    assert snap.api_version == "0.5" and client.api_version == "0.5"
    assert snap.self_info.routing_entries == 2
    up = [p for p in snap.peers if p.up]
    assert len(snap.peers) == 3 and len(up) == 2
    assert up[0].latency_ms == pytest.approx(1.84321) and up[0].rate_recvd == 812
    # Tree (minus this node), then the path and the session to c.
    assert [r.kind for r in snap.routes] == ["tree", "tree", "path", "session"]
    assert snap.self_info.key not in {r.key for r in snap.routes}
    assert [r.kind for r in await client.get_tree()] == ["tree"] * 3
    with pytest.raises(AdminCommandError) as info:
        await client.add_peer("tls://192.0.2.5:14000")
    assert info.value.kind == "already_configured"  # 0.5 wording "peer is already configured"
    assert [r["request"] for r in server.requests].count("list") == 1  # version cached per client


async def test_version_redetected_after_failure(
    serve: Callable[[Responder], Awaitable[FakeAdmin]], sock_dir: Path
) -> None:
    """A daemon replaced by another version at the same socket: the cache is dropped on the failure between."""
    path = str(sock_dir / "swap.sock")
    old = FakeAdmin(path, replay(V047_FILES))
    await old.start()
    client = AdminClient(f"unix://{path}", TIMEOUT)
    assert await client.detect_version() == "0.4"
    await old.stop()
    with pytest.raises(AdminUnavailable):
        await client.get_self()
    assert client.api_version is None
    new = FakeAdmin(path, replay(V05_FILES))
    await new.start()
    try:
        assert (await client.snapshot()).api_version == "0.5"
    finally:
        await new.stop()


async def test_cancelled_call_leaves_no_half_read_stream(
    serve: Callable[[Responder], Awaitable[FakeAdmin]],
) -> None:
    inner = replay(V047_FILES)
    delay = {"s": 0.3}

    async def respond(req: dict[str, Any], writer: asyncio.StreamWriter) -> bool | None:
        await asyncio.sleep(delay["s"])
        return await inner(req, writer)

    server = await serve(respond)
    async with AdminClient(server.endpoint, 2.0).session() as s:
        task = asyncio.create_task(s.call("getPeers"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        delay["s"] = 0
        # Had the connection been kept, this would read the late getPeers reply.
        assert (await s.get_self()).address.startswith("2")
    assert server.connections == 2


def open_sockets() -> int:
    """Sockets this process holds open (client and server ends alike)."""
    fds = Path("/proc/self/fd")
    count = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


async def test_calls_leave_no_connection_open(serve: Callable[[Responder], Awaitable[FakeAdmin]]) -> None:
    """Every call, session and failed call closes its connection itself: none is kept, none is left for the
    garbage collector to close (it warns "unclosed transport"). The agent polls forever; a leaked connection a
    tick would exhaust its descriptors."""
    server = await serve(replay(V047_FILES))
    before = open_sockets()
    slow = await serve(never_answer)
    client, stuck = AdminClient(server.endpoint, TIMEOUT), AdminClient(slow.endpoint, 0.2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(5):
            await client.snapshot()
            with pytest.raises(AdminCommandError):
                await client.add_peer("tls://10.0.0.1:1")
            async with client.session() as s:
                await s.get_peers()
                await s.get_self()
            with pytest.raises(AdminTimeout):
                await stuck.get_self()
        gc.collect()
    assert server.connections >= 15 and slow.connections == 5
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
    await slow.stop()  # its handlers still sleep on their connections (the daemon side of a hang)
    for _ in range(100):  # the fake's own ends close once it reads the client's EOF
        if open_sockets() == before:
            break
        await asyncio.sleep(0.02)
    assert open_sockets() == before


@pytest.mark.parametrize(
    "path",
    sorted(V047.glob("*_get*.json")) + sorted(V05.glob("*.json")),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_every_prefix_of_a_real_reply_counts_as_truncated(path: Path) -> None:
    """The fail-fast garbage check must never reject a valid reply cut at any byte (a chunk boundary)."""
    text = path.read_text()
    decoder = json.JSONDecoder()
    for cut in range(1, len(text)):
        prefix = text[:cut].lstrip()
        if not prefix:
            continue
        try:
            decoder.raw_decode(prefix)
        except json.JSONDecodeError as exc:
            assert _is_truncated(prefix, exc), f"cut at {cut}: {prefix[-30:]!r} rejected ({exc.msg})"


@pytest.mark.parametrize("garbage", ["{garbage}", '{"a": tru e}', '{"a" 1, "b": 2}', '{"a": [1,, 2]}', "{'a': 1}"])
def test_garbage_is_not_truncated(garbage: str) -> None:
    with pytest.raises(json.JSONDecodeError) as info:
        json.JSONDecoder().raw_decode(garbage)
    assert not _is_truncated(garbage, info.value)
