"""The agent's garbage-collector settings (agent.memory)."""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.memory import GC_THRESHOLDS, prepare_gc_for_serving

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_start_up_objects_are_out_of_full_collections(restored_gc: None) -> None:
    # This test process has imported the agent, as the agent has when it calls this.
    tracked = len(gc.get_objects())
    frozen = prepare_gc_for_serving()
    assert frozen > 0.9 * tracked, (frozen, tracked)
    # What a full collection walks now: the objects made since, not the imported world (70-195 ms of the event
    # loop per pass at 1,000 members before).
    assert len(gc.get_objects()) < 0.05 * frozen, (len(gc.get_objects()), frozen)
    assert gc.get_threshold() == GC_THRESHOLDS
    # Garbage made after start-up is still collected: a reference cycle dropped now is found by the next pass.
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1


def test_the_built_app_does_not_load_example_generators() -> None:
    # polyfactory and Faker (Litestar's generated OpenAPI examples) cost ~7 MB of every agent's RSS for random
    # example values; agent.openapi.response_spec turns them off. A fresh interpreter, as the agent starts.
    code = (
        "import sys\n"
        "from agent.api.app import create_app\n"
        "from agent.settings import Settings\n"
        "app = create_app(Settings.from_env({'NODE_ID': 'node-a', 'YGGDRASIL_ADMIN': 'unix:///nonexistent.sock'}))\n"
        "app.openapi_schema\n"
        "print(sorted(m for m in ('faker', 'polyfactory') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
