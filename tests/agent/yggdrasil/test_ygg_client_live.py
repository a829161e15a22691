"""AdminClient against real 0.4.7 daemons on loopback (IfName none, no root), shared by the whole module."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from agent.yggdrasil.client import AdminClient
from agent.yggdrasil.daemon import DaemonProcess
from agent.yggdrasil.daemon_config import NodeIdentity, create_config
from agent.yggdrasil.errors import AdminCommandError
from agent.yggdrasil.models import PeerLink
from tests.agent.yggdrasil.support import free_port, short_tmp_dir

pytestmark = pytest.mark.yggdrasil


@dataclass
class Node:
    name: str
    admin: str
    listen: str
    ident: NodeIdentity
    daemon: DaemonProcess


async def wait_for_peer(client: AdminClient, key: str, within_s: float = 10.0) -> PeerLink:
    deadline = time.monotonic() + within_s
    while True:
        peers = await client.get_peers()
        found = [p for p in peers if p.key == key]
        if found:
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"peer {key[:8]} not up within {within_s} s: {peers}")
        await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
def nodes(require_yggdrasil: str) -> Iterator[dict[str, Node]]:
    """a and b with unix admin sockets, c with a tcp:// admin endpoint; a dials b (tls) at start."""
    out: dict[str, Node] = {}
    with short_tmp_dir() as run:
        try:
            for name, scheme in (("a", "tls"), ("b", "tls"), ("c", "tcp")):
                admin = f"tcp://127.0.0.1:{free_port()}" if name == "c" else f"unix://{run}/{name}.sock"
                listen = f"{scheme}://127.0.0.1:{free_port()}"
                conf = run / f"{name}.conf"
                ident = create_config(
                    conf, f"node-{name}", admin_listen=admin, listen=[listen], binary=require_yggdrasil
                )
                daemon = DaemonProcess(conf, log_path=run / f"{name}.log", binary=require_yggdrasil)
                out[name] = Node(name, admin, listen, ident, daemon)
                daemon.start()
            for node in out.values():
                node.daemon.wait_ready(10)

            async def link() -> None:
                client = AdminClient(out["a"].admin)
                await client.add_peer(out["b"].listen)
                await wait_for_peer(client, out["b"].ident.public_key)

            asyncio.run(link())
            yield out
        finally:
            for node in out.values():
                node.daemon.stop()


async def test_detects_04_over_unix_and_tcp(nodes: dict[str, Node]) -> None:
    for name in ("a", "c"):
        client = AdminClient(nodes[name].admin)
        assert await client.detect_version() == "0.4"
        assert client.api_version == "0.4"
        commands = await client.list_commands()
        assert {"getdht", "getpeers", "addpeer", "removepeer", "getself"} <= set(commands)
        assert "gettree" not in commands


async def test_tcp_endpoint_forms(nodes: dict[str, Node]) -> None:
    c = nodes["c"]
    bare = c.admin.removeprefix("tcp://")
    for endpoint in (c.admin, bare):
        info = await AdminClient(endpoint).get_self()
        assert (info.key, info.address, info.subnet) == (c.ident.public_key, c.ident.address, c.ident.subnet)


async def test_snapshot_sees_the_link_from_both_ends(nodes: dict[str, Node]) -> None:
    a, b = nodes["a"], nodes["b"]
    snap_a = await AdminClient(a.admin).snapshot()
    assert snap_a.api_version == "0.4"
    assert snap_a.self_info.key == a.ident.public_key and snap_a.self_info.address == a.ident.address
    assert snap_a.taken_at == pytest.approx(time.time(), abs=5)
    to_b = [p for p in snap_a.peers if p.key == b.ident.public_key]
    assert len(to_b) == 1
    assert to_b[0].up and to_b[0].inbound is None and to_b[0].address == b.ident.address
    assert to_b[0].remote == b.listen  # the dialled URI, as we added it
    assert a.ident.public_key not in {r.key for r in snap_a.routes}
    assert {r.kind for r in snap_a.routes} <= {"dht", "path", "session"}

    snap_b = await AdminClient(b.admin).snapshot()
    from_a = [p for p in snap_b.peers if p.key == a.ident.public_key]
    assert len(from_a) == 1
    # Inbound: listener scheme + a's ephemeral source port, not a's listen port.
    assert from_a[0].remote is not None and from_a[0].remote.startswith("tls://127.0.0.1:")
    assert from_a[0].remote != a.listen


