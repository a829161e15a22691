"""A small test fixture: real `x0-agent` processes, each supervising a real yggdrasil daemon on loopback.

Daemons use IfName "none" and tls:// listeners on free 127.0.0.1 ports; admin sockets live in the run
directory. Not a mesh launcher (that is agent.localmesh); just enough to test the agent process itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from agent.topology import plan_links
from agent.yggdrasil.daemon_config import create_config

AGENT_BIN = str(Path(sys.executable).with_name("x0-agent"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children_named(pid: int, name: str) -> list[int]:
    """Pids of direct children of `pid` whose command name is `name` (read from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == pid and comm == name:
            out.append(int(entry))
    return out


@dataclass
class AgentProcess:
    node_id: str
    port: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    members_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(
                [AGENT_BIN], env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def daemon_pid(self) -> int | None:
        assert self.proc is not None
        pids = children_named(self.proc.pid, "yggdrasil")
        return pids[0] if pids else None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"


@dataclass
class LoopbackMesh:
    run_dir: Path
    agents: dict[str, AgentProcess] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, node_id: str) -> AgentProcess:
        return self.agents[node_id]

    def stop(self) -> None:
        for agent in self.agents.values():
            with contextlib.suppress(Exception):
                agent.stop()
        # The daemons die with their agents (PR_SET_PDEATHSIG); make sure, by pid, even if an agent was killed.
        for agent in self.agents.values():
            if agent.proc is not None:
                for pid in children_named(agent.proc.pid, "yggdrasil"):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


def start_loopback_mesh(
    run_dir: Path, n: int = 3, topology: str = "full", extra_env: dict[str, str] | None = None
) -> LoopbackMesh:
    """Write configs and one members file per node (so a test can corrupt one node's copy), start the agents."""
    ids = [f"node-{chr(ord('a') + i)}" for i in range(n)]
    mesh = LoopbackMesh(run_dir)
    members = []
    nodes = []
    for node_id in ids:
        node_dir = run_dir / node_id
        node_dir.mkdir(parents=True)
        listen = f"tls://127.0.0.1:{free_port()}"
        admin = f"unix://{node_dir}/admin.sock"
        ident = create_config(node_dir / "yggdrasil.conf", node_id, admin_listen=admin, listen=[listen])
        mesh.keys[node_id] = ident.public_key
        port = free_port()
        members.append(
            {
                "node_id": node_id,
                "agent_url": f"http://127.0.0.1:{port}",
                "listen_uri": listen,
                "public_key": ident.public_key,
                "address": ident.address,
                "api_version": "0.4",
            }
        )
        nodes.append((node_id, node_dir, admin, port))
    doc = {"mesh": f"x0t-h2-{os.getpid()}", "members": members, "links": plan_links(ids, topology)}  # type: ignore[arg-type]
    for node_id, node_dir, admin, port in nodes:
        members_path = node_dir / "members.json"
        members_path.write_text(json.dumps(doc))
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin:/usr/sbin"),
            "NODE_ID": node_id,
            "LISTEN_HOST": "127.0.0.1",
            "LISTEN_PORT": str(port),
            "YGGDRASIL_CONFIG": str(node_dir / "yggdrasil.conf"),
            "YGGDRASIL_ADMIN": admin,
            "MESH_MEMBERS": str(members_path),
            "X0_DAEMON_RESTART_DELAY": "1",
            "LOG_LEVEL": "info",
            **(extra_env or {}),
        }
        mesh.agents[node_id] = AgentProcess(node_id, port, env, node_dir / "agent.log", members_path=members_path)
    try:
        for agent in mesh.agents.values():
            agent.start()
    except BaseException:
        mesh.stop()
        raise
    return mesh


def wait_for(predicate, timeout: float, interval: float = 0.05):
    """Poll `predicate()` until it returns a truthy value; returns it, or None at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except (httpx.HTTPError, OSError, ValueError):
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)
