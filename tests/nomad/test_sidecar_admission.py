"""Peer admission as the Nomad job runs it (issue 11): the daemon is the yggdrasil task's run-yggdrasil.sh
(rendered from nomad/mesh.nomad.hcl), the agent does not run it, and the members file carries no keys (as the
template writes it). Each agent publishes its daemon's key in the replicated store, writes the members' published
keys to the file the script merges into AllowedPublicKeys, and asks the script to restart the daemon; then a rogue
daemon with a fresh key dialling a node's listener gets no link, and that node's agent reports it from the task's
log.

Real daemons and agents on loopback (no root needed); Nomad itself is not run (it cannot be installed here): the
templates are rendered with the environment Nomad gives a task, as in test_jobspec.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from agent.localmesh.procs import daemon_pids
from agent.yggdrasil.daemon import DaemonProcess
from tests.agent.yggdrasil.support import rogue_config
from tests.localmesh.support import daemon_peer_keys, http_client, peers_up, wait_until
from tests.nomad import jobspec as js
from tests.nomad.test_jobspec import LOCALS, TASKS, VARS, _free_port, _render_env_only

pytestmark = [pytest.mark.yggdrasil, pytest.mark.slow]

TOKEN = "sidecar-admission-test-token"


@dataclass
class Node:
    node_id: str
    alloc: Path  # the allocation dir (NOMAD_ALLOC_DIR's parent: alloc/, yggdrasil/, agent/)
    peer_port: int
    agent_port: int
    raft_port: int

    @property
    def shared(self) -> Path:
        return self.alloc / "alloc"

    @property
    def agent_url(self) -> str:
        return f"http://127.0.0.1:{self.agent_port}"

    @property
    def keys_file(self) -> Path:
        return self.shared / "data" / "allowed-keys.json"

    @property
    def daemon_log(self) -> Path:
        return self.shared / "logs" / "yggdrasil.stdout.0"


def _render_yggdrasil_task(node: Node, yggdrasil: str) -> dict[str, str]:
    local, secrets = node.alloc / "yggdrasil" / "local", node.alloc / "yggdrasil" / "secrets"
    for d in (node.shared / "data", node.shared / "logs", local, secrets):
        d.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "YGGDRASIL_BIN": yggdrasil,
        "NOMAD_ALLOC_DIR": str(node.shared),
        "NOMAD_TASK_DIR": str(local),
        "NOMAD_SECRETS_DIR": str(secrets),
        "NOMAD_ADDR_peer": f"127.0.0.1:{node.peer_port}",
    }
    variables = dict(VARS, yggdrasil_ifname="none")
    for tpl in TASKS["yggdrasil"]["template"]:
        dest = node.alloc / "yggdrasil" / tpl["destination"]
        dest.write_text(_render_env_only(js.evaluate(tpl["data"], variables, LOCALS), env))
        if tpl.get("perms"):
            dest.chmod(int(tpl["perms"], 8))
    return env


def _job_env(name: str, node: Node) -> str:
    """One variable of the agent task's env block as Nomad would give it to this node's agent."""
    [block] = TASKS["agent"]["env"]
    return js.evaluate(block[name], VARS, LOCALS).replace("${NOMAD_ALLOC_DIR}", str(node.shared))


def _agent_env(node: Node, members: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("X0_", "YGGDRASIL_")) and "proxy" not in k.lower()
    }
    env.update(
        NODE_ID=node.node_id,
        LISTEN_HOST="127.0.0.1",
        LISTEN_PORT=str(node.agent_port),
        MESH_MEMBERS=str(members),
        X0_API_TOKEN=TOKEN,
        X0_RAFT_PORT=str(node.raft_port),
        X0_MAPEK_ENABLED="false",
    )
    # Where the daemon's socket, log and keys file are: the job's own values, so the test fails if the agent's
    # env and run-yggdrasil.sh stop agreeing.
    for name in ("YGGDRASIL_ADMIN", "X0_RAFT_DIR", "X0_DAEMON_LOG", "X0_ADMISSION_FILE"):
        env[name] = _job_env(name, node)
    assert env["X0_ADMISSION_FILE"] == str(node.keys_file) and env["X0_DAEMON_LOG"] == str(node.daemon_log)
    return env


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """As Nomad stops a task: SIGTERM, then the whole task (its process group) killed after a grace period."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(8)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(5)


