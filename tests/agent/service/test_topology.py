"""plan_links and the helpers: one link per pair, the lower id dials, every node computes the same plan."""

from __future__ import annotations

import itertools

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


def _diameter(ids: list[str], links: list[tuple[str, str]]) -> int:
    adj: dict[str, set[str]] = {i: set() for i in ids}
    for a, b in links:
        adj[a].add(b)
        adj[b].add(a)
    worst = 0
    for start in ids:
        dist = {start: 0}
        queue = [start]
        for x in queue:
            for y in adj[x]:
                if y not in dist:
                    dist[y] = dist[x] + 1
                    queue.append(y)
        assert len(dist) == len(ids), "the expander must be connected"
        worst = max(worst, max(dist.values()))
    return worst


@pytest.mark.parametrize(("n", "max_diameter"), [(9, 4), (20, 5), (100, 8), (1000, 12)])
def test_expander_has_a_fixed_degree_and_a_logarithmic_diameter(n: int, max_diameter: int) -> None:
    ids = [f"node-{i:04d}" for i in range(n)]
    links = plan_links(ids, "expander")
    degree = {i: len(topology.neighbours(links, i)) for i in ids}
    assert max(degree.values()) <= 2 * topology.EXPANDER_RINGS  # whatever n: 4 links per node at most
    assert min(degree.values()) >= 2
    assert len(links) <= topology.EXPANDER_RINGS * n
    assert _diameter(ids, links) <= max_diameter  # a ring of 1,000 has diameter 500
    assert all(a < b for a, b in links)  # the lower id dials


def test_expander_is_a_function_of_the_id_set() -> None:
    ids = [f"node-{c}" for c in "abcdefghijklmnopqrst"]
    shuffled = ids[5:] + ids[:5]
    assert sorted(plan_links(ids, "expander")) == sorted(plan_links(shuffled, "expander"))
    # One member more changes only the links next to it in each ring: most links stay.
    grown = set(plan_links([*ids, "node-u"], "expander"))
    assert len(set(plan_links(ids, "expander")) - grown) <= 2 * topology.EXPANDER_RINGS


def test_auto_is_full_up_to_8_and_expander_above() -> None:
    eight = [f"n{i}" for i in range(8)]
    nine = [f"n{i}" for i in range(9)]
    assert plan_links(eight, "auto") == plan_links(eight, "full")
    assert plan_links(nine, "auto") == plan_links(nine, "expander") != plan_links(nine, "full")
    assert plan_links(["a", "b"], "expander") == [("a", "b")]


def test_watch_sets_are_the_planned_neighbours_up_to_watch_max_and_stay_small_beyond() -> None:
    small = [f"n{i:02d}" for i in range(topology.WATCH_MAX + 1)]
    adj = topology.adjacency(plan_links(small, "full"))
    assert topology.watch_sets(small, adj) == adj  # every node has exactly WATCH_MAX planned neighbours
    ids = [f"n{i:04d}" for i in range(1000)]
    hub = [("n0000", i) for i in ids[1:]]  # a hub planned with every member, the rest in a chain behind it
    links = hub + list(itertools.pairwise(ids[1:]))
    adj = topology.adjacency(links)
    watch = topology.watch_sets(ids, adj)
    assert len(watch["n0000"]) <= 2 * topology.EXPANDER_RINGS
    assert watch["n0500"] == adj["n0500"]  # 3 planned neighbours: watched as planned
    full = topology.adjacency(plan_links(ids[:200], "full"))
    watch = topology.watch_sets(ids[:200], full)
    assert max(len(v) for v in watch.values()) <= 2 * topology.EXPANDER_RINGS
    # everyone is watched by someone, and both ends of a watched link watch it (one probe per link suffices)
    assert {m for v in watch.values() for m in v} == set(ids[:200])
    assert all(a in watch[b] for a, v in watch.items() for b in v)
