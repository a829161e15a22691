"""Peer admission (issue 11): a daemon whose key is not a member's cannot peer with the mesh; the agent says so.

A real 2-node loopback mesh (no root needed) and a real rogue daemon with a fresh key dialling node-a's listener:
node-a's daemon refuses the link (AllowedPublicKeys = the members' keys, written by node-a's agent), and node-a's
agent reports the attempt in /mesh/peers, /metrics and its log. Then the rogue's key becomes a member's: the agent
rewrites the config, restarts its daemon, and the same daemon now gets its link.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent.localmesh import LocalMesh, MeshOptions
from agent.yggdrasil.address import address_for_key
from agent.yggdrasil.daemon import DaemonProcess
from tests.agent.yggdrasil.support import rogue_config
from tests.localmesh.support import http_client, leftovers, peers_up, wait_until

pytestmark = [pytest.mark.yggdrasil, pytest.mark.slow]


@pytest.fixture
def mesh(require_yggdrasil: str, tmp_path: Path) -> Iterator[LocalMesh]:
    options = MeshOptions(nodes=2, topology="full", mode="loopback", run_dir=tmp_path / "mesh")
    with LocalMesh(options) as m:
        yield m
    assert leftovers(m.id, m.mesh_dir) == []


def metric(client: httpx.Client, url: str, name: str) -> float:
    for line in client.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported by {url}")


def refused(client: httpx.Client, url: str) -> list[dict[str, object]]:
    return client.get(f"{url}/mesh/peers").json()["refused"]


def test_a_rogue_daemon_gets_no_link_and_the_agent_reports_it(mesh: LocalMesh, tmp_path: Path) -> None:
    a, b = mesh.node("node-a"), mesh.node("node-b")
    config = json.loads(a.config_path.read_text())
    assert config["AllowedPublicKeys"] == [b.public_key]  # exactly the other member, written by node-a's agent

    with http_client() as client:
        wait_until("node-a and node-b linked", lambda: peers_up(client, a.agent_url) == ["node-b"], 30)
        peers = client.get(f"{a.agent_url}/mesh/peers").json()
        assert peers["admission"] == "admits the 1 other members' keys" and peers["refused"] == []
        assert metric(client, a.agent_url, "x0_peer_admission_keys") == 1

        rogue_dir = tmp_path / "rogue"
        rogue_conf, rogue_key = rogue_config(rogue_dir, a.listen_uri)
        with DaemonProcess(rogue_conf, log_path=rogue_dir / "rogue.log") as rogue:
            rogue.wait_ready()
            wait_until("node-a's agent reports the refused key", lambda: len(refused(client, a.agent_url)) > 0, 20)
            [seen] = refused(client, a.agent_url)
            assert seen["key"] == rogue_key and seen["address"] == address_for_key(rogue_key)
            assert str(seen["remote"]).startswith("127.0.0.1:") and int(seen["attempts"]) >= 1  # type: ignore[call-overload]
            assert metric(client, a.agent_url, "x0_peer_admission_refused_total") >= 1
            # It keeps dialling (about once a second) and never gets a link; node-b's link is untouched.
            wait_until("a second refused attempt", lambda: refused(client, a.agent_url)[0]["attempts"] >= 2, 10)  # type: ignore[operator]
            assert peers_up(client, a.agent_url) == ["node-b"]
            assert "refused a peer that is not a member: key " + rogue_key in a.log_path.read_text()

            # The rogue's key becomes a member's (an operator adds the node): node-a's daemon now admits it.
            assert mesh.members_path is not None
            members = json.loads(mesh.members_path.read_text())
            members["members"].append(
                {"node_id": "node-z", "agent_url": "http://127.0.0.1:9", "public_key": rogue_key}
            )
            if members.get("links") is not None:  # the mesh's plan is explicit: node-z becomes node-a's neighbour
                members["links"].append(["node-a", "node-z"])
            mesh.members_path.write_text(json.dumps(members))
            wait_until(
                "node-a admits the new member's key",
                lambda: (
                    sorted(json.loads(a.config_path.read_text())["AllowedPublicKeys"])
                    == sorted([b.public_key, rogue_key])
                ),
                10,
            )
            wait_until("the new member's link up at node-a", lambda: "node-z" in peers_up(client, a.agent_url), 20)
            wait_until(
                "node-b linked again after the restart", lambda: "node-b" in peers_up(client, a.agent_url), 20
            )
            restarted = "restarting yggdrasil: a planned neighbour's public key is not admitted yet"
            assert restarted in a.log_path.read_text()
