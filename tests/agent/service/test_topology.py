"""plan_links and the helpers: one link per pair, the lower id dials, every node computes the same plan."""

from __future__ import annotations

import pytest

from agent import topology
from agent.topology import plan_links


def test_full_mesh_every_pair_once_lower_id_dials() -> None:
    links = plan_links(["node-c", "node-a", "node-b"], "full")
    assert sorted(links) == [("node-a", "node-b"), ("node-a", "node-c"), ("node-b", "node-c")]
    assert all(a < b for a, b in links)


def test_chain_and_ring_follow_the_given_order() -> None:
    ids = ["node-a", "node-b", "node-c", "node-d"]
    assert plan_links(ids, "chain") == [("node-a", "node-b"), ("node-b", "node-c"), ("node-c", "node-d")]
    assert plan_links(ids, "ring") == [
        ("node-a", "node-b"),
        ("node-b", "node-c"),
        ("node-c", "node-d"),
        ("node-a", "node-d"),
    ]


@pytest.mark.parametrize("topo", ["full", "ring", "chain"])
def test_small_meshes(topo: topology.Topology) -> None:
    assert plan_links([], topo) == []
    assert plan_links(["a"], topo) == []
    assert plan_links(["a", "b"], topo) == [("a", "b")]  # a 2-ring is one link, not two


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown topology"):
        plan_links(["a"], "star")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="duplicate"):
        plan_links(["a", "a"], "full")


def test_validate_links() -> None:
    assert topology.validate_links([["b", "a"]], ["a", "b"]) == [("b", "a")]  # explicit: first id dials
    for bad, msg in [
        ([["a", "x"]], "unknown member"),
        ([["a", "a"]], "itself"),
        ([["a", "b"], ["b", "a"]], "twice"),
        ([["a"]], "pair"),
    ]:
        with pytest.raises(ValueError, match=msg):
            topology.validate_links(bad, ["a", "b"])


def test_helpers() -> None:
    links = plan_links(["a", "b", "c"], "chain")
    assert topology.neighbours(links, "b") == ["a", "c"]
    assert topology.dials(links, "b") == ["c"]
    assert topology.accepts_from(links, "b") == ["a"]
    assert topology.dialer_of(links, "c", "b") == "b"
    assert topology.dialer_of(links, "a", "c") is None
    assert topology.default_dialer("c", "a") == "a"
