"""Planned peering: what a node dials, and bring-up retries against real daemons."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import pytest

from agent.members import parse_members
from agent.monitor import Monitor
from agent.peering import (
    DIAL_BATCH,
    DIALS_PER_S,
    DialTarget,
    Peering,
    dial_targets,
    is_already_configured,
    target_up,
)
from agent.settings import Settings
from agent.state import AgentState
from agent.views import MeshContext
from agent.yggdrasil.client import AdminClient, AdminSession
from agent.yggdrasil.daemon import DaemonProcess
from agent.yggdrasil.daemon_config import create_config
from agent.yggdrasil.errors import AdminCommandError
from agent.yggdrasil.models import DaemonSnapshot, PeerLink, SelfInfo

KA, KB, KC = "a" * 64, "b" * 64, "c" * 64


def ctx(node: str, links: list[list[str]] | None = None, static: tuple[str, ...] = ()) -> MeshContext:
    doc: dict = {
        "members": [
            {"node_id": "node-a", "agent_url": "http://h:1", "listen_uri": "tls://10.0.0.1:1", "public_key": KA},
            {"node_id": "node-b", "agent_url": "http://h:2", "listen_uri": "tls://10.0.0.2:1"},
            {"node_id": "node-c", "agent_url": "http://h:3", "listen_uri": "tls://10.0.0.3:1", "public_key": KC},
        ]
    }
    if links is not None:
        doc["links"] = links
    members = parse_members(json.dumps(doc).encode())
    return MeshContext(node_id=node, members=members, learned_keys={}, temporary=frozenset(), static_peers=static)


def test_dial_targets_are_the_planned_dials_then_static_peers() -> None:
    targets = dial_targets(ctx("node-a", static=("tcp://10.9.9.9:1", f"tls://10.0.0.3:1?key={KC}")))
    assert targets == [
        DialTarget(uri="tls://10.0.0.2:1", node_id="node-b"),  # no key known: not pinned
        DialTarget(uri=f"tls://10.0.0.3:1?key={KC}", node_id="node-c"),
        DialTarget(uri="tcp://10.9.9.9:1", node_id=None),  # the duplicate of a planned dial is dropped
    ]
    assert dial_targets(ctx("node-c")) == []  # the highest id only accepts in a full mesh
    assert [t.node_id for t in dial_targets(ctx("node-c", links=[["node-c", "node-a"]]))] == ["node-a"]


def test_target_up_by_key_or_dialled_uri() -> None:
    c = ctx("node-a")

    def snap(*links: PeerLink) -> DaemonSnapshot:
        return DaemonSnapshot(
            api_version="0.4",
            self_info=SelfInfo(key=KA, address="200::a", subnet="300::/64"),
            peers=list(links),
            routes=[],
            taken_at=0.0,
        )

    to_c = DialTarget(uri=f"tls://10.0.0.3:1?key={KC}", node_id="node-c")
    to_b = DialTarget(uri="tls://10.0.0.2:1", node_id="node-b")
    assert target_up(to_c, snap(PeerLink(key=KC, up=True, remote="tcp://10.0.0.3:5555")), c)
    assert not target_up(to_c, snap(PeerLink(key=KC, up=False)), c)
    assert target_up(to_b, snap(PeerLink(key=KB, up=True, remote="tls://10.0.0.2:1")), c)
    assert not target_up(to_b, snap(PeerLink(key=KB, up=True, remote="tls://10.0.0.2:1", inbound=True)), c)


def test_already_configured_is_recognised_in_both_versions() -> None:
    assert is_already_configured(AdminCommandError("e", "addPeer", "peer already configured"))
    assert is_already_configured(AdminCommandError("e", "addPeer", "peer is already configured"))
    assert not is_already_configured(AdminCommandError("e", "addPeer", "unknown call scheme: quic"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_daemons(
    tmp_path: Path, binary: str
) -> tuple[dict[str, tuple[str, str, str]], AgentState, dict[str, DaemonProcess]]:
    """node-a's agent state (it dials node-b) and both daemons, not started: listen URI, admin, key per node."""
    nodes = {}
    for node_id in ("node-a", "node-b"):
        listen = f"tls://127.0.0.1:{_free_port()}"
        admin = f"unix://{tmp_path}/{node_id}.sock"
        ident = create_config(tmp_path / f"{node_id}.conf", node_id, admin_listen=admin, listen=[listen])
        nodes[node_id] = (listen, admin, ident.public_key)
    members = [
        {"node_id": n, "agent_url": "http://127.0.0.1:1", "listen_uri": listen, "public_key": key}
        for n, (listen, _, key) in nodes.items()
    ]
    (tmp_path / "members.json").write_text(json.dumps({"members": members}))
    settings = Settings.from_env(
        {
            "NODE_ID": "node-a",
            "YGGDRASIL_ADMIN": nodes["node-a"][1],
            "MESH_MEMBERS": str(tmp_path / "members.json"),
        }
    )
    daemons = {
        n: DaemonProcess(tmp_path / f"{n}.conf", log_path=tmp_path / f"{n}.log", binary=binary) for n in nodes
    }
    return nodes, AgentState(settings), daemons


