"""Where a node's logs are and how to read their tail: files in a local or inventory mesh's run directory
(`<mesh_dir>/<node>/agent.log`, `yggdrasil.log`), or a Nomad task's stdout/stderr through the alloc logs API
(`GET /v1/client/fs/logs/:alloc_id`, plain text). Providers list the sources; reading is plain I/O called from
worker threads."""

from __future__ import annotations

from pathlib import Path

import msgspec

MAX_LOG_BYTES = 256 * 1024  # the tail a log view loads (an agent.log of a long soak is many MB)
FILE_LOGS = ("agent.log", "yggdrasil.log")


class LogSource(msgspec.Struct, frozen=True, kw_only=True):
    name: str  # what the operator picks, e.g. "agent.log", "x0-agent stderr"
    where: str  # said beside it: the path, or the Nomad allocation and task
    path: str | None = None  # a file on this machine
    alloc_id: str | None = None  # or a Nomad task's log
    task: str | None = None
    stream: str | None = None  # stdout | stderr


def file_sources(mesh_dir: str | Path | None, node_id: str) -> list[LogSource]:
    if not mesh_dir:
        return []
    node_dir = Path(mesh_dir) / node_id
    return [LogSource(name=name, where=str(node_dir / name), path=str(node_dir / name)) for name in FILE_LOGS]


def read_tail(path: str | Path, max_bytes: int = MAX_LOG_BYTES) -> str:
    """The last `max_bytes` of a file, from a line start. OSError when it cannot be read."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - max_bytes))
        data = f.read()
    if size > max_bytes:
        cut = data.find(b"\n")
        data = data[cut + 1 :] if cut >= 0 else data
    return data.decode("utf-8", errors="replace")
