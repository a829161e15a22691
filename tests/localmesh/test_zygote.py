"""Agents forked from the zygote: each one inside its own node's namespace with its own environment, restarted
by the zygote after a node loss, and started as processes of their own once the zygote is gone."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from agent.localmesh import LocalMesh, LocalMeshError, MeshOptions
from agent.localmesh.procs import alive
from agent.localmesh.zygote import Zygote, ZygoteError
from tests.localmesh.support import http_client, leftovers, wait_until

pytestmark = [pytest.mark.yggdrasil, pytest.mark.slow]


def _ppid(pid: int) -> int:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return int(raw[raw.rindex(")") + 2 :].split()[1])


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _healthy(mesh: LocalMesh, node_id: str) -> dict[str, object]:
    with http_client() as client:
        resp = client.get(f"{mesh.node(node_id).agent_url}/health")
    assert resp.status_code == 200, resp.text
    body: dict[str, object] = resp.json()
    return body


def test_forked_agents_run_in_their_own_namespace_and_come_back_after_a_node_loss(
    require_root: None, require_yggdrasil: str, tmp_path: Path
) -> None:
    with LocalMesh(MeshOptions(nodes=2, mode="netns", run_dir=tmp_path)) as mesh:
        zygotes = set()
        for node in mesh.nodes:
            pid = mesh.agent_pid(node.id)
            assert pid is not None
            zygote = _ppid(pid)
            assert "agent.localmesh.zygote" in _cmdline(zygote)
            zygotes.add(zygote)
            assert node.netns is not None
            assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{node.netns}").st_ino
            assert _healthy(mesh, node.id)["node_id"] == node.id  # its own NODE_ID, not the zygote's environment
            # The daemon it supervises is its child, in the same namespace.
            daemon = mesh.daemon_pid(node.id)
            assert daemon is not None and _ppid(daemon) == pid
            assert os.stat(f"/proc/{daemon}/ns/net").st_ino == os.stat(f"/proc/{pid}/ns/net").st_ino
            assert "starting x0-agent serve, forked from zygote" in node.log_path.read_text()
        assert len(zygotes) == 1

        old = mesh.agent_pid("node-b")
        mesh.stop_node("node-b")
        assert not mesh.is_running("node-b")
        mesh.start_node("node-b")
        new = mesh.agent_pid("node-b")
        assert new is not None and new != old and _ppid(new) in zygotes
        _healthy(mesh, "node-b")
    assert leftovers(mesh.id, mesh.mesh_dir) == []


def test_without_the_zygote_agents_start_as_processes_of_their_own(require_yggdrasil: str, tmp_path: Path) -> None:
    with LocalMesh(MeshOptions(nodes=2, mode="loopback", run_dir=tmp_path)) as mesh:
        first = mesh.agent_pid("node-a")
        assert first is not None
        zygote = _ppid(first)
        os.kill(zygote, signal.SIGKILL)
        # Its children get SIGTERM from the kernel and stop as asked; the mesh sees them gone.
        wait_until("agents gone with their zygote", lambda: not any(map(mesh.is_running, mesh.node_ids)), 15.0)
        assert not alive(first)
        for node_id in mesh.node_ids:  # /health wants the planned peer up: both, then wait
            mesh.start_node(node_id, wait=False)
        mesh.wait_healthy()
        for node in mesh.nodes:
            pid = mesh.agent_pid(node.id)
            assert pid is not None and _ppid(pid) == os.getpid()
            last_start = node.log_path.read_text().rsplit("---", 1)[1]
            assert "x0 local-mesh: starting" in last_start and "forked from zygote" not in last_start
    assert leftovers(mesh.id, mesh.mesh_dir) == []


def test_a_forked_agent_that_fails_at_start_fails_the_start_with_its_exit_code(
    require_yggdrasil: str, tmp_path: Path
) -> None:
    mesh = LocalMesh(
        MeshOptions(nodes=1, mode="loopback", run_dir=tmp_path, agent_env={"X0_MONITOR_INTERVAL": "often"})
    )
    with pytest.raises(LocalMeshError, match=r"(?s)node-a: agent exited with code 2 .*X0_MONITOR_INTERVAL"):
        mesh.start()
    assert "forked from zygote" in mesh.node("node-a").log_path.read_text()
    assert leftovers(mesh.id, mesh.mesh_dir) == []


def test_a_zygote_that_cannot_import_the_agent_says_why(tmp_path: Path) -> None:
    broken = tmp_path / "shadow" / "agent"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('this agent package is broken on purpose')\n")
    # PYTHONSAFEPATH: `python -m` would otherwise put the working directory (this checkout) first.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(broken.parent)}
    env["PYTHONSAFEPATH"] = "1"
    with pytest.raises(ZygoteError, match=r"exited before it was ready \(code 1\): .*broken on purpose"):
        Zygote(env, str(tmp_path / "zygote.log")).start(timeout=30)