async def stop_all(tasks: list[asyncio.Task[None]], daemons: dict[str, DaemonProcess] | None = None) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for d in (daemons or {}).values():
        await asyncio.to_thread(d.stop)


@pytest.mark.yggdrasil
@pytest.mark.slow
async def test_link_comes_up_when_the_peer_starts_late(require_yggdrasil: str, tmp_path: Path) -> None:
    """node-b's daemon starts 4.5 s after node-a dialled it: past 0.4.7's three 1 s redials, after which the
    daemon alone would wait for its 60 s retry loop. Peering keeps redialling until the link has been up once."""
    nodes, agent, daemons = two_daemons(tmp_path, require_yggdrasil)
    monitor, peering = Monitor(agent), Peering(agent)
    agent.peering = peering
    tasks = []
    try:
        daemons["node-a"].start()
        await daemons["node-a"].wait_ready_async(10)
        tasks = [asyncio.create_task(monitor.run()), asyncio.create_task(peering.run())]
        await asyncio.sleep(4.5)
        assert not any(p.up for p in agent.planned_status())
        assert nodes["node-b"][0] + f"?key={nodes['node-b'][2]}" in peering.added  # dialled, pinned to the key
        daemons["node-b"].start()
        started = time.monotonic()
        await daemons["node-b"].wait_ready_async(10)
        gen = agent.generation
        while time.monotonic() - started < 10 and not all(p.up for p in agent.planned_status()):
            gen = await agent.wait_changed(gen, within=0.5)  # each monitor pass bumps the generation
        up_after = time.monotonic() - started
        assert all(p.up for p in agent.planned_status()), agent.planned_status()
        # Peering's backoff is at most a few seconds this early; the daemon alone would take up to 60 s.
        assert up_after < 5, f"link up {up_after:.1f} s after node-b started"
        # Handed over: once up, the link is the daemon's (and MAPE-K's) business. (Peering sees the snapshot just
        # after the views this test reads, hence the short wait.)
        gen = agent.generation
        deadline = time.monotonic() + 3
        while peering.pending and time.monotonic() < deadline:
            gen = await agent.wait_changed(gen, within=0.5)
        assert peering.pending == []
    finally:
        await stop_all(tasks, daemons)


@pytest.mark.yggdrasil
async def test_a_daemon_restarted_behind_the_agents_back_gets_its_links_again(
    require_yggdrasil: str, tmp_path: Path
) -> None:
    """A Nomad sidecar's script restarts the daemon at admission's request; the agent notes it before the monitor's
    next pass. Peering took the old daemon's snapshot for the new one's: every target looked up, nothing was
    re-added, and the new daemon had no link (30 s in a sidecar test, for ever with MAPE-K off)."""
    nodes, agent, daemons = two_daemons(tmp_path, require_yggdrasil)
    monitor, peering = Monitor(agent), Peering(agent)
    agent.peering = peering

    async def linked(within: float) -> bool:
        """The daemon's own word (the agent's snapshot is what is being tested)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            links = await AdminClient(nodes["node-a"][1], timeout=2.0).get_peers()
            if any(link.up and link.key == nodes["node-b"][2] for link in links):
                return True
            await asyncio.sleep(0.2)
        return False

    tasks: list[asyncio.Task[None]] = []
    try:
        for d in daemons.values():
            d.start()
            await d.wait_ready_async(10)
        tasks = [asyncio.create_task(monitor.run()), asyncio.create_task(peering.run())]
        assert await linked(10), "no link before the restart"
        gen = agent.generation
        deadline = time.monotonic() + 10
        while (peering.pending or not all(p.up for p in agent.planned_status())) and time.monotonic() < deadline:
            gen = await agent.wait_changed(gen, within=0.5)
        assert peering.pending == [], "the agent never saw the link up"  # its snapshot holds the link now
        await stop_all(tasks)  # the restart falls between two monitor passes
        await asyncio.to_thread(daemons["node-a"].stop)
        daemons["node-a"].start()
        await daemons["node-a"].wait_ready_async(10)
        agent.note_daemon_restarted()
        await peering.reconcile()  # with the old daemon's snapshot in hand
        tasks = [asyncio.create_task(monitor.run()), asyncio.create_task(peering.run())]
        assert await linked(5), f"no link after the restart: {agent.planned_status()}"
    finally:
        await stop_all(tasks, daemons)


@pytest.mark.yggdrasil
async def test_a_fresh_daemon_keeps_the_first_link_peering_made(require_yggdrasil: str, tmp_path: Path) -> None:
    """After every daemon start, peering redialled before a snapshot could show the link its first dial made: on
    0.4 a redial is removePeer + addPeer, so each peer's first link was dropped and made again a second later."""
    _, agent, daemons = two_daemons(tmp_path, require_yggdrasil)
    monitor, peering = Monitor(agent), Peering(agent)
    agent.peering = peering
    tasks: list[asyncio.Task[None]] = []
    try:
        daemons["node-b"].start()
        await daemons["node-b"].wait_ready_async(10)
        daemons["node-a"].start()
        await daemons["node-a"].wait_ready_async(10)
        tasks = [asyncio.create_task(monitor.run()), asyncio.create_task(peering.run())]
        await asyncio.sleep(4)
        log = (tmp_path / "node-a.log").read_text()
        connected = [line for line in log.splitlines() if "Connected outbound" in line]
        dropped = [line for line in log.splitlines() if "Disconnected outbound" in line]
        assert len(connected) == 1 and dropped == [], log
        assert all(p.up for p in agent.planned_status()), agent.planned_status()
    finally:
        await stop_all(tasks, daemons)


