"""bench/kv_bench.py refuses a store size it cannot build before it starts anything (no mesh, no etcd)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "kv_bench.py"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("0", "--store-mib must be more than 0 and at most 60"),
        ("61", "--store-mib must be more than 0 and at most 60 (the store's limit is 64 MiB)"),
        ("ten", "invalid float value: 'ten'"),
    ],
)
def test_store_mib_out_of_range_is_refused_with_the_limit(value: str, says: str) -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "--memory-only", "--store-mib", value],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert says in out.stderr, out.stderr
    assert "agents:" not in out.stdout  # nothing was measured
