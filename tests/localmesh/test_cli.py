"""`x0-agent local-mesh` refuses bad starts with a message and a non-zero exit, before creating anything."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from agent.localmesh import registry
from agent.localmesh.mesh import agent_command


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*agent_command(), "local-mesh", *args], capture_output=True, text=True, timeout=60, env=env
    )


def _records() -> set[str]:
    return {r.id for r in registry.load_all()}


def test_help_answers_operators_questions() -> None:
    res = _run("--help")
    assert res.returncode == 0
    for needle in (
        "--netns",
        "--loopback",
        "--inventory",
        "--base-port",
        "--cleanup",
        "Ctrl-C",
        "0600",
        "prometheus-targets.json",
        "X0_API_TOKEN",
        "exit status",
        "10.213.N.0/24",
        "first node",
    ):
        assert needle in res.stdout, needle


def test_busy_port_in_loopback_is_refused_with_the_port_named(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        before = _records()
        res = _run("--loopback", "--nodes", "2", "--base-port", str(busy), "--run-dir", str(tmp_path))
    assert res.returncode == 1
    assert f"port {busy} on 127.0.0.1 is already in use" in res.stderr
    assert "--base-port" in res.stderr
    assert "Traceback" not in res.stderr
    assert not any(tmp_path.iterdir())  # refused before creating anything
    assert _records() - before == set()


def test_missing_yggdrasil_binary_is_refused(tmp_path: Path) -> None:
    env = dict(os.environ, YGGDRASIL_BIN="/nonexistent/yggdrasil")
    res = _run("--loopback", "--nodes", "2", "--run-dir", str(tmp_path), env=env)
    assert res.returncode == 1
    assert "/nonexistent/yggdrasil" in res.stderr and "not found" in res.stderr
    assert "apt-get install yggdrasil" in res.stderr
    assert "Traceback" not in res.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--loopback", "--base-port", "65530", "--nodes", "4"], "must fit in 1-65535"),
    ],
)
def test_bad_arguments_are_refused(args: list[str], message: str, tmp_path: Path) -> None:
    res = _run(*args, "--run-dir", str(tmp_path))
    assert res.returncode == 1 and message in res.stderr, res.stderr


def test_unknown_topology_is_a_usage_error() -> None:
    res = _run("--topology", "star")
    assert res.returncode == 2 and "invalid choice: 'star'" in res.stderr


def test_netns_without_root_is_refused(tmp_path: Path) -> None:
    prefix: list[str] = []
    if os.geteuid() == 0:
        # A new user namespace with no uid mapping: the CLI sees euid 65534 (not root) while the files keep being
        # read with this process's own credentials, so an unreadable checkout or venv cannot hide the test.
        unshare = shutil.which("unshare")
        if unshare is None:
            pytest.skip("unshare (util-linux) not found: cannot run the CLI as a non-root user")
        prefix = [unshare, "--user"]
    res = subprocess.run(
        [*prefix, *agent_command(), "local-mesh", "--netns"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert res.returncode == 1
    assert "--netns needs root" in res.stderr and "--loopback" in res.stderr
