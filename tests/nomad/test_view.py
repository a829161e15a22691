"""The pure Nomad -> mesh mapping (dashboard/nomad/view.py) on corrected sample shapes."""

from __future__ import annotations

import pytest

from dashboard.nomad import view
from tests.nomad import shapes


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("nomad-4", "nomad-4"),
        ("ip-10-0-1-5.EC2.internal", "ip-10-0-1-5-ec2-internal"),
        ("__Edge_Node__", "edge-node-"),
        ("node-0", "node-0"),
        ("x" * 80, "x" * 63),
    ],
)
def test_mesh_node_id_matches_the_job_template_pipeline(raw: str, expected: str) -> None:
    assert view.mesh_node_id(raw) == expected


def _system(n: int = 3) -> tuple[dict, list[dict], list[dict], list[dict]]:
    job = shapes.job()
    nodes = [shapes.node(f"{i:08d}-0000-4000-8000-000000000000", f"nomad-{i}") for i in range(1, n + 1)]
    allocs = [
        shapes.alloc_stub(f"a{i:07d}-1111-4000-8000-000000000000", nd["ID"], nd["Name"], create_index=10 + i)
        for i, nd in enumerate(nodes, 1)
    ]
    regs = [
        shapes.registration(a, service=view.AGENT_SERVICE, port=21000 + i, node_name=a["NodeName"])
        for i, a in enumerate(allocs)
    ]
    return job, nodes, allocs, regs


def test_system_job_maps_each_allocation_to_its_node_and_agent() -> None:
    job, nodes, allocs, regs = _system()
    v = view.build_view(job, allocs, nodes, regs)
    assert [n.node_id for n in v.nodes] == ["nomad-1", "nomad-2", "nomad-3"]
    t = v.targets()[1]
    assert t.agent_url == "http://127.0.0.1:21001"
    assert t.metrics_url == "http://127.0.0.1:21001/metrics"
    assert t.nomad is not None
    assert (t.nomad.node_name, t.nomad.datacenter, t.nomad.node_status, t.nomad.eligibility, t.nomad.drain) == (
        "nomad-2",
        "dc1",
        "ready",
        "eligible",
        False,
    )
    assert t.nomad.alloc_name == "x0-mesh.node[0]"
    assert v.warnings == []
    assert v.need_ports == []
    assert v.planned_links() == [("nomad-1", "nomad-2"), ("nomad-1", "nomad-3"), ("nomad-2", "nomad-3")]


def test_registrations_of_other_jobs_are_ignored() -> None:
    job, nodes, allocs, regs = _system(1)
    other = dict(regs[0], JobID="someone-else", AllocID=allocs[0]["ID"], Port=1)
    v = view.build_view(job, allocs, nodes, [other])
    assert v.nodes[0].agent_url is None
    assert v.need_ports == [allocs[0]["ID"]]


def test_dev_service_job_names_nodes_by_alloc_index_without_registrations() -> None:
    job = shapes.job(job_type="service", node_name="node-${NOMAD_ALLOC_INDEX}")
    nd = shapes.node("n1", "laptop")
    allocs = [shapes.alloc_stub(f"a{i}", "n1", "laptop", index=i, job_type="service") for i in range(3)]
    full = {
        a["ID"]: view.alloc_api_url(shapes.allocation(a, api_port=22000 + i, peer_port=23000 + i))
        for i, a in enumerate(allocs)
    }
    v = view.build_view(job, allocs, [nd], [], full)
    assert [(n.node_id, n.agent_url, n.url_source) for n in v.nodes] == [
        ("node-0", "http://127.0.0.1:22000", "alloc ports"),
        ("node-1", "http://127.0.0.1:22001", "alloc ports"),
        ("node-2", "http://127.0.0.1:22002", "alloc ports"),
    ]
    assert all("no x0-mesh-agent service registration" in w for w in v.warnings)
    assert len(v.warnings) == 3


