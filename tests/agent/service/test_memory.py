"""The agent's garbage-collector settings (agent.memory)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from agent.memory import GC_THRESHOLDS, prepare_gc_for_serving


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
