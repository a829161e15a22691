"""Every voter compacts its Raft log by the bytes of values it applied, and gives the memory back (issue 9's
memory target): three real pysyncobj engines on loopback in this process, real sockets and journals."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path

import pytest

from agent.consensus.engine import COMPACT_AFTER_BYTES, RaftEngine


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def log_len(engine: RaftEngine) -> int:
    assert engine._obj is not None  # the engine's pysyncobj object: its own status names the log length
    return int(engine._obj.getStatus()["log_len"])


async def test_followers_compact_their_log_by_bytes_and_release_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="x0.consensus")
    addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
    engines = [
        RaftEngine(a, addrs, secret="compaction-test", data_dir=tmp_path / f"n{i}", write_timeout=5.0)
        for i, a in enumerate(addrs)
    ]
    for e in engines:
        await e.start()
    try:
        deadline = time.monotonic() + 20
        leader = None
        while leader is None and time.monotonic() < deadline:
            leader = next((e for e in engines if e.status.role == "leader"), None)
            await asyncio.sleep(0.1)
        assert leader is not None, "no leader within 20 s"
        value = b"v" * (64 * 1024)
        writes = 3 * COMPACT_AFTER_BYTES // len(value)
        for i in range(writes):
            result = await leader.put(f"big/{i:04d}", value, None, f"rid-{i}")
            assert result[0] == "ok", result
        peak = max(log_len(e) for e in engines)
        # Settle: the followers apply the last entries, compact, and release a moment later.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if all(log_len(e) < writes // 2 for e in engines) and caplog.text.count("raft log compacted") >= 3:
                break
            await asyncio.sleep(0.1)
        lens = [log_len(e) for e in engines]
        assert all(n < writes // 2 for n in lens), f"log lengths {lens} after {writes} writes (peak {peak})"
        assert caplog.text.count("raft log compacted") >= 3, caplog.text  # every voter, the followers too
        assert all(e.state.size >= writes * len(value) for e in engines)  # nothing lost by compacting
        assert all(e.state.logged_bytes < COMPACT_AFTER_BYTES for e in engines)
    finally:
        for e in engines:
            await e.stop()
