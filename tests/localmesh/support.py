"""Checks shared by the local-mesh tests: what a mesh left behind, and waiting on the agents' own answers."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from agent.localmesh import LocalMesh, MeshOptions, naming, netns, procs, registry
from agent.yggdrasil.client import AdminClient

# POST /drills answers once the mesh-wide drill lease is taken through Raft, which may take the whole
# X0_RAFT_WRITE_TIMEOUT (2 s) under load, then sets the fault up: clients give it this long.
DRILL_POST_S = 10.0
# After a fault the Raft group may hold an election (a returning member's higher term deposes the leader: pysyncobj
# has no pre-vote), and POST /drills answers 503 naming it. An operator tries again; the tests do too, this long.
RAFT_SETTLE_S = 20.0


def http_client() -> httpx.Client:
    # trust_env=False: a proxy from the environment must never carry requests meant for our namespaces.
    return httpx.Client(trust_env=False, timeout=2.0)


def leftovers(mesh_id: str, mesh_dir: Path) -> list[str]:
    """Everything of mesh `mesh_id` still on the machine: namespaces, interfaces, processes, sockets, record."""
    left: list[str] = []
    if os.geteuid() == 0:
        left += [f"netns {n}" for n in netns.list_netns() if naming.owner_mesh_id(n) == mesh_id]
        left += [f"link {n}" for n in netns.list_links() if naming.owner_mesh_id(n) == mesh_id]
    left += [f"process {p} (marked)" for p in procs.marked_pids(mesh_id)]
    left += [f"process {p} (yggdrasil)" for p in procs.daemon_pids(mesh_dir)]
    left += [f"socket {p}" for p in mesh_dir.rglob("*.sock")]
    short = Path(f"/tmp/x0-{mesh_id}")
    if short.exists():
        left += [f"socket dir {short}: {sorted(os.listdir(short))}"]
    if (registry.state_dir() / f"{mesh_id}.json").exists():
        left.append(f"registry record {mesh_id}")
    return left


def peers_up(client: httpx.Client, agent_url: str) -> list[str]:
    """Member ids of the links up according to the agent's /mesh/peers."""
    resp = client.get(f"{agent_url}/mesh/peers")
    resp.raise_for_status()
    return sorted(p["node_id"] or p["key"] for p in resp.json()["peers"] if p["up"])


def wait_until(what: str, predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> float:
    """Seconds until `predicate()` held; AssertionError naming `what` after `timeout`."""
    start = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)


def wait_full_peering(mesh: LocalMesh, client: httpx.Client, timeout: float) -> dict[str, float]:
    """Wait until every node's /mesh/peers shows all its planned neighbours up; per node, the wall-clock seconds
    from that node's agent process start to the first poll that saw it."""
    expected = {n: sorted({b if a == n else a for a, b in mesh.links if n in (a, b)}) for n in mesh.node_ids}
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(expected) and time.monotonic() < deadline:
        for node in mesh.nodes:
            if node.id in seen:
                continue
            try:
                if peers_up(client, node.agent_url) == expected[node.id]:
                    seen[node.id] = time.time() - mesh.started_at(node.id)
            except httpx.HTTPError:
                pass
        time.sleep(0.05)
    missing = {n: expected[n] for n in expected if n not in seen}
    assert not missing, f"planned peers not all up within {timeout:g} s: {missing}"
    return seen


def daemon_peer_keys(admin_endpoint: str) -> list[str]:
    """Keys of the links up, straight from the daemon's getPeers (one entry per link)."""
    links = asyncio.run(AdminClient(admin_endpoint, timeout=3.0).get_peers())
    return [link.key for link in links if link.up]


def route_members(client: httpx.Client, agent_url: str) -> set[str]:
    body = client.get(f"{agent_url}/mesh/routes").json()
    return {r["node_id"] for r in body["routes"] if r["node_id"]}


