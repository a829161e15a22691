"""A write carries its writer's deadline (X-X0-Deadline) and never reaches Raft after it (contracts §7).

The reproduction: a client agent blackholed while it forwarded a write answered its writer 503 `unknown` after
2 s; the request sat in the kernel's retransmission queue and, once the fault ended, reached the leader and
applied ~8 s after it was sent, after any writes acknowledged meanwhile. Now the leader refuses it on arrival."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent.consensus.engine import RaftUnavailable
from agent.localmesh import LocalMesh, MeshOptions
from agent.localmesh.mesh import free_ports
from tests.consensus.engines import elect, start_engines
from tests.consensus.support import auth, client, cluster, get, metric, put, wait_leader
from tests.localmesh.support import wait_until

NODES = ["node-a", "node-b", "node-c"]
FAULT_S = 6.0


async def test_a_write_past_its_deadline_is_refused_alone_and_never_applies(tmp_path: Path) -> None:
    engines = await start_engines([f"127.0.0.1:{p}" for p in free_ports(1)], tmp_path)
    try:
        leader = await elect(engines)
        loop = asyncio.get_running_loop()
        # Queued together: one batch would hold all three, and the late one must not fail the other two.
        first, late, last = await asyncio.gather(
            leader.put("d/first", b"1", None, "rid-first"),
            leader.put("d/late", b"2", None, "rid-late", not_after=loop.time() - 0.01),
            leader.put("d/last", b"3", None, "rid-last"),
            return_exceptions=True,
        )
        assert not isinstance(first, BaseException) and first[0] == "ok", first
        assert not isinstance(last, BaseException) and last[0] == "ok", last
        assert isinstance(late, RaftUnavailable), late
        assert not late.outcome_unknown and "deadline passed before it reached Raft" in str(late), late
        await leader.barrier()
        assert leader.state.read("d/late")[0] is None
        assert leader.state.read("d/last")[0] is not None
    finally:
        for e in engines:
            await e.stop()


@pytest.fixture
def one_voter_mesh(
    require_root: None, require_yggdrasil: str, require_nft: str, tmp_path: Path
) -> Iterator[tuple[LocalMesh, httpx.Client]]:
    # One voter: the other two are clients that forward writes to it over HTTP, across the overlay.
    opts = MeshOptions(nodes=3, mode="netns", run_dir=tmp_path, agent_env={"X0_RAFT_VOTERS": "1"})
    with LocalMesh(opts) as mesh, client() as http:
        yield mesh, http


def refused_puts(http: httpx.Client, mesh: LocalMesh, node_id: str) -> float:
    # The agent creates every (op, outcome) series at 0, so a missing one is a failure, not "none refused yet".
    return metric(http, mesh, node_id, "x0_kv_requests_total", op="put", outcome="unavailable")


def test_a_forwarded_write_held_up_by_a_blackhole_is_refused_when_it_arrives(
    one_voter_mesh: tuple[LocalMesh, httpx.Client],
) -> None:
    mesh, http = one_voter_mesh
    leader = wait_leader(http, mesh, NODES, 30)
    roles: dict[str, str] = {}

    def clients_know_the_leader() -> bool:
        roles.update({n: cluster(http, mesh, n)["role"] for n in NODES})
        return sorted(roles.values()) == ["client", "client", "leader"]

    wait_until("two clients", clients_know_the_leader, 30)
    target = next(n for n, role in roles.items() if role == "client")
    assert put(http, mesh, target, "late/warm", b"w").status_code == 200  # its connection to the leader is up
    refused_before = refused_puts(http, mesh, leader)
    r = http.post(
        f"{mesh.node(target).agent_url}/drills",
        json={"kind": "blackhole", "duration_s": FAULT_S, "holder": "pytest late write"},
        headers=auth(mesh),
    )
    assert r.status_code == 202, r.text
    r = put(http, mesh, target, "late/k", b"v1")
    assert r.status_code == 503 and r.headers.get("x-x0-outcome") == "unknown", (r.status_code, r.text)
    # Acknowledged after that 503: a late apply of v1 would overwrite it.
    assert put(http, mesh, leader, "late/k", b"v2").status_code == 200
    sent = time.monotonic()
    arrived = False
    while time.monotonic() - sent < FAULT_S + 30 and not arrived:
        g = get(http, mesh, leader, "late/k")
        assert g.status_code == 200 and g.json()["value"] == "djI=", f"v1 applied after its 503: {g.text}"
        arrived = refused_puts(http, mesh, leader) > refused_before
        time.sleep(0.25)
    # The held-up request did arrive (it is what the leader refused), and nothing changed after it.
    assert arrived, f"the leader refused no write within {FAULT_S + 30:g} s of the fault"
    g = get(http, mesh, leader, "late/k")
    assert g.status_code == 200 and g.json()["value"] == "djI=", g.text
