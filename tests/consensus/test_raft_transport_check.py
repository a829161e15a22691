"""X0_RAFT_TRANSPORT=overlay where the daemon has no TUN (IfName none): Raft must say why it does not start, not
retry a bind that cannot succeed while every write answers an unexplained 503."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.consensus.service import address_is_local
from agent.localmesh import LocalMesh, MeshOptions
from tests.consensus.support import client, cluster
from tests.localmesh.support import wait_until

TOKEN = "transport-check-token"


def test_address_is_local() -> None:
    assert address_is_local("127.0.0.1")
    assert address_is_local("::1")
    # A Yggdrasil address no interface here holds (this test host has no TUN with it).
    assert not address_is_local("200:1:2:3:4:5:6:7")


@pytest.mark.skipif(not Path("/usr/sbin/yggdrasil").exists(), reason="needs the yggdrasil binary")
def test_overlay_transport_without_tun_names_the_setting(tmp_path: Path) -> None:
    opts = MeshOptions(
        nodes=1,
        mode="loopback",  # daemons with IfName none: an overlay address no interface holds
        run_dir=tmp_path,
        api_token=TOKEN,
        agent_env={"X0_RAFT_TRANSPORT": "overlay", "X0_MAPEK_ENABLED": "false"},
    )
    with LocalMesh(opts) as mesh, client() as c:
        node = mesh.node_ids[0]
        wait_until(
            "a /cluster detail naming the setting",
            lambda: "X0_RAFT_TRANSPORT" in cluster(c, mesh, node)["detail"],
            20.0,
        )
        view = cluster(c, mesh, node)
        assert view["role"] == "client"
        assert "IfName none" in view["detail"] and "X0_RAFT_TRANSPORT=auto" in view["detail"]
        r = c.put(f"{mesh.node(node).agent_url}/kv/a", content=b"1", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 503, r.text
        assert "X0_RAFT_TRANSPORT=overlay" in r.json()["detail"], r.text
        log = mesh.node(node).log_path.read_text()
        assert log.count("no interface of this host holds the overlay address") == 1, log[-2000:]
