"""Finding and stopping the processes of a mesh, including ones whose parent is gone.

Agents are started with `X0_LOCALMESH=<mesh id>/<node id>` in their environment; the daemons they supervise
inherit it. So a mesh's processes are found from /proc alone (after a crash of the owner too), plus, as a second
net, any `yggdrasil -useconffile <mesh dir>/…` and anything still inside the mesh's namespaces.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

from agent.localmesh.registry import process_start_time

MARKER_ENV = "X0_LOCALMESH"


def marker(mesh_id: str, node_id: str) -> str:
    return f"{mesh_id}/{node_id}"


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def marked_pids(mesh_id: str, node_id: str | None = None) -> list[int]:
    """Processes whose environment carries this mesh's (node's) marker."""
    prefix = f"{MARKER_ENV}={mesh_id}/".encode()
    exact = f"{MARKER_ENV}={marker(mesh_id, node_id)}".encode() if node_id else None
    me = os.getpid()
    found: list[int] = []
    for pid in _pids():
        if pid == me:
            continue
        for var in _read(f"/proc/{pid}/environ").split(b"\0"):
            if (exact is not None and var == exact) or (exact is None and var.startswith(prefix)):
                found.append(pid)
                break
    return found


def daemon_pids(config_dir: Path) -> list[int]:
    """`yggdrasil -useconffile <file under config_dir>` processes."""
    root = str(config_dir).rstrip("/") + "/"
    found: list[int] = []
    for pid in _pids():
        argv = _read(f"/proc/{pid}/cmdline").split(b"\0")
        if not argv or not os.path.basename(argv[0].decode(errors="replace")).startswith("yggdrasil"):
            continue
        for i, arg in enumerate(argv[:-1]):
            if arg == b"-useconffile" and argv[i + 1].decode(errors="replace").startswith(root):
                found.append(pid)
                break
    return found


def alive(pid: int) -> bool:
    """Running (zombies count as gone: they hold no sockets and only wait for their parent to reap them)."""
    return process_start_time(pid) is not None


def signal_pids(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until every pid is gone; returns those still alive after `timeout`."""
    pending = [p for p in pids if alive(p)]
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        time.sleep(0.05)
        pending = [p for p in pending if alive(p)]
    return pending


def kill_all(pids: Iterable[int], timeout: float = 3.0) -> list[int]:
    """SIGKILL and wait; returns survivors (should be none: SIGKILL cannot be caught)."""
    targets = list(set(pids))
    signal_pids(targets, signal.SIGKILL)
    return wait_gone(targets, timeout)