@pytest.fixture
def nomad_like_mesh(require_yggdrasil: str, tmp_path: Path) -> Iterator[list[Node]]:
    nodes = [
        Node(f"node-{x}", tmp_path / f"alloc-{x}", _free_port(), _free_port(), _free_port()) for x in ("a", "b")
    ]
    # The members file as the Nomad template writes it: no public_key, no links.
    members = tmp_path / "members.json"
    members.write_text(
        json.dumps(
            {
                "mesh": "x0-mesh",
                "members": [
                    {
                        "node_id": n.node_id,
                        "agent_url": n.agent_url,
                        "host": f"nomad-{n.node_id}",
                        "raft_address": f"127.0.0.1:{n.raft_port}",
                        "listen_uri": f"tls://127.0.0.1:{n.peer_port}",
                    }
                    for n in nodes
                ],
            }
        )
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for n in nodes:
            env = _render_yggdrasil_task(n, require_yggdrasil)
            with n.daemon_log.open("ab") as log:
                procs.append(
                    subprocess.Popen(
                        ["/bin/sh", str(n.alloc / "yggdrasil" / "local" / "run-yggdrasil.sh")],
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        for n in nodes:
            with (n.shared / "logs" / "agent.stderr.0").open("ab") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "agent.cli", "serve"],
                        env=_agent_env(n, members),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        yield nodes
    finally:
        for p in reversed(procs):
            _stop(p)
    for n in nodes:
        assert daemon_pids(n.alloc) == [], f"{n.node_id}: a daemon outlived its task"


def _admitted_by_running_daemon(node: Node) -> list[str] | None:
    try:
        return json.loads((node.keys_file.parent / (node.keys_file.name + ".running")).read_text())
    except (OSError, ValueError):
        return None


def _self_key(client: httpx.Client, node: Node) -> str | None:
    try:
        return client.get(f"{node.agent_url}/mesh/status").json()["key"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def test_daemons_run_by_the_job_admit_exactly_the_published_member_keys(
    nomad_like_mesh: list[Node], tmp_path: Path
) -> None:
    a, b = nomad_like_mesh
    with http_client() as client:
        wait_until(
            "both agents read their daemons", lambda: None not in (_self_key(client, a), _self_key(client, b)), 40
        )
        key_a, key_b = _self_key(client, a), _self_key(client, b)
        assert key_a and key_b and key_a != key_b

        # Each node published its own key; both read both back from the store.
        def published(node: Node, of: Node) -> str | None:
            r = client.get(f"{node.agent_url}/kv/x0/keys/{of.node_id}", params={"stale": "true", "raw": "true"})
            return json.loads(r.content)["public_key"] if r.status_code == 200 else None

        wait_until(
            "both keys published in the store", lambda: published(a, b) == key_b and published(b, a) == key_a, 40
        )

        # The agents wrote the keys files and the script restarted each daemon with its list.
        wait_until("node-a's daemon admits node-b's key", lambda: _admitted_by_running_daemon(a) == [key_b], 30)
        wait_until("node-b's daemon admits node-a's key", lambda: _admitted_by_running_daemon(b) == [key_a], 30)
        conf_a = json.loads((a.alloc / "yggdrasil" / "secrets" / "yggdrasil.conf").read_text())
        assert conf_a["AllowedPublicKeys"] == [key_b]
        assert "run-yggdrasil: restarting yggdrasil: the daemon admits every key" in a.daemon_log.read_text()
        wait_until(
            "node-a and node-b linked after the restarts", lambda: peers_up(client, a.agent_url) == ["node-b"], 30
        )
        peers = client.get(f"{a.agent_url}/mesh/peers").json()
        assert peers["admission"].startswith("admits the 1 other members' keys (through ")

        # A daemon with a fresh key dials node-a's listener: no link, and node-a's agent reports it.
        rogue_dir = tmp_path / "rogue"
        rogue_conf, rogue_key = rogue_config(rogue_dir, f"tls://127.0.0.1:{a.peer_port}")
        with DaemonProcess(rogue_conf, log_path=rogue_dir / "rogue.log") as rogue:
            rogue.wait_ready()

            def refused() -> list[dict[str, object]]:
                return client.get(f"{a.agent_url}/mesh/peers").json()["refused"]

            wait_until("node-a's agent reports the rogue's refused key", lambda: len(refused()) > 0, 20)
            assert refused()[0]["key"] == rogue_key
            # Its key is not among the links node-a's daemon lists, and node-b's link is there (maybe once more:
            # node-b learns node-a's key up to one directory refresh later and restarts its daemon then).
            assert rogue_key not in daemon_peer_keys(f"unix://{a.shared}/yggdrasil.sock")
            wait_until("node-a linked to node-b", lambda: peers_up(client, a.agent_url) == ["node-b"], 20)
