"""A hung daemon's `daemon_down` incident says that it hangs, not why an admin call failed long before.

Reproduces a 20-node formation: every agent's first snapshot failed (its daemon was still starting: "no admin
socket ... (daemon not running?)"); later one admin call took over 2 s under load, MAPE-K opened `daemon_down`,
and its detail was that first error, with the daemon running all along."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from agent.yggdrasil.daemon_config import create_config
from tests.agent.service.agentproc import AgentProcess, daemonless_env, free_port, wait_for

pytestmark = [pytest.mark.yggdrasil, pytest.mark.slow]


def test_a_hung_daemon_is_reported_as_hung_not_with_an_old_error(require_yggdrasil: str, tmp_path: Path) -> None:
    sock = tmp_path / "absent.sock"  # the agent's admin endpoint (daemonless_env): nothing there yet
    env = daemonless_env("node-a", free_port(), tmp_path, X0_ADMIN_TIMEOUT="6", X0_MONITOR_INTERVAL="0.5")
    agent = AgentProcess("node-a", int(env["LISTEN_PORT"]), env, tmp_path / "agent.log")
    config = tmp_path / "ygg.conf"
    create_config(config, "node-a", admin_listen=f"unix://{sock}", binary=require_yggdrasil)
    daemon: subprocess.Popen[bytes] | None = None
    agent.start()
    client = httpx.Client(trust_env=False, timeout=3.0)
    try:

        def mapek() -> dict[str, object]:
            body: dict[str, object] = client.get(f"{agent.url}/mapek").json()
            return body

        assert wait_for(lambda: "AdminUnavailable" in agent.log(), 15), agent.log()
        with open(tmp_path / "ygg.log", "ab") as log:
            daemon = subprocess.Popen(
                [require_yggdrasil, "-useconffile", str(config)], stdout=log, stderr=subprocess.STDOUT
            )

        def answering() -> bool:
            checks = client.get(f"{agent.url}/health").json()["checks"]
            return any(c["name"] == "yggdrasil" and c["ok"] for c in checks)

        assert wait_for(answering, 15), agent.log()
        os.kill(daemon.pid, signal.SIGSTOP)  # the socket accepts, nothing answers: a call pends for 6 s

        def daemon_down() -> dict[str, object] | None:
            found = [i for i in mapek()["active_incidents"] if i["kind"] == "daemon_down"]  # type: ignore[union-attr,index]
            return found[0] if found else None

        incident = wait_for(daemon_down, 5.5)
        assert incident is not None, agent.log()
        detail = str(incident["detail"])
        assert "AdminUnavailable" not in detail and "daemon not running" not in detail, detail
        assert "(daemon hung?)" in detail, detail
    finally:
        if daemon is not None:
            os.kill(daemon.pid, signal.SIGCONT)
            daemon.terminate()
            daemon.wait(10)
        agent.stop()
        client.close()