@pytest.mark.yggdrasil
async def test_many_unreachable_targets_share_one_connection_per_round_and_a_flat_redial_rate(
    require_yggdrasil: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full plan of 200 members that listen nowhere (issue 11's large members file). Each target is dialled
    once, in rounds of at most DIAL_BATCH over one admin connection each, and not again before (targets down /
    DIALS_PER_S) s. Before, every target had its own connection and its own 0.5 s, 0.8 s, 1.3 s... backoff: 691
    addPeer and as many connections in these 3 s, a third of a 1,000-member agent's event loop."""
    admin = f"unix://{tmp_path}/node-a.sock"
    create_config(
        tmp_path / "node-a.conf", "node-a", admin_listen=admin, listen=[f"tls://127.0.0.1:{_free_port()}"]
    )
    fakes = [
        {
            "node_id": f"x-{i:04d}",
            "agent_url": f"http://127.1.0.{i + 1}:9",
            "listen_uri": f"tls://127.1.0.{i + 1}:9",
        }
        for i in range(200)
    ]
    doc = {"topology": "full", "members": [{"node_id": "node-a", "agent_url": "http://127.0.0.1:1"}, *fakes]}
    (tmp_path / "members.json").write_text(json.dumps(doc))
    settings = Settings.from_env(
        {"NODE_ID": "node-a", "YGGDRASIL_ADMIN": admin, "MESH_MEMBERS": str(tmp_path / "members.json")}
    )
    calls = {"add_peer": 0, "connect": 0}
    add_peer, connect = AdminSession.add_peer, AdminClient._connect

    async def counted_add_peer(self: AdminSession, uri: str, interface: str | None = None) -> None:
        calls["add_peer"] += 1
        await add_peer(self, uri, interface)

    async def counted_connect(self: AdminClient) -> object:
        calls["connect"] += 1
        return await connect(self)

    monkeypatch.setattr(AdminSession, "add_peer", counted_add_peer)
    monkeypatch.setattr(AdminClient, "_connect", counted_connect)
    daemon = DaemonProcess(tmp_path / "node-a.conf", log_path=tmp_path / "node-a.log", binary=require_yggdrasil)
    agent = AgentState(settings)
    monitor, peering = Monitor(agent), Peering(agent)
    tasks = []
    try:
        daemon.start()
        await daemon.wait_ready_async(10)
        tasks = [asyncio.create_task(monitor.run()), asyncio.create_task(peering.run())]
        await asyncio.sleep(3)
        assert len(peering.added) == 200, f"{len(peering.added)} of 200 targets dialled"
        assert calls["add_peer"] == 200, calls  # each once: the next try is 200 / DIALS_PER_S s away
        # ceil(200 / DIAL_BATCH) rounds, plus the monitor's own snapshot connections (about one a second).
        assert calls["connect"] <= -(-200 // DIAL_BATCH) + 10, calls
        soonest = min(p.next_try for p in peering._pending.values()) - time.monotonic()
        assert soonest > 200 / DIALS_PER_S * 0.9 - 3.5, soonest
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(daemon.stop)
