"""DaemonSupervisor on a real yggdrasil: restart after a crash, the drill hooks (stop_for / start), close."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.supervisor import DaemonSupervisor
from agent.yggdrasil.client import AdminClient
from agent.yggdrasil.daemon_config import create_config
from agent.yggdrasil.errors import AdminError

pytestmark = [pytest.mark.yggdrasil]


async def until(predicate: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return bool(predicate())


async def answers_within(endpoint: str, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await answers(endpoint):
            return True
        await asyncio.sleep(0.05)
    return False


async def answers(endpoint: str) -> bool:
    try:
        await AdminClient(endpoint, timeout=1).get_self()
    except AdminError:
        return False
    return True


async def test_restart_hold_and_close(require_yggdrasil: str, tmp_path: Path) -> None:
    admin = f"unix://{tmp_path}/admin.sock"
    conf = tmp_path / "yggdrasil.conf"
    create_config(conf, "node-a", admin_listen=admin, listen=["tls://127.0.0.1:0"])
    changes: list[str] = []
    sup = DaemonSupervisor(
        conf,
        binary=require_yggdrasil,
        admin_endpoint=admin,
        restart_delay=0.3,
        on_change=lambda: changes.append(sup.state),
    )
    task = asyncio.get_running_loop().create_task(sup.run())
    try:
        assert await until(lambda: sup.state == "running", 5)
        first = sup.pid
        assert first and sup.epoch == 1 and "running" in sup.describe()
        assert (tmp_path / "yggdrasil.log").exists()  # the daemon logs beside its config

        # A crash: restarted after restart_delay, with a new process.
        os.kill(first, signal.SIGKILL)
        assert await until(lambda: sup.state == "restarting", 2)
        assert "exited with -9" in sup.describe() and "restarting in" in sup.describe()
        assert await until(lambda: sup.state == "running" and sup.epoch == 2, 5)
        assert sup.pid != first

        # kill-daemon drill: down for the whole hold, even past the restart delay...
        await sup.stop_for(1.0)
        assert sup.state == "held" and sup.pid is None and "stopped by a drill" in sup.describe()
        await asyncio.sleep(0.6)
        assert sup.state == "held" and sup.pid is None and not await answers(admin)
        # ...then back on its own.
        assert await until(lambda: sup.state == "running" and sup.epoch == 3, 5)

        # start() ends a hold at once.
        await sup.stop_for(60)
        held_at = time.monotonic()
        sup.start()
        assert await until(lambda: sup.state == "running" and sup.epoch == 4, 5)
        assert time.monotonic() - held_at < 5
        assert await answers_within(admin, 5)
        assert {"running", "restarting", "held"} <= set(changes)
    finally:
        await sup.close()
        await asyncio.wait_for(task, 10)
    assert sup.state == "stopped" and sup.pid is None
    assert "Stopped" in (tmp_path / "yggdrasil.log").read_text()  # closed with SIGTERM, not killed
