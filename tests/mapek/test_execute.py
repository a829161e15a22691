"""MAPE-K Execute (agent.mapek.execute) against a fake admin socket replaying what real daemons answer.

The replies are the recorded ones (tests/fixtures/yggdrasil: 0.4.7 captured here, 0.5.14 from upstream), sent
byte for byte; the fake records every request, so the tests see which calls were made, in which order, on how
many connections. The nft hold is tested for real in a namespace of the test's own (root), and without nft.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.drills import faults
from agent.drills.faults import Nft
from agent.mapek.execute import Executor
from agent.mapek.knowledge import PlannedAction
from agent.yggdrasil.client import AdminClient
from tests.agent.yggdrasil.support import FakeAdmin, Responder, short_tmp_dir

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "yggdrasil"
OK = b'{"status": "success", "request": null, "response": {}}\n'
ALREADY_04 = (FIXTURES / "0.4.7" / "error_already_configured.json").read_bytes()
NOT_CONFIGURED_04 = (FIXTURES / "0.4.7" / "error_not_configured.json").read_bytes()
UNKNOWN_SCHEME_04 = (FIXTURES / "0.4.7" / "error_unknown_scheme.json").read_bytes()
ALREADY_05 = (FIXTURES / "0.5" / "0.5.14_error_already_configured.json").read_bytes()
NOT_CONFIGURED_05 = (FIXTURES / "0.5" / "0.5.14_error_not_configured.json").read_bytes()
URI = "tls://10.9.0.3:12345?key=" + "3" * 64
NO_NFT = Nft(binary="/nonexistent/nft")


def daemon(replies: dict[str, bytes]) -> Responder:
    """Answer each request (by name) with the given bytes, success otherwise."""

    async def respond(req: dict[str, Any], writer: asyncio.StreamWriter) -> bool | None:
        writer.write(replies.get(str(req.get("request")), OK))
        await writer.drain()
        return req.get("keepalive") is True

    return respond


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    with short_tmp_dir() as path:
        yield path


@pytest.fixture
async def serve(sock_dir: Path) -> AsyncIterator[Callable[[Responder], Awaitable[FakeAdmin]]]:
    servers: list[FakeAdmin] = []

    async def start(responder: Responder) -> FakeAdmin:
        server = FakeAdmin(str(sock_dir / f"admin{len(servers)}.sock"), responder)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


def action(kind: str, uri: str | None = URI, hold_s: float = 0.0) -> PlannedAction:
    return PlannedAction(action=kind, target="node-c", uri=uri, reason=f"{kind} for the test", hold_s=hold_s)  # type: ignore[arg-type]


def calls(server: FakeAdmin) -> list[tuple[str, str | None]]:
    return [(r["request"], (r.get("arguments") or {}).get("uri")) for r in server.requests]


async def test_redial_on_04_removes_then_adds_on_one_connection(serve) -> None:
    server = await serve(daemon({}))
    outcome = await Executor(AdminClient(server.endpoint, 1.0), NO_NFT).run(action("redial"), "0.4")
    assert outcome == ("ok", "removePeer + addPeer: the daemon dials now")
    assert calls(server) == [("removePeer", URI), ("addPeer", URI)]
    assert server.connections == 1  # one keepalive session: the daemon cannot redial in between


async def test_redial_on_04_of_a_link_it_no_longer_has(serve) -> None:
    server = await serve(daemon({"removePeer": NOT_CONFIGURED_04}))
    outcome = await Executor(AdminClient(server.endpoint, 1.0), NO_NFT).run(action("redial"), "0.4")
    assert outcome == ("ok", "removePeer + addPeer: the daemon dials now")
    assert calls(server) == [("removePeer", URI), ("addPeer", URI)]


async def test_redial_on_05_already_configured_is_the_kick_out_of_backoff(serve) -> None:
    server = await serve(daemon({"addPeer": ALREADY_05}))
    outcome = await Executor(AdminClient(server.endpoint, 1.0), NO_NFT).run(action("redial"), "0.5")
    assert outcome == ("ok", "addPeer kicked the configured link out of its backoff")
    assert calls(server) == [("addPeer", URI)]  # never removePeer on 0.5


async def test_redial_on_05_of_an_unconfigured_peer_adds_it(serve) -> None:
    server = await serve(daemon({}))
    outcome = await Executor(AdminClient(server.endpoint, 1.0), NO_NFT).run(action("redial"), "0.5")
    assert outcome == ("ok", "addPeer: the daemon dials now")


async def test_add_peer_outcomes(serve) -> None:
    ex = Executor(AdminClient((await serve(daemon({}))).endpoint, 1.0), NO_NFT)
    assert await ex.run(action("add_peer"), "0.4") == ("ok", "add_peer for the test")
    for already in (ALREADY_04, ALREADY_05):
        ex = Executor(AdminClient((await serve(daemon({"addPeer": already}))).endpoint, 1.0), NO_NFT)
        assert await ex.run(action("add_peer"), "0.4") == ("ok", "add_peer for the test (already configured)")
    # Any other refusal is a failed action with the daemon's own words.
    ex = Executor(AdminClient((await serve(daemon({"addPeer": UNKNOWN_SCHEME_04}))).endpoint, 1.0), NO_NFT)
    outcome, reason = await ex.run(action("add_peer"), "0.4")
    assert outcome == "failed" and reason.startswith("AdminCommandError") and "unknown call scheme: quic" in reason


async def test_remove_without_nft_says_the_daemon_may_redial(serve) -> None:
    server = await serve(daemon({}))
    for nft in (NO_NFT, Nft(binary=None, netns="x0t-no-such-namespace")):
        outcome, reason = await Executor(AdminClient(server.endpoint, 1.0), nft).run(
            action("restore", hold_s=2.0), "0.4"
        )
        assert outcome == "ok" and reason.startswith("restore for the test; no hold (")
        assert reason.endswith("a 0.4 daemon may redial it once")
    assert calls(server) == [("removePeer", URI)] * 2


async def test_remove_of_a_peer_that_is_not_configured(serve) -> None:
    for reply in (NOT_CONFIGURED_04, NOT_CONFIGURED_05):
        server = await serve(daemon({"removePeer": reply}))
        outcome = await Executor(AdminClient(server.endpoint, 1.0), NO_NFT).run(action("remove_peer"), "0.5")
        assert outcome == ("ok", "remove_peer for the test (was not configured)")


async def test_no_uri_quarantine_and_a_daemon_that_is_gone(serve, sock_dir: Path) -> None:
    server = await serve(daemon({}))
    ex = Executor(AdminClient(server.endpoint, 1.0), NO_NFT)
    for kind in ("redial", "add_peer", "restore", "remove_peer"):
        assert await ex.run(action(kind, uri=None), "0.4") == ("failed", "no peer URI known for node-c")
    assert await ex.run(action("quarantine", uri=None), "0.4") == ("ok", "quarantine for the test")
    assert server.requests == []  # none of these reached the daemon
    gone = Executor(AdminClient(f"unix://{sock_dir}/absent.sock", 0.5), NO_NFT)
    outcome, reason = await gone.run(action("add_peer"), "0.4")
    assert outcome == "failed" and reason.startswith("AdminUnavailable")


# --- the hold, with real nft in a namespace of the test's own -----------------------------------------------


@pytest.fixture
def netns(require_nft: str) -> Iterator[str]:
    name = f"x0t-exe-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.mark.root
async def test_hold_refuses_own_dials_then_lifts_itself(serve, netns: str) -> None:
    server = await serve(daemon({}))
    nft = Nft(netns=netns)
    ex = Executor(AdminClient(server.endpoint, 1.0), nft)
    table = faults.hold_table("node-c")
    outcome, reason = await ex.run(action("restore", hold_s=0.5), "0.4")
    assert outcome == "ok" and reason.endswith("own dials to it refused for 0.5 s so 0.4 does not redial it")
    listing = nft.run(["list", "table", "inet", table])
    assert "ip daddr 10.9.0.3" in listing and "tcp dport 12345" in listing
    for _ in range(60):  # lifted by its own timer
        if ("inet", table) not in nft.tables():
            break
        await asyncio.sleep(0.1)
    assert ("inet", table) not in nft.tables()
    # A second hold replaces the first; closing the executor (agent stopping) lifts it at once.
    await ex.run(action("restore", hold_s=60), "0.4")
    await ex.run(action("restore", hold_s=60), "0.4")
    assert nft.tables().count(("inet", table)) == 1
    await ex.aclose()
    assert ("inet", table) not in nft.tables()