def test_replacement_allocation_wins_and_old_one_is_kept_as_history() -> None:
    job, nodes, _, _ = _system(1)
    old = shapes.alloc_stub(
        "old-alloc", nodes[0]["ID"], "nomad-1", client="complete", desired="stop", create_index=5
    )
    new = shapes.alloc_stub("new-alloc", nodes[0]["ID"], "nomad-1", client="pending", create_index=50)
    v = view.build_view(job, [old, new], nodes, [])
    assert len(v.nodes) == 1
    assert v.nodes[0].alloc_id == "new-alloc"
    assert [a["ID"] for a in v.nodes[0].others] == ["old-alloc"]
    assert v.warnings == []  # pending, not yet running: no registration expected


def test_two_live_allocations_for_one_node_are_reported() -> None:
    job, nodes, allocs, regs = _system(1)
    twin = shapes.alloc_stub("twin-alloc", nodes[0]["ID"], "nomad-1", create_index=99)
    v = view.build_view(job, [allocs[0], twin], nodes, regs)
    assert any("2 live allocations claim this node" in w for w in v.warnings)


def test_terminal_allocation_on_a_down_node_is_not_a_mesh_node() -> None:
    job, nodes, allocs, regs = _system(2)
    nodes[1] = shapes.node(nodes[1]["ID"], "nomad-2", status="down")
    allocs[1] = shapes.alloc_stub(allocs[1]["ID"], nodes[1]["ID"], "nomad-2", client="lost", desired="stop")
    v = view.build_view(job, allocs, nodes, regs)
    assert [n.node_id for n in v.nodes] == ["nomad-1"]


def test_running_allocation_on_a_down_node_is_reported() -> None:
    job, nodes, allocs, regs = _system(2)
    nodes[1] = shapes.node(nodes[1]["ID"], "nomad-2", status="down")
    v = view.build_view(job, allocs, nodes, regs)
    assert any("nomad-2: allocation" in w and "node nomad-2 is down" in w for w in v.warnings)


def test_system_job_gaps_respect_datacenter_eligibility_drain_and_status() -> None:
    job, nodes, allocs, regs = _system(1)
    extra = [
        shapes.node("gap", "nomad-gap"),
        shapes.node("other-dc", "nomad-eu", dc="eu1"),
        shapes.node("down", "nomad-down", status="down"),
        shapes.node("inel", "nomad-inel", eligibility="ineligible"),
        shapes.node("drain", "nomad-drain", drain=True),
    ]
    v = view.build_view(job, allocs, nodes + extra, regs)
    gaps = [w for w in v.warnings if "runs no x0-mesh allocation" in w]
    assert len(gaps) == 1
    assert "nomad-gap (dc1)" in gaps[0]
    # A service job (dev) is not expected to cover every node.
    assert not [
        w
        for w in view.build_view(shapes.job(job_type="service"), allocs, nodes + extra, regs).warnings
        if "runs no" in w
    ]


def test_datacenter_globs_are_honoured() -> None:
    job = shapes.job(datacenters=["eu*"])
    nodes = [shapes.node("a", "eu-node", dc="eu1"), shapes.node("b", "us-node", dc="us1")]
    v = view.build_view(job, [], nodes, [])
    assert [w.split(" ")[2] for w in v.warnings] == ["eu-node"]


def test_ipv6_addresses_are_bracketed() -> None:
    job, nodes, allocs, _ = _system(1)
    reg = shapes.registration(
        allocs[0], service=view.AGENT_SERVICE, port=8080, node_name="nomad-1", address="fd00::5"
    )
    assert view.build_view(job, allocs, nodes, [reg]).nodes[0].agent_url == "http://[fd00::5]:8080"
    full = shapes.allocation(allocs[0], api_port=8080, peer_port=12345, host_ip="fd00::6")
    assert view.alloc_api_url(full) == "http://[fd00::6]:8080"


def test_agent_warnings_compare_both_views() -> None:
    job, nodes, allocs, regs = _system(3)
    allocs[2] = shapes.alloc_stub(allocs[2]["ID"], nodes[2]["ID"], "nomad-3", client="complete", desired="stop")
    v = view.build_view(job, allocs, nodes, regs)
    out = view.agent_warnings(v.nodes, {"nomad-1": None, "nomad-2": "unreachable", "nomad-3": None})
    assert len(out) == 2
    assert out[0].startswith("nomad-2: Nomad says allocation") and out[0].endswith("is unreachable")
    assert out[1].startswith("nomad-3: the agent at") and "is complete (desired stop)" in out[1]
