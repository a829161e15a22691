"""Who votes: the same pure function on every node (docs/contracts.md §7).

Members are ranked by a hash of (mesh, node id), so the order does not depend on the order of the members file
and a new member lands at a random place instead of always displacing the last voter; hosts are then visited
round-robin so the first voters run on distinct machines (a Nomad client lost takes at most one voter while
hosts remain). The first `voter_count` members of that order are the target voters; a voter lost for good is
excluded by the leader and the next member in the order takes its place.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

from agent.members import Member


def voter_count(members: int, wanted: int) -> int:
    """The largest odd number <= min(wanted, members); at least 1 (a lone node is its own leader)."""
    n = max(1, min(wanted, members))
    return n if n % 2 == 1 else n - 1


def _rank(mesh: str, node_id: str) -> str:
    return hashlib.sha256(f"{mesh}/{node_id}".encode()).hexdigest()


def voter_order(mesh: str | None, members: Sequence[Member]) -> list[str]:
    """Every member id, in the order voters are chosen (spread across `host`s first)."""
    ranked = sorted(members, key=lambda m: (_rank(mesh or "", m.node_id), m.node_id))
    by_host: dict[str, list[str]] = {}
    for m in ranked:
        # A member that does not say where it runs is its own host.
        by_host.setdefault(m.host or f"\0{m.node_id}", []).append(m.node_id)
    order: list[str] = []
    queues = list(by_host.values())  # dict order = order of each host's best-ranked member
    while queues:
        for q in queues:
            order.append(q.pop(0))
        queues = [q for q in queues if q]
    return order


def target_voters(order: Sequence[str], count: int, exclude: Iterable[str] = ()) -> list[str]:
    """The first `count` ids of `order` that are not excluded (lost voters), in order."""
    skip = set(exclude)
    return [n for n in order if n not in skip][:count]


def sticky_target(order: Sequence[str], current: Iterable[str], count: int, lost: Iterable[str] = ()) -> list[str]:
    """The voters the leader steers to: current voters stay (so a voter that comes back after being replaced
    does not displace its replacement), lost ones go, the group is filled from `order` or trimmed from its end."""
    skip = set(lost)
    members = set(order)
    now = set(current)
    keep = [n for n in order if n in now and n not in skip][:count]
    fill = [n for n in order if n not in now and n not in skip]
    chosen = set(keep + fill[: max(0, count - len(keep))])
    return [n for n in order if n in chosen and n in members]


def raft_address(member: Member, port: int) -> str:
    """host:port of the member's Raft listener (contracts §2): explicit, else overlay address, else the agent
    URL's host. IPv6 literals are written without brackets (pysyncobj splits on the last ':')."""
    if member.raft_address:
        host, _, p = member.raft_address.rpartition(":")
        return f"{host.strip('[]')}:{p}"
    if member.address:
        return f"{member.address}:{port}"
    host = urlsplit(member.agent_url).hostname or "127.0.0.1"
    return f"{host}:{port}"


def overlay_raft_address(member: Member, overlay: str, port: int) -> str:
    """host:port of the member's Raft listener on its overlay address (X0_RAFT_TRANSPORT=overlay): the port of
    its raft_address when the members file gives one (Nomad publishes each allocation's port), else `port`."""
    if member.raft_address:
        _, _, p = member.raft_address.rpartition(":")
        if p.isdigit():
            port = int(p)
    return f"{overlay}:{port}"


def agent_url(member: Member) -> str:
    """Where other agents reach this member's API for forwarding: over the overlay when it has one, so a
    partitioned node is partitioned for clients too; the underlay otherwise."""
    return (member.overlay_url or member.agent_url).rstrip("/")
