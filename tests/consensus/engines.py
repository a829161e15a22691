"""Real pysyncobj engines in this process, on loopback: for tests of the engine itself, without agents."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from agent.consensus.engine import RaftEngine


async def start_engines(addrs: list[str], data: Path) -> list[RaftEngine]:
    """One engine per address, each with its journal under `data` (kept across calls: a restart)."""
    engines = [
        RaftEngine(a, addrs, secret="engine-test", data_dir=data / f"n{i}", write_timeout=5.0)
        for i, a in enumerate(addrs)
    ]
    for e in engines:
        await e.start()
    return engines


async def elect(engines: list[RaftEngine]) -> RaftEngine:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        leader = next((e for e in engines if e.status.role == "leader"), None)
        if leader is not None:
            return leader
        await asyncio.sleep(0.1)
    raise AssertionError("no leader within 20 s")
