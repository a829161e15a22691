"""The engine's pysyncobj settings pass pysyncobj's own validation (SyncObj asserts them when it starts: a bad
pair of timings fails every voter at start, and the mesh then has no leader at all)."""

from __future__ import annotations

from pathlib import Path

from agent.consensus.engine import HEARTBEAT, RAFT_MIN_TIMEOUT, RaftEngine


def test_the_engine_settings_pass_pysyncobj_validation(tmp_path: Path) -> None:
    engine = RaftEngine("127.0.0.1:1", ["127.0.0.1:2"], secret="s", data_dir=tmp_path, write_timeout=2.0)
    conf = engine._conf()
    conf.validate()
    assert conf.appendEntriesPeriod == HEARTBEAT and conf.raftMinTimeout == RAFT_MIN_TIMEOUT
