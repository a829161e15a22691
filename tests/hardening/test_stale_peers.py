"""Issue 11 item 2: peers that leave the plan are removed, whatever happened in between.

A real supervised daemon; the members file lists 5 members that do not exist (so the agent addPeers them). The
daemon then hangs for a moment (SIGSTOP: snapshots fail, the same process goes on), the file is restored to this
node alone, and the daemon itself is asked whether any of the 5 is still configured. Before the fix the failed
snapshots counted as a new daemon, peering forgot what it had added, and all 5 stayed dialled for ever.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import pytest

from agent.monitor import Monitor
from agent.peering import Peering
from agent.settings import Settings
from agent.state import AgentState
from agent.supervisor import DaemonSupervisor
from agent.yggdrasil.client import AdminClient
from agent.yggdrasil.daemon_config import create_config
from agent.yggdrasil.errors import AdminCommandError

pytestmark = [pytest.mark.yggdrasil, pytest.mark.slow]

FAKES = [f"tls://127.1.0.{i}:9" for i in range(1, 6)]  # nothing listens on 127.1.0.x:9: every dial is refused


def write(path: Path, doc: dict, bump: int) -> None:
    path.write_text(json.dumps(doc))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump * 10**9))


async def until(cond, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.05)


async def test_members_that_left_are_removed_after_a_daemon_hiccup(require_yggdrasil: str, tmp_path: Path) -> None:
    admin = f"unix://{tmp_path}/a.sock"
    config = tmp_path / "node-a.conf"
    create_config(config, "node-a", admin_listen=admin, listen=["tls://127.0.0.1:0"])
    me = {"node_id": "node-a", "agent_url": "http://127.0.0.1:1", "listen_uri": "tls://127.0.0.1:1"}
    fakes = [
        {"node_id": f"x-{i}", "agent_url": "http://127.0.0.1:1", "listen_uri": u} for i, u in enumerate(FAKES)
    ]
    members = tmp_path / "members.json"
    write(members, {"members": [me, *fakes]}, 1)
    settings = Settings.from_env(
        {
            "NODE_ID": "node-a",
            "YGGDRASIL_ADMIN": admin,
            "YGGDRASIL_CONFIG": str(config),
            "YGGDRASIL_BIN": require_yggdrasil,
            "MESH_MEMBERS": str(members),
            "X0_MONITOR_INTERVAL": "0.2",
            "X0_ADMIN_TIMEOUT": "0.3",
        }
    )
    state = AgentState(settings)
    monitor, peering = Monitor(state), Peering(state)
    state.peering = peering
    state.supervisor = sup = DaemonSupervisor(
        config, binary=require_yggdrasil, admin_endpoint=admin, restart_delay=1, on_change=monitor.poke
    )
    tasks = [asyncio.create_task(t) for t in (sup.run(), monitor.run(), peering.run())]
    try:
        await until(lambda: all(u in peering.added for u in FAKES), 15, "the 5 fake members dialled")
        epoch = state.daemon_epoch
        pid = sup.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # the daemon hangs: snapshots time out, the process stays the same
        try:
            await until(lambda: not state.last_ok, 5, "a failed snapshot")
            await asyncio.sleep(0.5)
        finally:
            os.kill(pid, signal.SIGCONT)
        await until(lambda: state.last_ok, 5, "the daemon answering again")
        assert state.daemon_epoch == epoch, "a failed snapshot of the same daemon process is not a new daemon"
        write(members, {"members": [me]}, 2)
        await until(lambda: not any(u in peering.added for u in FAKES), 10, "removePeer of the 5 that left")
        assert peering.removing == []
        # The daemon's own word: none of them is configured any more.
        still = []
        async with AdminClient(admin, timeout=2).session() as s:
            for uri in FAKES:
                try:
                    await s.remove_peer(uri)
                    still.append(uri)
                except AdminCommandError as exc:
                    assert "not configured" in exc.error
        assert still == []
        assert sup.epoch == 1  # the daemon never restarted
    finally:
        for t in tasks[1:]:
            t.cancel()
        await asyncio.gather(*tasks[1:], return_exceptions=True)
        await sup.close()
        tasks[0].cancel()
        await asyncio.gather(tasks[0], return_exceptions=True)
