"""Planned mesh topology: which members link to which, and which side of each link dials.

Pure functions, the one place for this rule (the agent, `x0-agent local-mesh` and MAPE-K all use them).

`expander` is the topology that scales: the union of `EXPANDER_RINGS` rings over the members, the first in id
order, each other one in the order of a hash of (ring, id). Every node has at most 2 * EXPANDER_RINGS links
whatever the mesh size, and a union of random Hamiltonian cycles is an expander: its diameter grows as log N
(20 members: 3-4 hops; 1,000: about 9), where a ring's is N/2 and a full mesh needs N(N-1)/2 links. It is a pure
function of the *set* of ids (file order does not matter), so every node plans the same links, and a member
joining or leaving changes only the links next to it in each ring. `auto` (the default) is `full` up to
`AUTO_FULL_MAX` members and `expander` above.
A link is `(dialer, acceptor)`: the dialer `addPeer`s the acceptor's listen URI, the acceptor only accepts, so
each pair holds exactly one Yggdrasil link. The lower id in string order dials, so every node computes the same
plan from the same member list.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Literal

Topology = Literal["auto", "full", "ring", "chain", "expander"]
TOPOLOGIES: tuple[Topology, ...] = ("auto", "full", "ring", "chain", "expander")
Link = tuple[str, str]
EXPANDER_RINGS = 2
AUTO_FULL_MAX = 8
# SWIM probes a node's planned neighbours every interval; a node planned with more (a `full` plan of many members,
# a hub in given links) watches its expander neighbours instead, so its probing stays O(1) in the mesh size.
WATCH_MAX = 16


def resolve(topology: Topology, n: int) -> Topology:
    """`auto` for a mesh of n members: `full` up to AUTO_FULL_MAX, `expander` above; others unchanged."""
    if topology == "auto":
        return "full" if n <= AUTO_FULL_MAX else "expander"
    return topology


def _ordered(a: str, b: str) -> Link:
    return (a, b) if a < b else (b, a)


def plan_links(ids: Sequence[str], topology: Topology = "full") -> list[Link]:
    """Links of `topology` over `ids`, each as (dialer, acceptor), in a stable order.

    `full` links every pair; `chain` links neighbours in the given order (ids[0]-ids[1]-...); `ring` is the
    chain closed from the last id back to the first (for 2 nodes it is the single link, not a double one);
    `expander` and `auto`: see the module docstring.
    """
    if topology not in TOPOLOGIES:
        raise ValueError(f"unknown topology {topology!r} (expected one of {', '.join(TOPOLOGIES)})")
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate ids in {list(ids)!r}")
    n = len(ids)
    topology = resolve(topology, n)
    if topology == "expander":
        return expander_links(ids)
    if topology == "full":
        links = [_ordered(ids[i], ids[j]) for i in range(n) for j in range(i + 1, n)]
    else:
        links = [_ordered(ids[i], ids[i + 1]) for i in range(n - 1)]
        if topology == "ring" and n > 2:
            links.append(_ordered(ids[-1], ids[0]))
    return links


def _ring_order(ids: Iterable[str], ring: int) -> list[str]:
    if ring == 0:
        return sorted(ids)
    return sorted(ids, key=lambda i: (hashlib.sha256(f"x0-ring-{ring}:{i}".encode()).digest(), i))


def expander_links(ids: Sequence[str], rings: int = EXPANDER_RINGS) -> list[Link]:
    """The union of `rings` rings over the ids (see the module docstring), each link once, lower id dialling,
    in a stable order."""
    n = len(ids)
    if n < 2:
        return []
    seen: set[Link] = set()
    links: list[Link] = []
    for r in range(rings):
        order = _ring_order(ids, r)
        pairs = n if n > 2 else 1
        for i in range(pairs):
            link = _ordered(order[i], order[(i + 1) % n])
            if link not in seen:
                seen.add(link)
                links.append(link)
    return links


def validate_links(links: Iterable[Sequence[str]], ids: Iterable[str]) -> list[Link]:
    """Check an explicit link list (members file `links`) against the member ids; raises ValueError."""
    known = set(ids)
    out: list[Link] = []
    seen: set[frozenset[str]] = set()
    for link in links:
        if len(link) != 2:
            raise ValueError(f"link {list(link)!r} must be a pair [dialer, acceptor]")
        a, b = link[0], link[1]
        for end in (a, b):
            if end not in known:
                raise ValueError(f"link {[a, b]!r} names unknown member {end!r}")
        if a == b:
            raise ValueError(f"link {[a, b]!r} links a member to itself")
        pair = frozenset((a, b))
        if pair in seen:
            raise ValueError(f"link {[a, b]!r} listed twice (each pair holds one link; first id dials)")
        seen.add(pair)
        out.append((a, b))
    return out


def adjacency(links: Iterable[Link]) -> dict[str, tuple[str, ...]]:
    """Every node's planned peers (either side of a link, in link order), built in one pass over the links."""
    out: dict[str, list[str]] = {}
    for a, b in links:
        out.setdefault(a, []).append(b)
        out.setdefault(b, []).append(a)
    return {k: tuple(v) for k, v in out.items()}


def watch_sets(ids: Sequence[str], adjacent: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    """The members each node's failure detector probes every interval: its planned neighbours, or, for a node
    with more than WATCH_MAX of them, its neighbours in the expander over `ids` (built only when some node needs
    it: O(N log N) once per members file)."""
    out = {node: adjacent.get(node, ()) for node in ids}
    if any(len(v) > WATCH_MAX for v in out.values()):
        ring = adjacency(expander_links(ids))
        for node, planned in out.items():
            if len(planned) > WATCH_MAX:
                out[node] = ring.get(node, ())
    return out


def neighbours(links: Iterable[Link], node: str) -> list[str]:
    """Planned peers of `node` (either side of a link), in link order."""
    out: list[str] = []
    for a, b in links:
        if a == node:
            out.append(b)
        elif b == node:
            out.append(a)
    return out


def dials(links: Iterable[Link], node: str) -> list[str]:
    """Members `node` dials (it calls addPeer for them)."""
    return [b for a, b in links if a == node]


def accepts_from(links: Iterable[Link], node: str) -> list[str]:
    """Members that dial `node`."""
    return [a for a, b in links if b == node]


def dialer_of(links: Iterable[Link], x: str, y: str) -> str | None:
    """Which of x, y dials their planned link, or None when they are not planned peers."""
    for a, b in links:
        if {a, b} == {x, y}:
            return a
    return None


def default_dialer(x: str, y: str) -> str:
    """Side that dials an unplanned link between x and y (e.g. a temporary MAPE-K link): the lower id."""
    return _ordered(x, y)[0]
