"""bench/formation_watch.py refuses an --env it cannot use before it starts a mesh."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "formation_watch.py"


def test_an_env_without_equals_is_refused_naming_the_form() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "--nodes", "3", "--env", "X0_MAPEK_INTERVAL"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "--env takes KEY=VALUE" in out.stderr, out.stderr
    assert "run 1/" not in out.stdout  # no mesh was started
