"""Every voter compacts its Raft log by the bytes of values it applied, and gives the memory back (issue 9's
memory target): three real pysyncobj engines on loopback in this process, real sockets and journals."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from agent.consensus.engine import COMPACT_AFTER_BYTES, IDLE_COMPACT_AFTER_S, IDLE_COMPACT_MIN_BYTES, RaftEngine
from agent.localmesh.mesh import free_ports
from tests.consensus.engines import elect, start_engines


def log_len(engine: RaftEngine) -> int:
    assert engine._obj is not None  # the engine's pysyncobj object: its own status names the log length
    return int(engine._obj.getStatus()["log_len"])


def resident_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of `path` (/proc/self/smaps): 0 when it is not mapped."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and not head[0].endswith(":"):
            inside = len(head) >= 6 and head[5] == str(path)
        elif inside and line.startswith("Rss:"):
            total += int(head[1])
    return total


async def converge(engines: list[RaftEngine], size: int) -> list[int]:
    """Every replica's store size once all hold `size` bytes, or after 10 s (a follower may still be applying the
    last entries when its log is already short)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if all(e.state.size >= size for e in engines):
            break
        await asyncio.sleep(0.1)
    return [e.state.size for e in engines]


async def test_followers_compact_their_log_by_bytes_and_release_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="x0.consensus")
    addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
    engines = await start_engines(addrs, tmp_path)
    try:
        leader = await elect(engines)
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
        expected = writes * len(value)
        sizes = await converge(engines, expected)
        assert all(size >= expected for size in sizes), f"store sizes {sizes}, wrote {expected} bytes of values"
        assert all(e.state.logged_bytes < COMPACT_AFTER_BYTES for e in engines)
        # Less than a compaction's worth, then a pause: every voter compacts anyway, so a store at rest holds
        # its values once.
        compactions = caplog.text.count("raft log compacted")
        more = IDLE_COMPACT_MIN_BYTES * 4 // len(value)
        for i in range(more):
            result = await leader.put(f"more/{i:04d}", value, None, f"rid-more-{i}")
            assert result[0] == "ok", result
        expected += more * len(value)
        deadline = time.monotonic() + IDLE_COMPACT_AFTER_S + 5
        while time.monotonic() < deadline:
            if caplog.text.count("raft log compacted") >= compactions + 3:
                break
            await asyncio.sleep(0.1)
        lens = [log_len(e) for e in engines]
        assert all(n < more for n in lens), f"log lengths {lens} {IDLE_COMPACT_AFTER_S} s after {more} more writes"
        assert caplog.text.count("raft log compacted") >= compactions + 3, caplog.text
        # The journal file holds every value written (it only grows), but its pages left the RSS.
        journals = [e.data_dir / "journal.bin" for e in engines if e.data_dir is not None]
        file_sizes = [j.stat().st_size for j in journals]
        assert all(size >= COMPACT_AFTER_BYTES for size in file_sizes), file_sizes
        resident = [resident_kib(j) for j in journals]
        assert all(kib < COMPACT_AFTER_BYTES // 1024 // 2 for kib in resident), f"journal resident KiB {resident}"
    finally:
        for e in engines:
            await e.stop()
    # Restarted from their snapshots and journals (pages dropped or not), the replicas still hold every value.
    engines = await start_engines(addrs, tmp_path)
    try:
        await elect(engines)
        sizes = await converge(engines, expected)
        assert all(size >= expected for size in sizes), f"store sizes {sizes} after a restart, wrote {expected}"
    finally:
        for e in engines:
            await e.stop()
