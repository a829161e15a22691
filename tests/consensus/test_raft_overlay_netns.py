"""Raft rides the overlay with a members file shaped as Nomad's template writes it (issue 9): no key, no overlay
address, each member's raft_address on the underlay (X0_RAFT_TRANSPORT=overlay, as nomad/mesh.nomad.hcl sets it).
The agents learn each other's overlay addresses from their agents and bind Raft there, so a partitioned node is a
partitioned Raft member, as in the local meshes.

A members file without keys makes every daemon start open and restart once to close when the keys published
in the store arrive. All three restarted within 0.1 s of each other, dropping every overlay link and Raft's leader
with them: a write or read right then got a 503 after 2 s (once in 30 suite passes). The restarts now take turns
(2 s slots, no two neighbours together): the test checks they did, and that each daemon closed.

It also reproduces two defects of such a mesh (with either transport), fixed in agent/state.py and
agent/mapek/loop.py: the node that dials nobody could not tell which member each inbound link came from, and its
SWIM address book, built before its daemon answered, dropped its neighbours' probes; the mesh never became whole
("node-c did not come up: 0 of 2 planned peers up")."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from agent.localmesh import LocalMesh, MeshOptions
from tests.consensus.support import client, cluster, get, put, value_of, wait_leader
from tests.localmesh.support import wait_until

pytestmark = [pytest.mark.root, pytest.mark.yggdrasil, pytest.mark.slow]

NODES = ["node-a", "node-b", "node-c"]
RAFT_PORT = 8082
CLOSED = "admits the 2 other members' keys"
RESTART = "restarting yggdrasil: the daemon admits every key and the members' keys are now known"


def nomad_shaped(doc: dict) -> dict:
    """What the job's members template renders for these nodes: node_id, agent_url, listen_uri and raft_address
    (the allocation's address and Raft port), with the links kept."""
    members = []
    for m in doc["members"]:
        host = urlsplit(m["agent_url"]).hostname
        members.append(
            {
                "node_id": m["node_id"],
                "agent_url": m["agent_url"],
                "listen_uri": m["listen_uri"],
                "raft_address": f"{host}:{RAFT_PORT}",
            }
        )
    return {**doc, "members": members}


def test_nomad_shaped_members_put_raft_on_the_overlay(
    require_root: None, require_yggdrasil: str, require_nft: str, tmp_path: Path
) -> None:
    opts = MeshOptions(nodes=3, mode="netns", run_dir=tmp_path, agent_env={"X0_RAFT_TRANSPORT": "overlay"})
    with LocalMesh(opts) as mesh, client() as http:
        for node in NODES:
            mesh.stop_node(node)
            shutil.rmtree(mesh.node(node).dir / "raft", ignore_errors=True)
        doc = nomad_shaped(json.loads(mesh.members_path.read_text()))
        assert not any("address" in m or "public_key" in m for m in doc["members"])
        mesh.members_path.write_text(json.dumps(doc))
        for node in NODES:
            mesh.start_node(node, wait=False)
        mesh.wait_healthy()

        wait_leader(http, mesh, NODES, 30.0)

        # Each daemon started open and closes once every key is published: one restart each, on its own turn.
        def restarted_at(node: str) -> float | None:
            for line in mesh.node(node).log_path.read_text(errors="replace").splitlines():
                if RESTART in line:
                    stamp = re.match(r"(\S+ \S+),(\d+)", line)
                    assert stamp, line
                    return time.mktime(time.strptime(stamp[1], "%Y-%m-%d %H:%M:%S")) + int(stamp[2]) / 1000
            return None

        def closed(node: str) -> bool:
            admission = http.get(f"{mesh.node(node).agent_url}/mesh/peers").json()["admission"]
            return restarted_at(node) is not None and admission == CLOSED

        wait_until("every daemon closed admission", lambda: all(closed(n) for n in NODES), 30)
        times = sorted(t for n in NODES if (t := restarted_at(n)) is not None)
        assert all(b - a >= 1.5 for a, b in itertools.pairwise(times)), times
        time.sleep(max(0.0, times[-1] + 1.0 - time.time()))  # the last restart has dropped its links by then
        mesh.wait_healthy()
        leader = wait_leader(http, mesh, NODES, 30.0)
        for node in NODES:
            view = cluster(http, mesh, node)
            addresses = {m["node_id"]: m["raft_address"] for m in view["members"]}
            expected = {n: f"{mesh.node(n).yggdrasil_address}:{RAFT_PORT}" for n in NODES}
            assert addresses == expected, (node, view["detail"])
        # Bound on the overlay address only: nothing listens on the underlay address the members file names.
        out = mesh.run_in_node(leader, ["ss", "-Htln", f"sport = :{RAFT_PORT}"]).stdout
        assert mesh.node(leader).yggdrasil_address in out, out
        underlay = urlsplit(mesh.node(leader).agent_url).hostname
        assert f"{underlay}:{RAFT_PORT}" not in out and "0.0.0.0" not in out, out
        # And the store works through it, from every node.
        for i, node in enumerate(NODES):
            r = put(http, mesh, node, f"overlay/{i}", node.encode())
            assert r.status_code == 200, (node, r.status_code, r.text)
        for node in NODES:
            r = get(http, mesh, node, "overlay/0")
            assert r.status_code == 200 and value_of(r) == b"node-a", (node, r.status_code, r.text)