def wait_routes_to_all(mesh: LocalMesh, client: httpx.Client, timeout: float) -> dict[str, float]:
    """Wait until every node's /mesh/routes names every other member (the DHT fills in within a few seconds of
    peering); per node, seconds from its agent's process start."""
    seen: dict[str, float] = {}
    last: dict[str, set[str]] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(mesh.nodes) and time.monotonic() < deadline:
        for node in mesh.nodes:
            if node.id in seen:
                continue
            try:
                last[node.id] = route_members(client, node.agent_url)
            except httpx.HTTPError:
                continue
            if last[node.id] == set(mesh.node_ids) - {node.id}:
                seen[node.id] = time.time() - mesh.started_at(node.id)
        time.sleep(0.1)
    missing = {n: sorted(last.get(n, set())) for n in mesh.node_ids if n not in seen}
    assert not missing, f"routes do not list every other member within {timeout:g} s; they list: {missing}"
    return seen


@dataclass
class MeshRun:
    """A module's 3-node full mesh, with the time each agent took to see both peers (measured right after start,
    so the figure does not depend on which test runs first)."""

    mesh: LocalMesh
    client: httpx.Client
    first_full_peering: dict[str, float]  # node -> s from its agent's process start to 2 peers up


@contextmanager
def full_mesh_run(mode: str, run_dir: Path) -> Iterator[MeshRun]:
    options = MeshOptions(nodes=3, topology="full", mode=mode, run_dir=run_dir)
    with LocalMesh(options) as mesh, http_client() as client:
        try:
            seen = wait_full_peering(mesh, client, timeout=30.0)
        except AssertionError:
            seen = {}
        yield MeshRun(mesh=mesh, client=client, first_full_peering=seen)
    assert leftovers(mesh.id, mesh.mesh_dir) == []


def check_two_peers_up(run: MeshRun) -> None:
    """Every node saw both its peers up (within the 30 s the fixture waits). How fast, against the 5 s target,
    is bench/heal_bench.py's formation figure: a wall-clock target is not a test on a shared 2-core machine."""
    assert set(run.first_full_peering) == set(run.mesh.node_ids), "some node never saw both peers"
    worst = max(run.first_full_peering.values())
    print(
        f"\n{run.mesh.mode}: 2 peers up, seconds from agent process start: "
        f"{ {k: round(v, 2) for k, v in run.first_full_peering.items()} } (worst {worst:.2f})"
    )


def check_one_link_per_planned_pair(run: MeshRun) -> None:
    """Only the first id of each pair dials: each daemon holds 2 links on a 3-node full mesh, not 4."""
    mesh = run.mesh
    keys = {n.public_key: n.id for n in mesh.nodes}
    for node in mesh.nodes:
        links = daemon_peer_keys(node.admin_endpoint)
        assert sorted(keys[k] for k in links) == sorted(set(mesh.node_ids) - {node.id}), (node.id, links)
        peers = run.client.get(f"{node.agent_url}/mesh/peers").json()["peers"]
        assert len(peers) == 2, peers


def check_routes_list_the_others(run: MeshRun) -> None:
    seen = wait_routes_to_all(run.mesh, run.client, timeout=20.0)
    figures = {k: round(v, 2) for k, v in seen.items()}
    print(f"\n{run.mesh.mode}: routes name every other member by {figures} s after agent start (upper bound)")
    for node in run.mesh.nodes:
        assert run.client.get(f"{node.agent_url}/mesh/routes").json()["node_id"] == node.id


def post_drill(
    client: httpx.Client, agent_url: str, body: dict[str, object], headers: dict[str, str]
) -> httpx.Response:
    """POST /drills, again while the agent answers 503 because Raft has no leader or quorum yet; any other answer
    (or the last 503 after RAFT_SETTLE_S) is returned to the caller to judge."""
    deadline = time.monotonic() + RAFT_SETTLE_S
    while True:
        resp = client.post(f"{agent_url}/drills", json=body, headers=headers, timeout=DRILL_POST_S)
        unavailable = resp.status_code == 503 and ("no leader" in resp.text or "no quorum" in resp.text)
        if not unavailable or time.monotonic() > deadline:
            return resp
        time.sleep(0.5)
