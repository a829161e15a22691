"""bench/scale_bench.py refuses a mesh size the local mesh cannot make before it starts anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agent.localmesh.naming import MAX_NODES

BENCH = Path(__file__).resolve().parents[2] / "bench" / "scale_bench.py"


def test_a_size_past_the_local_meshs_limit_is_refused_naming_it() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "--sizes", f"3,{MAX_NODES + 1}", "--cases", "scale"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert f"--sizes each 1..{MAX_NODES}" in out.stderr, out.stderr
    assert "[N=" not in out.stdout  # no mesh was started
