"""Issue 11 item 4: nothing a drill starts outlives it.

Each network drill starts a detached watchdog (`sh -c "sleep N; nft delete ..."`, its own session) that reverts
the fault even if the agent is SIGKILLed. Aborting the drill used to kill the `sh` only, leaving its `sleep`
orphaned for up to 600 s (115 of them after a fuzz run).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from agent.drills.faults import Nft
from agent.drills.manager import DrillManager
from tests.drills.test_faults import OTHER_PORT, members, netns  # noqa: F401 (netns is a fixture)

pytestmark = [pytest.mark.root]


def session_members(sid: int) -> list[str]:
    """Live processes of session `sid` (name and pid), from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        state, session = rest[0], int(rest[3])
        if session == sid and state != "Z":
            out.append(f"{name}[{entry.name}]")
    return out


async def test_aborted_and_expired_drills_leave_no_watchdog_process(netns: str) -> None:  # noqa: F811
    m = DrillManager(
        "node-c", members=lambda: members(), supervisor=lambda: None, agent_port=OTHER_PORT, nft=Nft(netns=netns)
    )
    d = await m.start("blackhole", 60)
    watchdog = m._active[d.id].watchdog
    assert watchdog is not None
    sid = watchdog.pid  # start_new_session: the watchdog leads its session
    for _ in range(100):  # the shell forks its sleep a moment after it starts
        if any(p.startswith("sleep[") for p in session_members(sid)):
            break
        await asyncio.sleep(0.02)
    assert any(p.startswith("sleep[") for p in session_members(sid)), session_members(sid)
    await m.abort(d.id)
    assert session_members(sid) == []
    # A drill that runs to its end: its watchdog is gone too once it is reverted.
    d2 = await m.start("partition", 1)
    sid2 = m._active[d2.id].watchdog.pid  # type: ignore[union-attr]
    await m.shutdown()
    assert session_members(sid2) == [] and os.getpgid(os.getpid()) != sid2
