"""nft faults and the drill manager in a network namespace of the test's own (x0t-drl-<random>).

Real nftables: the rules are applied, listed back and removed; traffic effects are checked on a real TCP socket
inside the namespace (a listener on the mesh port: partition refuses, blackhole times out, other ports pass).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from agent.drills import faults
from agent.drills.faults import FaultUnavailable, Nft
from agent.drills.manager import DrillConflict, DrillManager, DrillNotFound
from agent.members import Members, parse_members
from agent.metrics import AgentMetrics

pytestmark = [pytest.mark.root]

MESH_PORT = 12345
OTHER_PORT = 18080


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def netns(require_nft: str) -> Iterator[str]:
    name = f"x0t-drl-{secrets.token_hex(3)}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def members(ports: tuple[int, ...] = (MESH_PORT,)) -> Members:
    doc = {
        "members": [
            {
                "node_id": f"node-{c}",
                "agent_url": f"http://127.0.0.{i + 1}:{OTHER_PORT}",
                "listen_uri": f"tls://127.0.0.{i + 1}:{port}",
            }
            for i, (c, port) in enumerate(zip("abc", ports * 3, strict=False))
        ]
    }
    return parse_members(json.dumps(doc).encode())


def connect_in_ns(ns: str, port: int, timeout: float = 1.0) -> str:
    """Try a TCP connect to 127.0.0.1:port inside the namespace: 'ok', 'refused' or 'timeout'."""
    code = (
        "import socket,sys\n"
        f"s=socket.socket(); s.settimeout({timeout})\n"
        "try:\n"
        f"    s.connect(('127.0.0.1',{port})); print('ok')\n"
        "except ConnectionRefusedError: print('refused')\n"
        "except (TimeoutError, socket.timeout): print('timeout')\n"
    )
    out = subprocess.run(["ip", "netns", "exec", ns, "python3", "-c", code], capture_output=True, text=True)
    return out.stdout.strip()


@pytest.fixture
def listeners(netns: str) -> Iterator[None]:
    """TCP listeners on the mesh port and another port inside the namespace."""
    code = (
        "import socket,time\n"
        "ss=[]\n"
        f"for p in ({MESH_PORT},{OTHER_PORT}):\n"
        "    s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "    s.bind(('127.0.0.1',p)); s.listen(16); ss.append(s)\n"
        "print('ready', flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, "python3", "-c", code], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield
    finally:
        proc.kill()
        proc.wait()


def tables(ns: str) -> list[str]:
    return [name for _, name in Nft(netns=ns).tables()]


def test_partition_and_blackhole_hit_only_mesh_ports_and_revert(netns: str, listeners: None) -> None:
    nft = Nft(netns=netns)
    assert connect_in_ns(netns, MESH_PORT) == "ok"
    faults.apply_net_fault(nft, "partition", [MESH_PORT], "x0 drill t1 partition")
    listing = nft.run(["list", "table", "inet", faults.DRILL_TABLE])
    assert "reject with tcp reset" in listing and "t1" in listing
    assert connect_in_ns(netns, MESH_PORT) == "refused"
    assert connect_in_ns(netns, OTHER_PORT) == "ok"  # the agent API stays reachable
    # Replacing the fault is one transaction: never two tables, never a gap with both rule sets.
    faults.apply_net_fault(nft, "blackhole", [MESH_PORT], "x0 drill t2 blackhole")
    assert tables(netns).count(faults.DRILL_TABLE) == 1
    assert connect_in_ns(netns, MESH_PORT, timeout=0.5) == "timeout"
    assert connect_in_ns(netns, OTHER_PORT) == "ok"
    assert faults.revert_net_fault(nft) is True
    assert faults.DRILL_TABLE not in tables(netns)
    assert faults.revert_net_fault(nft) is False  # idempotent
    assert connect_in_ns(netns, MESH_PORT) == "ok"


def test_hold_refuses_new_dials_to_one_peer_only(netns: str, listeners: None) -> None:
    nft = Nft(netns=netns)
    nft.apply(faults.hold_script("node-b", f"tls://127.0.0.1:{MESH_PORT}?key=00"))
    assert connect_in_ns(netns, MESH_PORT) == "refused"
    assert connect_in_ns(netns, OTHER_PORT) == "ok"
    assert faults.leftover_tables(nft) == [faults.hold_table("node-b")]
    assert faults.remove_leftovers(nft) == [faults.hold_table("node-b")]
    assert connect_in_ns(netns, MESH_PORT) == "ok"


def test_fault_script_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="no mesh ports"):
        faults.fault_script("partition", [], "x")
    with pytest.raises(ValueError, match="cannot hold"):
        faults.hold_script("node-b", "unix:///tmp/sock")
    assert faults.mesh_ports(["tls://10.0.0.1:12345?key=ab", "tcp://[::1]:999", "unix:///x", None, "bad"]) == [
        999,
        12345,
    ]


def test_missing_capabilities_are_named(tmp_path: pytest.TempPathFactory) -> None:
    missing = faults.missing_for_net_faults(Nft(binary="/nonexistent/nft"))
    assert any("nft" in m for m in missing)
    if not faults.in_own_netns():
        assert any("host's network namespace" in m for m in faults.missing_for_net_faults(Nft()))


def test_missing_cap_net_admin_is_named(netns: str) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) not found")
    code = "from agent.drills.faults import Nft, missing_for_net_faults; print(missing_for_net_faults(Nft()))"
    out = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            netns,
            setpriv,
            "--bounding-set=-net_admin",
            "--inh-caps=-net_admin",
            sys.executable,
            "-c",
            code,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "CAP_NET_ADMIN" in out and "host's network namespace" not in out


# --- the manager ----------------------------------------------------------------------------------------------


def manager(ns: str, metrics: AgentMetrics | None = None, mesh: Members | None = None) -> DrillManager:
    return DrillManager(
        "node-c",
        members=lambda: mesh or members(),
        supervisor=lambda: None,
        metrics=metrics,
        agent_port=OTHER_PORT,
        nft=Nft(netns=ns),
    )


async def test_manager_lifecycle_abort_expire_shutdown(netns: str) -> None:
    metrics = AgentMetrics()
    m = manager(netns, metrics)
    d = await m.start("partition", 30)
    assert d.state == "active" and d.ends_at == pytest.approx(d.started_at + 30)
    assert faults.DRILL_TABLE in tables(netns)
    assert metrics.drill_active.labels(kind="partition")._value.get() == 1
    with pytest.raises(DrillConflict, match=d.id):
        await m.start("blackhole", 5)
    aborted = await m.abort(d.id)
    assert aborted.state == "aborted" and aborted.reverted_at is not None
    assert faults.DRILL_TABLE not in tables(netns)
    assert metrics.drill_active.labels(kind="partition")._value.get() == 0
    assert metrics.drills.labels(kind="partition", outcome="aborted")._value.get() == 1
    with pytest.raises(DrillNotFound):
        await m.abort("drl-nope")

    d2 = await m.start("blackhole", 1)
    assert faults.DRILL_TABLE in tables(netns)
    await asyncio.sleep(1.5)
    assert faults.DRILL_TABLE not in tables(netns)
    assert m.get(d2.id).state == "reverted"
    listed = m.list()
    assert listed.active == [] and [x.id for x in listed.past] == [d2.id, d.id]

    await m.start("partition", 60)
    await m.shutdown()
    assert faults.DRILL_TABLE not in tables(netns)
    assert m.list().past[0].state == "aborted" and "shutting down" in m.list().past[0].detail


async def test_manager_refuses_what_it_cannot_do_and_applies_nothing(netns: str) -> None:
    no_ports = parse_members(b'{"members": [{"node_id": "node-c", "agent_url": "http://127.0.0.1:1"}]}')
    with pytest.raises(FaultUnavailable, match="no listen_uri"):
        await manager(netns, mesh=no_ports).start("partition", 5)
    with pytest.raises(FaultUnavailable, match=f"HTTP port {OTHER_PORT}"):
        await manager(netns, mesh=members((OTHER_PORT,))).start("blackhole", 5)
    with pytest.raises(FaultUnavailable, match="does not supervise"):
        await manager(netns).start("kill-daemon", 5)
    broken = DrillManager(
        "node-c", members=members, supervisor=lambda: None, nft=Nft(netns=netns, binary="/nonexistent/nft")
    )
    with pytest.raises(FaultUnavailable, match="nft binary is not installed"):
        await broken.start("blackhole", 5)
    assert tables(netns) == []


async def test_watchdog_reverts_when_the_agent_is_gone_and_restart_cleans_leftovers(netns: str) -> None:
    m = manager(netns)
    d = await m.start("blackhole", 1)
    # Simulate an agent that died mid-drill: its timer never fires.
    for task in list(m._tasks):
        task.cancel()
    deadline = time.monotonic() + 6
    while faults.DRILL_TABLE in tables(netns) and time.monotonic() < deadline:  # noqa: ASYNC110 - polls nft
        await asyncio.sleep(0.2)
    assert faults.DRILL_TABLE not in tables(netns), f"watchdog of {d.id} did not remove the table"

    # A leftover with no watchdog at all (e.g. the namespace's processes were killed): the next agent removes it.
    faults.apply_net_fault(Nft(netns=netns), "partition", [MESH_PORT], "x0 drill old partition")
    nft = Nft(netns=netns)
    nft.apply(faults.hold_script("node-a", f"tcp://127.0.0.1:{MESH_PORT}"))
    fresh = manager(netns)
    assert sorted(fresh.cleanup_leftovers()) == sorted([faults.DRILL_TABLE, faults.hold_table("node-a")])
    assert tables(netns) == []


def test_socket_kill_cuts_established_mesh_connections(netns: str, listeners: None) -> None:
    code = (
        "import socket,time\n"
        f"c=socket.create_connection(('127.0.0.1',{MESH_PORT}))\n"
        "print('connected', flush=True)\n"
        "c.settimeout(5)\n"
        "try:\n"
        "    print('read', c.recv(1))\n"
        "except OSError as e: print('error', type(e).__name__)\n"
    )
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, "python3", "-c", code], stdout=subprocess.PIPE, text=True
    )
    # The control: an established connection in the host namespace on a port the kill also names. `ss -K` run
    # outside the drill's namespace would cut it too.
    with socket.create_server(("127.0.0.1", 0)) as server:
        host_port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", host_port), timeout=2) as client:
            accepted, _ = server.accept()
            with accepted:
                try:
                    assert proc.stdout is not None and proc.stdout.readline().strip() == "connected"
                    assert faults.kill_mesh_sockets(Nft(netns=netns), [MESH_PORT, host_port]) is None
                    line = proc.stdout.readline().strip()
                    # Cut (reset or EOF), not the reader's own 5 s timeout running out.
                    assert line.startswith(("error", "read b''")) and "Timeout" not in line, line
                finally:
                    proc.kill()
                    proc.wait()
                accepted.settimeout(2)
                client.sendall(b"x")
                assert accepted.recv(1) == b"x", "the kill reached the host namespace"
