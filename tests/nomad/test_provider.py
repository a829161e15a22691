"""NomadProvider over a real socket: python-nomad -> local fake Nomad (recorded shapes) and real x0-agents
(a loopback LocalMesh: real daemons, real agents) behind the service registrations."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from agent.localmesh import LocalMesh, MeshOptions
from dashboard.nomad.backoff import Backoff
from dashboard.nomad.settings import load_settings
from dashboard.nomad.view import AGENT_SERVICE
from dashboard.providers.base import ProviderError, SourceSnapshot
from dashboard.providers.nomad import NomadProvider
from tests.nomad import shapes
from tests.nomad.fake_nomad import FakeNomad, closed_port_url

pytestmark = [pytest.mark.yggdrasil]


@pytest.fixture(scope="module")
def mesh(require_yggdrasil: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    options = MeshOptions(nodes=2, topology="full", mode="loopback", run_dir=tmp_path_factory.mktemp("nomadmesh"))
    with LocalMesh(options) as m:
        yield m


@dataclass
class Cluster:
    """What the fake Nomad serves: one Nomad client per mesh node, allocations, agent registrations."""

    nodes: list[dict]
    allocs: list[dict]
    regs: list[dict]

    def serve(self, fake: FakeNomad, job: dict | None = None) -> None:
        fake.set("GET", "/v1/job/x0-mesh", job or shapes.job())
        fake.set("GET", "/v1/job/x0-mesh/allocations", self.allocs)
        fake.set("GET", "/v1/nodes", self.nodes)
        fake.set("GET", f"/v1/service/{AGENT_SERVICE}", self.regs)
        fake.set("GET", "/v1/var/nomad/jobs/x0-mesh", "variable not found", status=404)


def cluster_for(mesh: LocalMesh) -> Cluster:
    nodes, allocs, regs = [], [], []
    for i, handle in enumerate(mesh.nodes):
        # A system job names mesh nodes after their Nomad client (X0_NODE_NAME = ${node.unique.name}).
        nd = shapes.node(f"{i + 1:08d}-aaaa-4bbb-8ccc-000000000000", handle.id)
        stub = shapes.alloc_stub(
            f"{i + 1:08d}-dddd-4eee-8fff-000000000000", nd["ID"], nd["Name"], create_index=10 + i
        )
        port = int(handle.agent_url.rsplit(":", 1)[1])
        regs.append(shapes.registration(stub, service=AGENT_SERVICE, port=port, node_name=handle.id))
        nodes.append(nd)
        allocs.append(stub)
    return Cluster(nodes, allocs, regs)


def provider_for(fake: FakeNomad, **kw: object) -> NomadProvider:
    env = {"NOMAD_ADDR": fake.url, **kw.pop("env", {})}  # type: ignore[dict-item]
    p = NomadProvider(env=env, events=kw.pop("events", False), **kw)  # type: ignore[arg-type]
    p.start()
    return p


def wait_snapshot(p: NomadProvider, ok: Callable[[SourceSnapshot], bool], timeout: float = 20.0) -> SourceSnapshot:
    deadline = time.monotonic() + timeout
    snap = p.refresh()
    while not ok(snap) and time.monotonic() < deadline:
        time.sleep(0.3)
        snap = p.refresh()
    return snap


def agent_warnings(snap: SourceSnapshot) -> list[str]:
    return [w for w in snap.warnings if "Nomad says" in w or "still answers" in w]


def test_snapshot_maps_allocations_to_nomad_nodes_and_live_agents(fake_nomad: FakeNomad, mesh: LocalMesh) -> None:
    cluster_for(mesh).serve(fake_nomad)
    p = provider_for(fake_nomad, env={"NOMAD_TOKEN": "s3cret", "NOMAD_NAMESPACE": "mesh", "NOMAD_REGION": "eu"})
    try:
        snap = wait_snapshot(p, lambda s: s.ok and not agent_warnings(s))
    finally:
        p.stop()
    assert snap.ok, snap.detail
    assert agent_warnings(snap) == []
    assert [n.id for n in snap.nodes] == ["node-a", "node-b"]
    a = snap.nodes[0]
    assert a.agent_url == mesh.node("node-a").agent_url
    assert a.nomad is not None
    assert (
        a.nomad.node_name,
        a.nomad.datacenter,
        a.nomad.node_status,
        a.nomad.eligibility,
        a.nomad.drain,
        a.nomad.client_status,
    ) == ("node-a", "dc1", "ready", "eligible", False, "running")
    assert snap.planned_links == [("node-a", "node-b")]
    assert "job x0-mesh (system, running): 2 nodes" in snap.detail
    assert snap.source == f"nomad {fake_nomad.url} job=x0-mesh ns=mesh region=eu"
    # What python-nomad sent: the token header, our namespace and region, no User-Agent override.
    job_req = fake_nomad.seen("GET", "/v1/job/x0-mesh")[0]
    assert job_req.headers["x-nomad-token"] == "s3cret"
    assert job_req.query["namespace"] == ["mesh"] and job_req.query["region"] == ["eu"]
    assert fake_nomad.seen("GET", f"/v1/service/{AGENT_SERVICE}")[0].query["namespace"] == ["mesh"]
    assert fake_nomad.seen("GET", "/v1/var/nomad/jobs/x0-mesh")[0].query["namespace"] == ["mesh"]
    assert p.api_token is None
    assert any("no API token for drills" in w for w in snap.warnings)


def test_agent_url_falls_back_to_the_allocation_ports(fake_nomad: FakeNomad, mesh: LocalMesh) -> None:
    c = cluster_for(mesh)
    dropped = c.regs.pop(1)
    c.serve(fake_nomad)
    fake_nomad.set(
        "GET",
        f"/v1/allocation/{c.allocs[1]['ID']}",
        shapes.allocation(c.allocs[1], api_port=dropped["Port"], peer_port=1),
    )
    p = provider_for(fake_nomad)
    try:
        snap = wait_snapshot(p, lambda s: s.ok and not agent_warnings(s))
        assert snap.nodes[1].agent_url == mesh.node("node-b").agent_url
        assert any(
            "node-b: allocation" in w
            and "has no x0-mesh-agent service registration; using its allocated port" in w
            for w in snap.warnings
        )
        assert agent_warnings(snap) == []
        # Ports of an allocation never change: read once, then cached.
        p.refresh()
        assert len(fake_nomad.seen("GET", f"/v1/allocation/{c.allocs[1]['ID']}")) == 1
    finally:
        p.stop()


def test_nomad_running_but_agent_unreachable_and_agent_answering_for_a_stopped_alloc(
    fake_nomad: FakeNomad, mesh: LocalMesh
) -> None:
    c = cluster_for(mesh)
    # node-b's allocation is stopped in Nomad, but its registration (and agent) are still there.
    c.allocs[1] = shapes.alloc_stub(
        c.allocs[1]["ID"], c.nodes[1]["ID"], "node-b", client="complete", desired="stop"
    )
    # A third allocation Nomad thinks is running, whose agent port refuses connections.
    gone = shapes.node("00000003-aaaa-4bbb-8ccc-000000000000", "node-c")
    stub = shapes.alloc_stub("00000003-dddd-4eee-8fff-000000000000", gone["ID"], "node-c")
    refused_port = int(closed_port_url().rsplit(":", 1)[1])
    c.nodes.append(gone)
    c.allocs.append(stub)
    c.regs.append(shapes.registration(stub, service=AGENT_SERVICE, port=refused_port, node_name="node-c"))
    c.serve(fake_nomad)
    p = provider_for(fake_nomad)
    try:
        snap = p.refresh()
    finally:
        p.stop()
    warnings = agent_warnings(snap)
    assert any(
        w.startswith(
            "node-c: Nomad says allocation 00000003 is running, but the agent at "
            f"http://127.0.0.1:{refused_port} is unreachable"
        )
        for w in warnings
    ), warnings
    assert any(
        w.startswith("node-b: the agent at")
        and "still answers, but Nomad's allocation 00000002 is complete (desired stop)" in w
        for w in warnings
    ), warnings


def test_ready_client_without_an_allocation_of_the_system_job(fake_nomad: FakeNomad, mesh: LocalMesh) -> None:
    c = cluster_for(mesh)
    c.nodes.append(shapes.node("00000009-aaaa-4bbb-8ccc-000000000000", "client-9"))
    c.serve(fake_nomad)
    p = provider_for(fake_nomad)
    try:
        snap = p.refresh()
    finally:
        p.stop()
    assert any(
        w.startswith("Nomad node client-9 (dc1) is ready and eligible but runs no x0-mesh allocation")
        for w in snap.warnings
    ), snap.warnings


@pytest.mark.parametrize(
    ("route", "status", "body", "expect"),
    [
        (
            "/v1/nodes",
            403,
            "Permission denied",
            'Nomad list nodes: 403 Permission denied; the token needs node { policy = "read" }',
        ),
        (
            "/v1/job/x0-mesh/allocations",
            403,
            "ACL token not found",
            'the token needs namespace "default" { capabilities = ["read-job"] }',
        ),
        ("/v1/job/x0-mesh", 404, "job not found", "no job 'x0-mesh' in namespace 'default' (run `nomad job run"),
        ("/v1/job/x0-mesh", 500, "No cluster leader", "Nomad read job: HTTP 500 No cluster leader"),
        ("/v1/service/x0-mesh-agent", 200, "not json", "unexpected response body"),
    ],
)
def test_nomad_errors_become_a_clear_failed_snapshot_with_backoff(
    fake_nomad: FakeNomad, mesh: LocalMesh, route: str, status: int, body: str, expect: str
) -> None:
    c = cluster_for(mesh)
    c.serve(fake_nomad)
    p = provider_for(fake_nomad, backoff=Backoff(base_s=30.0, cap_s=60.0))
    try:
        first = p.refresh()
        assert first.ok
        fake_nomad.set("GET", route, body, status=status)
        p._view_at = 0.0  # force a re-read now instead of after resync_s
        failed = p.refresh()
        assert not failed.ok
        assert expect in failed.detail, failed.detail
        assert "(retrying in 30 s)" in failed.detail
        # The last node list is kept: Nomad failing says nothing about the agents.
        assert [n.id for n in failed.nodes] == ["node-a", "node-b"]
        asked = len(fake_nomad.requests)
        again = p.refresh()
        assert not again.ok and len(fake_nomad.requests) == asked, "backoff must not hammer Nomad"
    finally:
        p.stop()


def test_unreachable_nomad_and_timeouts(fake_nomad: FakeNomad) -> None:
    p = NomadProvider(env={"NOMAD_ADDR": closed_port_url()}, events=False)
    p.start()
    try:
        snap = p.refresh()
    finally:
        p.stop()
    assert not snap.ok and "cannot connect" in snap.detail and snap.nodes == []
    fake_nomad.set("GET", "/v1/job/x0-mesh", shapes.job(), delay_s=1.5)
    slow = NomadProvider(load_settings({"NOMAD_ADDR": fake_nomad.url}, timeout_s=0.3), events=False)
    slow.start()
    try:
        t0 = time.monotonic()
        snap = slow.refresh()
        assert time.monotonic() - t0 < 1.4
    finally:
        slow.stop()
    assert not snap.ok and "Nomad read job: no answer" in snap.detail


def test_api_token_from_the_job_variable(fake_nomad: FakeNomad, mesh: LocalMesh) -> None:
    cluster_for(mesh).serve(fake_nomad)
    fake_nomad.set("GET", "/v1/var/nomad/jobs/x0-mesh", shapes.variable({"api_token": "tok-123"}))
    p = provider_for(fake_nomad)
    try:
        assert p.api_token == "tok-123"
        assert p.token_detail == "API token from Nomad variable nomad/jobs/x0-mesh"
    finally:
        p.stop()
    fake_nomad.set("GET", "/v1/var/nomad/jobs/x0-mesh", "Permission denied", status=403)
    p = provider_for(fake_nomad, env={"X0_API_TOKEN": "from-env"})
    assert p.api_token == "from-env"
    p.stop()
    p = provider_for(fake_nomad)
    assert p.api_token is None
    assert 'variables { path "nomad/jobs/*"' in p.token_detail
    p.stop()


def test_drills_through_nomad(fake_nomad: FakeNomad, mesh: LocalMesh) -> None:
    c = cluster_for(mesh)
    c.serve(fake_nomad)
    a0, a1 = c.allocs[0]["ID"], c.allocs[1]["ID"]
    fake_nomad.set("POST", f"/v1/allocation/{a0}/stop", shapes.stop_response())
    fake_nomad.set("POST", f"/v1/client/allocation/{a1}/restart", shapes.generic_response())
    fake_nomad.set("POST", f"/v1/client/allocation/{a0}/restart", None)  # empty body: still a success
    n1 = c.nodes[1]["ID"]
    fake_nomad.set("POST", f"/v1/node/{n1}/drain", shapes.drain_response())
    p = provider_for(fake_nomad)
    try:
        p.refresh()
        done = p.node_loss("node-a", 20)
        assert done.startswith("stopped allocation 00000001 (x0-mesh.node[0]) on node-a; evaluation 5456bd7a")
        assert len(fake_nomad.seen("POST", f"/v1/allocation/{a0}/stop")) == 1
        p.restore_node("node-a")  # Nomad replaces the allocation itself: nothing to send
        assert len(fake_nomad.requests) == len([r for r in fake_nomad.requests if r.method == "GET"]) + 1

        assert p.restart_allocation("node-b", task="yggdrasil").startswith("restarted task yggdrasil")
        body = json.loads(fake_nomad.seen("POST", f"/v1/client/allocation/{a1}/restart")[0].body)
        assert body == {"TaskName": "yggdrasil"}
        assert "all tasks" in p.restart_allocation("node-a")

        assert p.drain_node("node-b", 90).startswith("draining Nomad node node-b (deadline 90 s")
        assert p.undo_drain("node-b").endswith("eligible")
        drains = [json.loads(r.body) for r in fake_nomad.seen("POST", f"/v1/node/{n1}/drain")]
        assert drains[0]["DrainSpec"] == {"Deadline": 90_000_000_000, "IgnoreSystemJobs": False}
        assert drains[1] == {"NodeID": n1, "DrainSpec": None, "MarkEligible": True}

        fake_nomad.set("POST", f"/v1/allocation/{a0}/stop", "Permission denied", status=403)
        with pytest.raises(ProviderError, match=r"alloc-lifecycle"):
            p.node_loss("node-a", 20)
        with pytest.raises(ProviderError, match="no mesh node 'node-z'"):
            p.node_loss("node-z", 20)
    finally:
        p.stop()


def test_undo_drain_keeps_a_node_that_was_ineligible_before(fake_nomad: FakeNomad, mesh: LocalMesh) -> None:
    c = cluster_for(mesh)
    c.nodes[0] = shapes.node(c.nodes[0]["ID"], "node-a", eligibility="ineligible")
    c.serve(fake_nomad)
    n0 = c.nodes[0]["ID"]
    fake_nomad.set("POST", f"/v1/node/{n0}/drain", shapes.drain_response())
    p = provider_for(fake_nomad)
    try:
        p.refresh()
        p.drain_node("node-a", 10)
        assert p.undo_drain("node-a").endswith("left ineligible as before")
        assert json.loads(fake_nomad.seen("POST", f"/v1/node/{n0}/drain")[1].body)["MarkEligible"] is False
    finally:
        p.stop()


def test_allocation_collected_between_list_and_read_is_not_a_failure(
    fake_nomad: FakeNomad, mesh: LocalMesh
) -> None:
    c = cluster_for(mesh)
    c.regs.pop(1)
    c.serve(fake_nomad)
    fake_nomad.set("GET", f"/v1/allocation/{c.allocs[1]['ID']}", "alloc not found", status=404)
    p = provider_for(fake_nomad)
    try:
        snap = p.refresh()
    finally:
        p.stop()
    assert snap.ok, snap.detail
    assert snap.nodes[1].id == "node-b" and snap.nodes[1].agent_url is None
