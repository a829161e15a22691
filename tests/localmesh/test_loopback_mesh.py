"""A real 3-node full mesh on loopback (no root needed): daemons without TUN on 127.0.0.1, agents on 127.0.0.1."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from agent.localmesh import LocalMesh, MeshOptions
from tests.localmesh.support import (
    daemon_peer_keys,
    http_client,
    leftovers,
    peers_up,
    wait_full_peering,
    wait_routes_to_all,
    wait_until,
)

pytestmark = [pytest.mark.yggdrasil, pytest.mark.slow]


@dataclass
class Run:
    mesh: LocalMesh
    client: httpx.Client
    first_full_peering: dict[str, float]


@pytest.fixture(scope="module")
def run(require_yggdrasil: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    options = MeshOptions(nodes=3, topology="full", mode="loopback", run_dir=tmp_path_factory.mktemp("loopback"))
    with LocalMesh(options) as mesh, http_client() as client:
        try:
            seen = wait_full_peering(mesh, client, timeout=30.0)
        except AssertionError:
            seen = {}
        yield Run(mesh=mesh, client=client, first_full_peering=seen)
    assert leftovers(mesh.id, mesh.mesh_dir) == []


def test_every_agent_reports_two_peers_within_5s_of_start(run: Run) -> None:
    assert set(run.first_full_peering) == {"node-a", "node-b", "node-c"}, "some node never saw both peers"
    worst = max(run.first_full_peering.values())
    print(
        f"\nloopback: 2 peers up, seconds from agent process start: "
        f"{ {k: round(v, 2) for k, v in run.first_full_peering.items()} } (worst {worst:.2f})"
    )
    assert worst <= 5.0


def test_one_link_per_planned_pair(run: Run) -> None:
    keys = {n.public_key: n.id for n in run.mesh.nodes}
    for node in run.mesh.nodes:
        links = daemon_peer_keys(node.admin_endpoint)
        assert sorted(keys[k] for k in links) == sorted(set(run.mesh.node_ids) - {node.id}), (node.id, links)


def test_routes_list_the_other_two(run: Run) -> None:
    seen = wait_routes_to_all(run.mesh, run.client, timeout=20.0)
    figures = {k: round(v, 2) for k, v in seen.items()}
    print(f"\nloopback: routes name both others by {figures} s after agent start (upper bound)")
    for node in run.mesh.nodes:
        assert run.client.get(f"{node.agent_url}/mesh/routes").json()["node_id"] == node.id


def test_everything_is_on_127_0_0_1_and_no_overlay_is_advertised(run: Run) -> None:
    mesh = run.mesh
    ports = [n.agent_port for n in mesh.nodes] + [n.listen_port for n in mesh.nodes]
    assert len(set(ports)) == 6
    for node in mesh.nodes:
        assert node.netns is None and node.overlay_url is None
        assert node.agent_url.startswith("http://127.0.0.1:") and node.listen_uri.startswith("tls://127.0.0.1:")
    assert mesh.inventory_path is not None and stat.S_IMODE(mesh.inventory_path.stat().st_mode) == 0o600
    inv = json.loads(mesh.inventory_path.read_text())
    assert inv["mode"] == "loopback" and all(n["overlay_url"] is None for n in inv["nodes"])
    # No TUN: an overlay address would leave through the host's default route, so agents must not derive one.
    members = json.loads(Path(inv["members_file"]).read_text())["members"]
    assert all("address" not in m and "overlay_url" not in m for m in members)
    status = run.client.get(f"{mesh.node('node-a').agent_url}/mesh/status").json()
    assert status["address"] == mesh.node("node-a").yggdrasil_address


def test_stop_node_and_start_node(run: Run) -> None:
    mesh = run.mesh
    mesh.stop_node("node-c")
    assert mesh.daemon_pid("node-c") is None
    for other in ("node-a", "node-b"):
        url = mesh.node(other).agent_url
        wait_until(f"{other} loses node-c", lambda u=url: "node-c" not in peers_up(run.client, u), 10.0)
    mesh.start_node("node-c")
    wait_full_peering(mesh, run.client, timeout=90.0)
