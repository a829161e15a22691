"""Raft over a real 3-node netns mesh: election, faults on the leader, restarts, CAS, bad input.

One mesh for the module; tests run in file order and each leaves the group whole (one leader named by all three)
for the next. Every write acknowledged with 200 is remembered in `acked` and must be on every replica at the end
of each fault test and after the whole-mesh restart. Bounds are generous correctness bounds; timing targets are
measured by bench/kv_bench.py.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from agent.localmesh import LocalMesh, MeshOptions
from tests.consensus.support import (
    auth,
    client,
    cluster,
    gauge,
    get,
    put,
    replica,
    value_of,
    wait_converged,
    wait_leader,
)
from tests.localmesh.support import wait_until

pytestmark = [pytest.mark.root, pytest.mark.yggdrasil, pytest.mark.slow]

NODES = ["node-a", "node-b", "node-c"]
# Drill duration: an election (<= 1.4 s timeout + a vote) and the 2 s write timeout, plus the overlay's own
# recovery: Raft rides Yggdrasil, and when the cut node was the root of its spanning tree the other two reach each
# other again only once the tree re-forms; under a loaded whole-suite run a new leader once took over 6 s.
FAULT_S = 12


@dataclass
class Run:
    mesh: LocalMesh
    http: httpx.Client
    formed_at: float
    acked: dict[str, bytes] = field(default_factory=dict)
    # Writes answered 503, by key: (node written to, X-X0-Outcome, detail).
    refused: dict[str, tuple[str, str | None, str]] = field(default_factory=dict)
    n: int = 0

    def write(self, node_id: str, key: str | None = None) -> httpx.Response:
        self.n += 1
        key = key or f"t/{self.n:05d}"
        value = f"{node_id}:{self.n}".encode()
        r = put(self.http, self.mesh, node_id, key, value)
        if r.status_code == 200:
            self.acked[key] = value
        elif r.status_code == 503:
            self.refused[key] = (node_id, r.headers.get("x-x0-outcome"), r.json()["detail"])
        return r

    def check_nothing_half_applied(self, node_id: str) -> None:
        """A write answered 503 `not-applied` is on no replica; one answered `unknown` (it had reached a log
        when its answer was lost: contracts §7) may be, with the value written."""
        held = replica(self.http, self.mesh, node_id, "t/")
        assert all(outcome in ("not-applied", "unknown") for _, outcome, _ in self.refused.values()), self.refused
        applied = {k: self.refused[k] for k in held if k in self.refused}
        assert not any(outcome == "not-applied" for _, outcome, _ in applied.values()), applied
        assert all(k in self.acked or k in self.refused for k in held), sorted(set(held) - set(self.acked))
        for key in applied:
            r = get(self.http, self.mesh, node_id, key, stale="true")
            assert value_of(r).startswith(f"{self.refused[key][0]}:".encode()), (key, r.text)

    def leader(self, timeout: float = 10.0, not_: str | None = None, among: list[str] | None = None) -> str:
        return wait_leader(self.http, self.mesh, among or NODES, timeout, not_=not_)

    def check_all_acked(self, timeout: float = 20.0) -> None:
        held = wait_converged(self.http, self.mesh, NODES, "t/", timeout)
        missing = sorted(k for k in self.acked if k not in held)
        assert not missing, f"acknowledged writes lost: {missing[:10]}"
        leader = self.leader()
        for key, value in list(self.acked.items())[-5:]:
            r = get(self.http, self.mesh, leader, key)
            assert r.status_code == 200 and value_of(r) == value, (key, r.status_code, r.text)


@pytest.fixture(scope="module")
def run(
    require_root: None, require_yggdrasil: str, require_nft: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Run]:
    opts = MeshOptions(
        nodes=3, mode="netns", run_dir=tmp_path_factory.mktemp("raft3"), agent_env={"X0_DAEMON_RESTART_DELAY": "1"}
    )
    with LocalMesh(opts) as mesh, client() as http:
        yield Run(mesh=mesh, http=http, formed_at=time.monotonic())


def test_a_leader_within_3s_of_the_mesh_forming_and_raft_rides_the_overlay(run: Run) -> None:
    leader = run.leader(timeout=3.0)
    assert time.monotonic() - run.formed_at <= 3.5
    view = cluster(run.http, run.mesh, leader)
    assert view["role"] == "leader" and view["has_quorum"] and view["voters_target"] == 3
    for m in view["members"]:
        node = run.mesh.node(m["node_id"])
        assert m["voter"] and m["raft_address"] == f"{node.yggdrasil_address}:8082"
        assert m["state"] in ("self", "connected")
    # Bound on the overlay address only (not every interface): nothing listens on the underlay's 8082.
    out = run.mesh.run_in_node(leader, ["ss", "-Htln", "sport = :8082"]).stdout
    assert run.mesh.node(leader).yggdrasil_address in out and "0.0.0.0" not in out and "*:8082" not in out


def test_writes_on_any_node_are_read_back_on_every_node(run: Run) -> None:
    for node in NODES:
        assert run.write(node).status_code == 200
    key = next(iter(run.acked))
    for node in NODES:
        r = get(run.http, run.mesh, node, key)
        assert r.status_code == 200 and value_of(r) == run.acked[key] and r.json()["stale"] is False
        s = get(run.http, run.mesh, node, key, stale="true").json()
        assert s["stale"] is True and s["lag"] is not None and s["lag"] >= 0
    raw = get(run.http, run.mesh, NODES[0], key, raw="true")
    assert raw.content == run.acked[key] and int(raw.headers["x-x0-modify-index"]) >= 1
    # Every replica reports its size as the 64 MiB limit counts it (other records, such as published keys, too).
    written = sum(len(k) + len(v) for k, v in run.acked.items())
    for node in NODES:
        wait_until(
            f"{node} reports at least {written} store bytes and {len(run.acked)} keys",
            lambda n=node: (
                gauge(run.http, run.mesh, n, "x0_kv_store_bytes") >= written
                and gauge(run.http, run.mesh, n, "x0_kv_keys") >= len(run.acked)
            ),
            timeout=5.0,
        )


def test_the_api_document_says_what_kv_answers(run: Run) -> None:
    """raw=true's bytes, the request id a write takes, and what a 503 to a write means are in the OpenAPI
    document the agent serves (the fuzzer in tests/hardening checks answers against it)."""
    paths = run.http.get(f"{run.mesh.node('node-a').agent_url}/schema/openapi.json").json()["paths"]
    one = paths["/kv/{key}"]
    assert set(one["get"]["responses"]["200"]["content"]) == {"application/json", "application/octet-stream"}
    for method in ("put", "delete"):
        assert "X-X0-Request-Id" in [p["name"] for p in one[method]["parameters"] if p["in"] == "header"]
        assert "X-X0-Outcome" in one[method]["responses"]["503"]["description"]


def test_bad_keys_sizes_and_tokens_are_refused_and_change_nothing(run: Run) -> None:
    url = run.mesh.node("node-b").agent_url
    h = auth(run.mesh)
    before = replica(run.http, run.mesh, "node-a", "t/")
    late = {"X-X0-Deadline": f"{time.time() - 1.5:.3f}"}
    cases = [
        (run.http.put(f"{url}/kv/bad key", content=b"x", headers=h), 400, "invalid key"),
        (run.http.put(f"{url}/kv/{'k' * 513}", content=b"x", headers=h), 400, "512"),
        (run.http.put(f"{url}/kv/big", content=b"x" * (64 * 1024 + 1), headers=h), 413, "65536"),
        (run.http.put(f"{url}/kv/x", content=b"x"), 401, "Authorization"),
        (run.http.put(f"{url}/kv/x", content=b"x", headers={"Authorization": "Bearer nope"}), 401, "wrong"),
        (run.http.delete(f"{url}/kv/x"), 401, "Authorization"),
        (run.http.put(f"{url}/kv/x", content=b"x", headers=h, params={"cas": "abc"}), 400, "cas"),
        (run.http.get(f"{url}/kv/never-written"), 404, "never-written"),
        (run.http.get(f"{url}/kv", params={"limit": "0"}), 400, "limit"),
        # A write that arrives after its writer's deadline (plus the 1 s clock slack), or with a deadline that
        # is not a time.
        (run.http.put(f"{url}/kv/t/late", content=b"x", headers=h | late), 503, "after its writer's deadline"),
        (run.http.delete(f"{url}/kv/t/00001", headers=h | late), 503, "after its writer's deadline"),
        (run.http.put(f"{url}/kv/t/late", content=b"x", headers=h | {"X-X0-Deadline": "soon"}), 400, "Deadline"),
        (run.http.put(f"{url}/kv/t/late", content=b"x", headers=h | {"X-X0-Deadline": "nan"}), 400, "Deadline"),
    ]
    for r, status, words in cases:
        assert r.status_code == status, (r.request.method, r.request.url, r.status_code, r.text)
        assert words in r.json()["detail"], r.text
        if status == 503:
            assert r.headers.get("x-x0-outcome") == "not-applied", r.headers
    assert replica(run.http, run.mesh, "node-a", "t/") == before
    # A deadline still ahead is no obstacle.
    soon = {"X-X0-Deadline": f"{time.time() + 3:.3f}"}
    assert run.http.put(f"{url}/kv/t/in-time", content=b"x", headers=h | soon).status_code == 200
    run.acked["t/in-time"] = b"x"
    # The limit itself is allowed.
    assert run.write("node-c", key="t/exactly-64k").status_code == 200
    r = put(run.http, run.mesh, "node-a", "t/exactly-64k", b"y" * 64 * 1024)
    assert r.status_code == 200
    run.acked["t/exactly-64k"] = b"y" * 64 * 1024


def test_concurrent_cas_writers_exactly_one_wins_per_index(run: Run) -> None:
    key = "t/cas"
    assert run.write("node-a", key=key).status_code == 200
    writers = 6
    with concurrent.futures.ThreadPoolExecutor(writers) as pool:
        for _ in range(4):
            index = get(run.http, run.mesh, "node-b", key).json()["modify_index"]

            def attempt(i: int, index: int = index) -> tuple[int, int, bytes]:
                with client() as c:
                    node = NODES[i % 3]
                    value = f"w{i}@{index}".encode()
                    return put(c, run.mesh, node, key, value, cas=index).status_code, i, value

            results = list(pool.map(attempt, range(writers)))
            winners = [(i, v) for status, i, v in results if status == 200]
            assert len(winners) == 1, results
            assert sorted(s for s, _, _ in results) == [200] + [409] * (writers - 1), results
            r = get(run.http, run.mesh, "node-c", key)
            assert value_of(r) == winners[0][1] and r.json()["modify_index"] > index
            run.acked[key] = winners[0][1]
    # cas=0 creates only when absent.
    assert put(run.http, run.mesh, "node-a", key, b"again", cas=0).status_code == 409
    assert put(run.http, run.mesh, "node-a", "t/cas-new", b"first", cas=0).status_code == 200
    run.acked["t/cas-new"] = b"first"


def test_a_retry_with_the_same_request_id_applies_once(run: Run) -> None:
    key = "t/request-id"
    h = {**auth(run.mesh), "X-X0-Request-Id": "pytest-retry-1"}
    first = run.http.put(f"{run.mesh.node('node-a').agent_url}/kv/{key}", content=b"one", headers=h)
    # The retry lands on another node (forwarded to the leader by Raft) with another body: the first result wins.
    again = run.http.put(f"{run.mesh.node('node-b').agent_url}/kv/{key}", content=b"two", headers=h)
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert again.json()["modify_index"] == first.json()["modify_index"]
    assert value_of(get(run.http, run.mesh, "node-c", key)) == b"one"
    run.acked[key] = b"one"
    bad = run.http.put(
        f"{run.mesh.node('node-a').agent_url}/kv/{key}",
        content=b"x",
        headers={**auth(run.mesh), "X-X0-Request-Id": "not ok!"},
    )
    assert bad.status_code == 400 and "x-x0-request-id" in bad.text.lower(), bad.text
    assert value_of(get(run.http, run.mesh, "node-a", key)) == b"one"


def _drill_on_leader(run: Run, kind: str) -> None:
    """The leader takes the drill lease and cuts itself off; its writes time out with 503 (never 200) while
    the other two elect a leader and keep acknowledging; after the revert every replica converges."""
    old = run.leader()
    others = [n for n in NODES if n != old]
    r = run.http.post(
        f"{run.mesh.node(old).agent_url}/drills",
        json={"kind": kind, "duration_s": FAULT_S, "holder": f"pytest {kind}"},
        headers=auth(run.mesh),
    )
    assert r.status_code == 202, r.text
    drill = r.json()
    started = time.monotonic()
    # The lease is mesh-wide: another node refuses a second drill, naming the holder.
    r2 = run.http.post(
        f"{run.mesh.node(others[0]).agent_url}/drills",
        json={"kind": "partition", "duration_s": 1},
        headers=auth(run.mesh),
    )
    assert r2.status_code in (409, 503), r2.text
    if r2.status_code == 409:
        assert f"pytest {kind}" in r2.json()["detail"] and old in r2.json()["detail"]
    minority: list[int] = []
    majority: list[int] = []
    while time.monotonic() - started < 4:
        minority.append(run.write(old).status_code)
        majority.append(run.write(others[len(majority) % 2]).status_code)
    assert minority and 200 not in minority and set(minority) == {503}, minority
    new = run.leader(not_=old, among=others, timeout=max(1.0, FAULT_S - 1 - (time.monotonic() - started)))
    assert new in others
    assert run.write(new).status_code == 200
    # FAULT_S only bounds the election on a loaded machine: once the new leader acknowledged a write, end the
    # fault: an abort reverts it as the drill's end does, and releases the lease and files the record alike.
    ended = run.http.delete(f"{run.mesh.node(old).agent_url}/drills/{drill['id']}", headers=auth(run.mesh))
    assert ended.status_code == 200 and ended.json()["state"] == "aborted", ended.text
    # Back: the old leader follows the new one, and the replicas agree.
    wait_until(
        f"{kind} drill reverted",
        lambda: not run.http.get(f"{run.mesh.node(old).agent_url}/drills").json()["active"],
        FAULT_S + 10,
    )
    run.leader(timeout=30)
    run.check_all_acked(timeout=30)
    run.check_nothing_half_applied(old)
    # The lease is released by the drill's node once it reaches the leader again, and the drill is in the
    # mesh's history on every node.
    wait_until(
        "drill lease released",
        lambda: run.http.get(f"{run.mesh.node(others[1]).agent_url}/drills/lease").status_code == 404,
        30,
    )
    for n in NODES:
        hist = run.http.get(f"{run.mesh.node(n).agent_url}/drills/history").json()["drills"]
        assert drill["id"] in [d["id"] for d in hist], (n, hist)


def test_leader_partitioned_minority_writes_503_then_converges(run: Run) -> None:
    _drill_on_leader(run, "partition")


def test_leader_blackholed_minority_writes_503_then_converges(run: Run) -> None:
    _drill_on_leader(run, "blackhole")


def test_leader_daemon_killed_minority_writes_503_then_converges(run: Run) -> None:
    _drill_on_leader(run, "kill-daemon")


def test_leader_killed_new_leader_and_the_restarted_node_catches_up(run: Run) -> None:
    old = run.leader()
    others = [n for n in NODES if n != old]
    run.mesh.stop_node(old)
    new = run.leader(not_=old, among=others, timeout=10)
    for _ in range(5):
        assert run.write(others[0]).status_code == 200
    run.mesh.start_node(old)
    run.check_all_acked(timeout=30)
    assert cluster(run.http, run.mesh, old)["leader_id"] in others or run.leader() == old
    assert new in others


def test_whole_mesh_restart_keeps_every_acknowledged_write(run: Run) -> None:
    for _ in range(3):
        assert run.write(NODES[_ % 3]).status_code == 200
    for n in NODES:
        run.mesh.stop_node(n)
    for n in NODES:
        run.mesh.start_node(n, wait=False)
    run.mesh.wait_healthy(NODES, timeout=60)
    run.leader(timeout=20)
    run.check_all_acked(timeout=30)
    assert (Path(run.mesh.node("node-a").dir) / "raft" / "journal.bin").exists()


def test_x0dash_leader_loss_drill_reports_new_leader_unavailability_and_a_consistent_history(
    run: Run, tmp_path: Path
) -> None:
    """x0dash headless `drill leader-loss`: the target is whoever leads; with an inventory source the node loss is
    the agent's kill-daemon drill (overlay gone: the leader is cut off from the group). The report carries every
    observer's time to a new leader, the write-unavailability window and a consistency verdict."""
    import asyncio
    import io
    import json as _json

    from dashboard.cli import run_headless
    from dashboard.drills.engine import DrillPlan
    from dashboard.providers.inventory import InventoryProvider

    old = run.leader()
    assert run.mesh.inventory_path is not None
    report_path = tmp_path / "report.json"
    out, err = io.StringIO(), io.StringIO()
    asyncio.run(
        run_headless(
            InventoryProvider(run.mesh.inventory_path),
            DrillPlan(kind="leader-loss", target="leader", duration_s=5),
            reports_dir=None,
            report_file=report_path,
            as_json=True,
            out=out,
            err=err,
        )
    )
    report = _json.loads(report_path.read_text())
    assert report["kind"] == "leader-loss" and report["target"] == old, report["target"]
    c = report["consistency"]
    assert c is not None and c["old_leader"] == old
    observers = [n for n in NODES if n != old]
    assert sorted(c["new_leader_after_s"]) == observers
    assert all(t is not None and 0 < t < 10 for t in c["new_leader_after_s"].values()), c["new_leader_after_s"]
    assert c["unavailable_from"] is not None and c["unavailable_to"] is not None
    assert 0 < c["unavailable_to"] - c["unavailable_from"] < 10
    v = c["verdict"]
    assert v["consistent"] and v["writes_acked"] > 0 and v["reads_ok"] > 0, v
    run.leader(timeout=30)
