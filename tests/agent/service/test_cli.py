"""The real `x0-agent` process refuses bad start conditions with a clear message and the documented exit code."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.agent.service.agentproc import AGENT_BIN, free_port


def run_agent(env: dict[str, str], *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return subprocess.run([AGENT_BIN, *args], env={**base, **env}, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "NODE_ID"),
        ({"NODE_ID": "Bad_Id"}, "NODE_ID"),
        ({"NODE_ID": "node-a", "LISTEN_PORT": "eighty"}, "LISTEN_PORT"),
        ({"NODE_ID": "node-a", "X0_MONITOR_INTERVAL": "-1"}, "X0_MONITOR_INTERVAL"),
        ({"NODE_ID": "node-a", "YGGDRASIL_ADMIN": "ftp://x"}, "YGGDRASIL_ADMIN"),
        ({"NODE_ID": "node-a", "YGGDRASIL_CONFIG": "/nonexistent.conf"}, "YGGDRASIL_CONFIG"),
        ({"NODE_ID": "node-a", "LISTEN_HOST": "192.0.2.1"}, "LISTEN_HOST"),  # not an address of this host
    ],
)
def test_invalid_configuration_exits_2_naming_the_variable(env: dict[str, str], variable: str) -> None:
    proc = run_agent({"LISTEN_PORT": str(free_port()), **env})
    assert proc.returncode == 2, proc
    assert "invalid configuration" in proc.stderr and variable in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_yggdrasil_binary_exits_2(tmp_path: Path) -> None:
    conf = tmp_path / "ygg.conf"
    conf.write_text("{}")
    proc = run_agent(
        {"NODE_ID": "node-a", "YGGDRASIL_CONFIG": str(conf), "YGGDRASIL_BIN": str(tmp_path / "no-such-yggdrasil")}
    )
    assert proc.returncode == 2, proc
    assert "YGGDRASIL_BIN" in proc.stderr and "not found" in proc.stderr, proc.stderr
    # and with no binary anywhere on PATH nor at the Debian path is the same message (only checkable without one)
    if not os.path.exists("/usr/sbin/yggdrasil"):
        proc = run_agent({"NODE_ID": "node-a", "YGGDRASIL_CONFIG": str(conf), "PATH": str(tmp_path)})
        assert proc.returncode == 2 and "YGGDRASIL_BIN" in proc.stderr


def test_port_in_use_exits_1_with_a_clear_message() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = run_agent({"NODE_ID": "node-a", "LISTEN_HOST": "127.0.0.1", "LISTEN_PORT": str(port)})
    assert proc.returncode == 1, proc
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_documents_the_environment() -> None:
    proc = run_agent({}, "--help")
    assert proc.returncode == 0
    for word in ["NODE_ID", "YGGDRASIL_CONFIG", "MESH_MEMBERS", "docs/contracts.md", "local-mesh", "exit codes"]:
        assert word in proc.stdout, word
    assert run_agent({}, "--version").stdout.startswith("x0-agent ")
    bad = run_agent({}, "frobnicate")
    assert bad.returncode == 2 and "unknown command 'frobnicate'" in bad.stderr


def test_agent_without_daemon_serves_503_and_names_yggdrasil(tmp_path: Path) -> None:
    """Unsupervised, daemon absent: the agent still starts and says why it is unhealthy (no crash, no 500)."""
    import httpx

    from tests.agent.service.agentproc import AgentProcess, daemonless_env, wait_for

    port = free_port()
    env = daemonless_env("node-a", port, tmp_path)
    agent = AgentProcess("node-a", port, env, tmp_path / "agent.log")
    agent.start()
    try:
        r = wait_for(lambda: httpx.get(agent.url + "/health", timeout=2), timeout=15)
        assert r is not None, agent.log()
        body = r.json()
        assert r.status_code == 503 and body["status"] == "fail"
        ygg = next(c for c in body["checks"] if c["name"] == "yggdrasil")
        assert not ygg["ok"] and "AdminUnavailable" in ygg["detail"] and "absent.sock" in ygg["detail"]
        status = httpx.get(agent.url + "/mesh/status", timeout=2)
        assert status.status_code == 503 and status.json()["status_code"] == 503
        assert "no daemon snapshot yet" in status.json()["detail"]
    finally:
        agent.stop()
    assert agent.proc is not None and agent.proc.returncode == 0, agent.log()


def test_a_mistyped_command_suggests_local_mesh_and_exits_2() -> None:
    # Issue 12 item 7: `x0-agent lcoal-mesh` only offered "serve".
    proc = run_agent({}, "lcoal-mesh")
    assert proc.returncode == 2, proc
    assert "did you mean 'local-mesh'?" in proc.stderr and "serve, local-mesh" in proc.stderr
    assert "serve | local-mesh" in proc.stderr  # the usage line names both commands


@pytest.mark.parametrize("count", ["0", "101", "three"])
def test_local_mesh_bad_node_count_is_a_usage_error_exit_2(count: str, tmp_path: Path) -> None:
    # Issue 12 item 7: `local-mesh --nodes 0` printed "starting 0 nodes" and exited 1 (bad arguments exit 2).
    proc = run_agent({}, "local-mesh", "--nodes", count, "--run-dir", str(tmp_path))
    assert proc.returncode == 2, proc
    assert "argument --nodes" in proc.stderr and "starting" not in proc.stdout
    assert not any(tmp_path.iterdir())
