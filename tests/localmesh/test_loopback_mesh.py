"""A real 3-node full mesh on loopback (no root needed): daemons without TUN on 127.0.0.1, agents on 127.0.0.1."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.localmesh.support import (
    MeshRun,
    check_one_link_per_planned_pair,
    check_routes_list_the_others,
    check_two_peers_up,
    full_mesh_run,
    peers_up,
    wait_full_peering,
    wait_until,
)

pytestmark = [pytest.mark.yggdrasil, pytest.mark.slow]


@pytest.fixture(scope="module")
def run(require_yggdrasil: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshRun]:
    with full_mesh_run("loopback", tmp_path_factory.mktemp("loopback")) as mesh_run:
        yield mesh_run


def test_every_agent_reports_two_peers(run: MeshRun) -> None:
    check_two_peers_up(run)


def test_one_link_per_planned_pair(run: MeshRun) -> None:
    check_one_link_per_planned_pair(run)


def test_routes_list_the_other_two(run: MeshRun) -> None:
    check_routes_list_the_others(run)


def test_everything_is_on_127_0_0_1_and_no_overlay_is_advertised(run: MeshRun) -> None:
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


def test_stop_node_and_start_node(run: MeshRun) -> None:
    mesh = run.mesh
    mesh.stop_node("node-c")
    assert mesh.daemon_pid("node-c") is None
    for other in ("node-a", "node-b"):
        url = mesh.node(other).agent_url
        wait_until(f"{other} loses node-c", lambda u=url: "node-c" not in peers_up(run.client, u), 10.0)
    mesh.start_node("node-c")
    wait_full_peering(mesh, run.client, timeout=90.0)
