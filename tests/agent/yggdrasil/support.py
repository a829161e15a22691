"""Helpers shared by the yggdrasil test modules."""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def short_tmp_dir() -> Iterator[Path]:
    """A unique directory directly under /tmp, removed afterwards. Short on purpose: AF_UNIX socket paths are
    limited to 108 bytes, and pytest's tmp_path (with long test names) can exceed that."""
    path = Path(tempfile.mkdtemp(prefix="x0t-ygg-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    """A free 127.0.0.1 TCP port (bind to 0; the tiny race before the daemon binds it is acceptable here)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
