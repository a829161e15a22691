"""Run one real `x0-agent` process with a given environment (start failures, an agent without a daemon).

Meshes of agents beside daemons come from agent.localmesh.LocalMesh; this is only for the cases it does not
cover (an agent with no daemon at all, a bad environment).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx

T = TypeVar("T")
AGENT_BIN = str(Path(sys.executable).with_name("x0-agent"))


def daemonless_env(node_id: str, port: int, run_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of an agent whose daemon is absent (its admin socket path exists nowhere), listening on
    loopback at `port`; `extra` adds or overrides variables."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "NODE_ID": node_id,
        "LISTEN_HOST": "127.0.0.1",
        "LISTEN_PORT": str(port),
        "YGGDRASIL_ADMIN": f"unix://{run_dir}/absent.sock",
        "X0_ADMIN_TIMEOUT": "0.5",
        **extra,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class AgentProcess:
    node_id: str
    port: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [AGENT_BIN], env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

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


def wait_for(predicate: Callable[[], T], timeout: float, interval: float = 0.05) -> T | None:
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
