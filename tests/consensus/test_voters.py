"""Voter choice is a pure function of the members file: the same on every node, spread across hosts."""

from __future__ import annotations

import random

from agent.consensus.voters import overlay_raft_address, raft_address, target_voters, voter_count, voter_order
from agent.members import Member


def _m(node_id: str, host: str | None = None, **kw: str) -> Member:
    return Member(node_id=node_id, agent_url=f"http://10.0.0.{len(node_id)}:8080", host=host, **kw)


def test_voter_count_is_the_largest_odd_within_the_members() -> None:
    assert [voter_count(n, 5) for n in (1, 2, 3, 4, 5, 6, 7, 500)] == [1, 1, 3, 3, 5, 5, 5, 5]
    assert voter_count(7, 3) == 3 and voter_count(7, 4) == 3 and voter_count(0, 5) == 1


def test_order_does_not_depend_on_the_file_order() -> None:
    members = [_m(f"node-{i}") for i in range(20)]
    shuffled = members[:]
    random.Random(7).shuffle(shuffled)
    assert voter_order("m", members) == voter_order("m", shuffled)
    assert sorted(voter_order("m", members)) == sorted(m.node_id for m in members)
    assert voter_order("m", members) != voter_order("other-mesh", members)


def test_first_voters_sit_on_distinct_hosts() -> None:
    members = [_m(f"n{i}", host=f"h{i % 3}") for i in range(9)]  # 3 hosts, 3 members each
    order = voter_order("m", members)
    hosts = {m.node_id: m.host for m in members}
    assert len({hosts[n] for n in order[:3]}) == 3
    five = order[:5]
    assert max(sum(1 for n in five if hosts[n] == h) for h in ("h0", "h1", "h2")) == 2


def test_a_lost_voter_is_replaced_by_the_next_in_order() -> None:
    order = ["c", "a", "e", "b", "d"]
    assert target_voters(order, 3) == ["c", "a", "e"]
    assert target_voters(order, 3, exclude={"a"}) == ["c", "e", "b"]


def test_raft_address_prefers_explicit_then_overlay_then_underlay() -> None:
    assert raft_address(_m("a", raft_address="[200::1]:9000"), 8082) == "200::1:9000"
    assert raft_address(_m("a", address="200::2"), 8082) == "200::2:8082"
    assert raft_address(_m("abc"), 8082) == "10.0.0.3:8082"


def test_overlay_raft_address_keeps_only_the_port_of_the_members_raft_address() -> None:
    # Nomad writes the allocation's underlay address and Raft port; the overlay transport binds the overlay one.
    assert overlay_raft_address(_m("a", raft_address="10.0.0.7:23456"), "200::7", 8082) == "200::7:23456"
    assert overlay_raft_address(_m("a"), "200::7", 8082) == "200::7:8082"


def test_sticky_target_keeps_current_voters_and_fills_in_order() -> None:
    from agent.consensus.voters import sticky_target

    order = ["c", "a", "e", "b", "d", "f", "g"]
    assert sticky_target(order, [], 5) == ["c", "a", "e", "b", "d"]
    # "a" lost: replaced by the next in order; once back it does not displace "f".
    assert sticky_target(order, ["c", "a", "e", "b", "d"], 5, lost={"a"}) == ["c", "e", "b", "d", "f"]
    assert sticky_target(order, ["c", "e", "b", "d", "f"], 5) == ["c", "e", "b", "d", "f"]
    # Shrink 5 -> 3 trims from the end of the order; grow 3 -> 5 fills from it.
    assert sticky_target(order, ["c", "a", "e", "b", "d"], 3) == ["c", "a", "e"]
    assert sticky_target(order, ["c", "a", "e"], 5) == ["c", "a", "e", "b", "d"]
    # A member gone from the file is no longer a voter.
    assert sticky_target(["c", "a", "e"], ["c", "a", "e", "b", "d"], 5) == ["c", "a", "e"]
