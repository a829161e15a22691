"""Teardown leaves nothing: after a normal exit, an exception, a failed start, SIGTERM/SIGINT to the CLI, and
`--cleanup` after the owner was SIGKILLed (without touching a live mesh)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.localmesh import LocalMesh, LocalMeshError, MeshOptions, netns
from agent.localmesh.mesh import agent_command
from tests.localmesh.support import http_client, leftovers, wait_until

pytestmark = [pytest.mark.yggdrasil, pytest.mark.slow]


def _cli(*args: str) -> list[str]:
    return [*agent_command(), "local-mesh", *args]


def _wait_for_line(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = path.read_text() if path.exists() else ""
        if text in out:
            return out
        if proc.poll() is not None:
            raise AssertionError(f"local-mesh exited {proc.returncode} before printing {text!r}:\n{out}")
        time.sleep(0.1)
    raise AssertionError(f"local-mesh did not print {text!r} within {timeout:g} s")


def test_context_exit_leaves_nothing(require_root: None, require_yggdrasil: str, tmp_path: Path) -> None:
    with LocalMesh(MeshOptions(nodes=2, mode="netns", run_dir=tmp_path)) as mesh:
        inventory = mesh.inventory_path
        assert inventory is not None and inventory.exists()
        during = leftovers(mesh.id, mesh.mesh_dir)
        # The check can see a mesh: namespaces, veths, bridge, agents, daemons, sockets, record.
        assert len([x for x in during if x.startswith("netns ")]) == 2
        assert any(x.startswith("link x0b") for x in during) and any(x.startswith("socket ") for x in during)
        assert any("(yggdrasil)" in x for x in during) and any("(marked)" in x for x in during)
        exiting = time.monotonic()
    print(f"\nnetns 2-node teardown took {time.monotonic() - exiting:.2f} s")
    assert leftovers(mesh.id, mesh.mesh_dir) == []
    assert not inventory.exists() and not mesh.sd_path.exists()  # type: ignore[union-attr]
    assert (mesh.mesh_dir / "node-a" / "agent.log").exists()  # logs stay for the post-mortem


def test_exception_inside_with_leaves_nothing(require_root: None, require_yggdrasil: str, tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError, match="test failure"),
        LocalMesh(MeshOptions(nodes=2, mode="netns", run_dir=tmp_path)) as mesh,
    ):
        assert mesh.daemon_pid("node-b") is not None
        raise RuntimeError("test failure inside the with block")
    assert leftovers(mesh.id, mesh.mesh_dir) == []


def test_agent_that_dies_at_start_fails_start_and_leaves_nothing(
    require_root: None, require_yggdrasil: str, tmp_path: Path
) -> None:
    dying = [sys.executable, "-c", "import sys; print('agent refuses to start'); sys.exit(3)"]
    mesh = LocalMesh(MeshOptions(nodes=2, mode="netns", run_dir=tmp_path, agent_command=dying))
    with pytest.raises(
        LocalMeshError, match=r"(?s)node-[ab]: agent exited with code 3 .*\n    agent refuses to start"
    ):
        mesh.start()
    assert leftovers(mesh.id, mesh.mesh_dir) == []


def test_agent_that_never_answers_times_out_naming_the_node_and_leaves_nothing(
    require_yggdrasil: str, tmp_path: Path
) -> None:
    # Stands in for an agent that hangs: it never listens. The mesh must name it, then kill it.
    hanging = [sys.executable, "-c", "import time; time.sleep(120)"]
    mesh = LocalMesh(
        MeshOptions(nodes=2, mode="loopback", run_dir=tmp_path, agent_command=hanging, start_timeout=1.5)
    )
    with pytest.raises(LocalMeshError, match=r"node-a, node-b did not come up: node-a's /health .* within 1.5 s"):
        mesh.start()
    assert leftovers(mesh.id, mesh.mesh_dir) == []


def test_cli_sigterm_during_start_exits_0_and_leaves_nothing(
    require_root: None, require_yggdrasil: str, tmp_path: Path
) -> None:
    inventory = tmp_path / "inv.json"
    out = tmp_path / "out.txt"
    with out.open("wb") as fh:
        proc = subprocess.Popen(
            _cli("--nodes", "2", "--run-dir", str(tmp_path), "--inventory", str(inventory)),
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until("inventory written", inventory.exists, timeout=30.0, interval=0.02)
        inv = json.loads(inventory.read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert inv["mode"] == "netns" and len(inv["nodes"]) == 2
    mesh_id = inv["mesh"].removeprefix("local-")
    assert leftovers(mesh_id, Path(inv["mesh_dir"])) == []
    assert not inventory.exists() and not Path(inv["prometheus_sd_file"]).exists()
    assert "nothing left behind" in out.read_text()


def test_cli_ctrl_c_after_start_exits_0_and_leaves_nothing(require_yggdrasil: str, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    with out.open("wb") as fh:
        proc = subprocess.Popen(
            _cli("--loopback", "--nodes", "2", "--run-dir", str(tmp_path)), stdout=fh, stderr=subprocess.STDOUT
        )
    try:
        text = _wait_for_line(out, "Ctrl-C or SIGTERM stops everything", proc, 60.0)
        inv_path = Path(text.split("inventory:", 1)[1].split()[0])
        inv = json.loads(inv_path.read_text())
        with http_client() as client:
            for node in inv["nodes"]:
                assert client.get(f"{node['agent_url']}/health").status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert leftovers(inv["mesh"].removeprefix("local-"), Path(inv["mesh_dir"])) == []


def test_cleanup_removes_a_dead_owners_mesh_and_keeps_a_live_one(
    require_root: None, require_yggdrasil: str, tmp_path: Path
) -> None:
    out = tmp_path / "out.txt"
    with out.open("wb") as fh:
        owner = subprocess.Popen(
            _cli("--netns", "--nodes", "2", "--run-dir", str(tmp_path / "dead")),
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        text = _wait_for_line(out, "Ctrl-C or SIGTERM stops everything", owner, 60.0)
    finally:
        owner.kill()  # no teardown: the crash --cleanup exists for
        owner.wait()
    inv = json.loads(Path(text.split("inventory:", 1)[1].split()[0]).read_text())
    dead_id, dead_dir = inv["mesh"].removeprefix("local-"), Path(inv["mesh_dir"])
    assert any(x.startswith("netns ") for x in leftovers(dead_id, dead_dir))

    with LocalMesh(MeshOptions(nodes=1, mode="netns", run_dir=tmp_path / "live")) as live:
        res = subprocess.run(_cli("--cleanup"), capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"removed local-{dead_id}" in res.stdout
        assert f"kept    local-{live.id}" in res.stdout
        assert leftovers(dead_id, dead_dir) == []
        node = live.node("node-a")
        assert node.netns in netns.list_netns()
        with http_client() as client:
            assert client.get(f"{node.agent_url}/health").status_code == 200
    assert leftovers(live.id, live.mesh_dir) == []


def test_deep_run_dir_puts_sockets_in_a_short_dir_and_removes_it(require_yggdrasil: str, tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)  # admin.sock here would not fit in a UNIX socket path (108 bytes)
    with LocalMesh(MeshOptions(nodes=1, mode="loopback", run_dir=deep)) as mesh:
        sock = mesh.node("node-a").admin_endpoint.removeprefix("unix://")
        assert sock == f"/tmp/x0-{mesh.id}/a.sock" and Path(sock).is_socket()
        assert mesh.daemon_pid("node-a") is not None
    assert not Path(sock).parent.exists()
    assert leftovers(mesh.id, mesh.mesh_dir) == []
