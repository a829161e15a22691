"""The poller's guarantees that need no mesh: cycles never overlap, an unreachable agent is reported as such."""

from __future__ import annotations

import asyncio
import itertools

from dashboard.agent_client import AgentClient
from dashboard.poller import Poller
from dashboard.providers.base import NodeTarget

from .conftest import closed_port


async def test_concurrent_callers_get_serialized_cycles() -> None:
    targets = [NodeTarget(id=f"node-{i}", agent_url=f"http://127.0.0.1:{closed_port()}") for i in range(5)]
    # A refused connection answers at once; the timeout only bounds a loaded machine's scheduling (0.5 s was
    # classified "timeout" once in a whole-suite run, s23-1).
    async with AgentClient(timeout=5.0) as client:
        poller = Poller(client)
        results = await asyncio.gather(*(poller.poll(targets) for _ in range(4)))
    results.sort(key=lambda r: r.started_at)
    for before, after in itertools.pairwise(results):
        assert after.started_at >= before.finished_at  # one cycle after the other, never two at once
    assert poller.cycles == 4
    assert all(r.agents_failed == 5 and r.agents_ok == 0 for r in results)
    a = poller.agents["node-0"]
    assert (a.ok, a.error_kind, a.last_ok_at) == (False, "refused", None)
    assert "cannot connect" in (a.error or "")


async def test_agents_without_url_are_not_polled_and_removed_ones_are_forgotten() -> None:
    async with AgentClient(timeout=0.5) as client:
        poller = Poller(client)
        await poller.poll(
            [NodeTarget(id="a", agent_url=f"http://127.0.0.1:{closed_port()}"), NodeTarget(id="b", agent_url=None)]
        )
        assert poller.agents["b"].last_attempt_at is None
        await poller.poll([NodeTarget(id="b", agent_url=None)])
        assert set(poller.agents) == {"b"}
