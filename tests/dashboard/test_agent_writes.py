"""x0dash's writes wait for the agent's Raft answer: a real agent whose Raft group has no quorum answers a lease
request only after its write timeout; x0dash's poll timeout (1.5 s) must not turn that answer into "no answer"."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dashboard.agent_client import WRITE_TIMEOUT_S, AgentClient, AgentError
from tests.agent.service.agentproc import AgentProcess, daemonless_env, free_port, wait_for

TOKEN = "writes-test-token-0123456789"
RAFT_WRITE_TIMEOUT_S = 2.5  # longer than x0dash's poll timeout, shorter than its write timeout


@pytest.fixture
def lonely_voter(tmp_path: Path) -> Iterator[AgentProcess]:
    """node-a, one of 3 Raft voters whose other two never start: a write waits its whole write timeout, 503."""
    names = ["node-a", "node-b", "node-c"]
    raft_ports = {n: free_port() for n in names}
    port = free_port()
    members = tmp_path / "members.json"
    members.write_text(
        json.dumps(
            {
                "members": [
                    {
                        "node_id": n,
                        "agent_url": f"http://127.0.0.1:{port if n == 'node-a' else free_port()}",
                        "raft_address": f"127.0.0.1:{raft_ports[n]}",
                    }
                    for n in names
                ]
            }
        )
    )
    env = daemonless_env(
        "node-a",
        port,
        tmp_path,
        MESH_MEMBERS=str(members),
        X0_API_TOKEN=TOKEN,
        X0_RAFT_PORT=str(raft_ports["node-a"]),
        X0_RAFT_DIR=str(tmp_path / "raft"),
        X0_RAFT_VOTERS="3",
        X0_RAFT_WRITE_TIMEOUT=str(RAFT_WRITE_TIMEOUT_S),
        X0_MAPEK_ENABLED="false",
    )
    agent = AgentProcess("node-a", port, env, tmp_path / "agent.log")
    agent.start()
    try:
        assert wait_for(lambda: httpx.get(f"{agent.url}/cluster", timeout=2).status_code == 200, 20), agent.log()
        yield agent
    finally:
        agent.stop()


async def test_a_write_gets_the_agents_answer_after_its_raft_write_timeout(lonely_voter: AgentProcess) -> None:
    assert WRITE_TIMEOUT_S > RAFT_WRITE_TIMEOUT_S
    async with AgentClient(timeout=1.5, token=TOKEN) as client:
        started = time.monotonic()
        with pytest.raises(AgentError) as err:
            await client.take_lease(lonely_voter.url, kind="blackhole", node_id="node-b", ttl_s=30, holder="test")
        took = time.monotonic() - started
        # The agent's own answer (503: no quorum), not x0dash giving up at its 1.5 s poll timeout.
        assert err.value.kind != "timeout", err.value
        assert "503" in str(err.value), err.value
        assert took >= RAFT_WRITE_TIMEOUT_S - 0.2
        # Reads keep the short timeout.
        assert client.timeout == 1.5