async def test_routing_tables(nodes: dict[str, Node]) -> None:
    client = AdminClient(nodes["b"].admin)
    async with client.session() as s:
        dht = await s.get_dht()
        ports = {p.port for p in await s.get_peers()}
    keys = {n.ident.public_key for n in nodes.values()}
    # Which keys a 0.4 DHT holds depends on the keyspace (it may even list the node itself, on port 0).
    for route in dht:
        assert route.kind == "dht" and route.key in keys
        assert (
            route.next_hop_port is None
            if route.key == nodes["b"].ident.public_key
            else route.next_hop_port in ports
        )
    # A remote call b -> a makes a path and a session to a (reference: getSessions); a is b's direct peer.
    a = nodes["a"].ident
    slow = AdminClient(nodes["b"].admin, timeout=8.0)
    for _ in range(3):  # the daemon answers "Timed out waiting for response" until it can route to a
        try:
            await slow.call("getNodeInfo", {"key": a.public_key})
            break
        except AdminCommandError:
            continue
    else:
        raise AssertionError("b never reached a with getNodeInfo")
    (link,) = [p for p in await client.get_peers() if p.key == a.public_key]
    sessions = [r for r in await client.get_sessions() if r.key == a.public_key]
    assert [(r.kind, r.address) for r in sessions] == [("session", a.address)]
    assert sessions[0].bytes_recvd is not None and sessions[0].bytes_recvd > 0
    paths = [r for r in await client.get_paths() if r.key == a.public_key]
    assert [(r.kind, r.address, r.next_hop_port) for r in paths] == [("path", a.address, link.port)]
    with pytest.raises(AdminCommandError) as info:
        await client.get_tree()  # a 0.5 command
    assert info.value.kind == "unknown_command"


async def test_add_remove_peer_round_trip(nodes: dict[str, Node]) -> None:
    a, c = nodes["a"], nodes["c"]
    client = AdminClient(a.admin)
    await client.add_peer(c.listen)
    link = await wait_for_peer(client, c.ident.public_key)
    assert link.remote == c.listen and link.up
    with pytest.raises(AdminCommandError) as info:
        await client.add_peer(c.listen)
    assert info.value.kind == "already_configured" and info.value.request == "addPeer"
    # The 0.4 fast-redial tactic: remove + add on one keepalive connection.
    async with client.session() as s:
        await s.remove_peer(c.listen)
        await s.add_peer(c.listen)
    await wait_for_peer(client, c.ident.public_key)
    await client.remove_peer(c.listen)
    with pytest.raises(AdminCommandError) as info:
        await client.remove_peer(c.listen)
    assert info.value.kind == "not_configured" and info.value.error == "peer not configured"
    with pytest.raises(AdminCommandError) as info:
        await client.add_peer("quic://127.0.0.1:1")
    assert info.value.kind == "unknown_scheme"
    with pytest.raises(AdminCommandError) as info:
        await client.call("addPeer", {"uri": 123})  # type: ignore[dict-item]
    assert info.value.kind == "other" and "cannot unmarshal" in info.value.error


async def test_session_keeps_one_connection(nodes: dict[str, Node]) -> None:
    client = AdminClient(nodes["a"].admin)
    async with client.session() as s:
        await s.get_self()
        conn = s._conn
        assert conn is not None
        for _ in range(10):
            await s.snapshot()
        with pytest.raises(AdminCommandError):
            await s.call("bogus")
        await s.get_peers()
        # Without keepalive the daemon would have closed after the first reply and a later call would fail.
        assert s._conn is conn
    assert s._conn is None
