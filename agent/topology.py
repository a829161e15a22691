"""Planned mesh topology: which members link to which, and which side of each link dials.

Pure functions, the one place for this rule (the agent, `x0-agent local-mesh` and MAPE-K all use them).
A link is `(dialer, acceptor)`: the dialer `addPeer`s the acceptor's listen URI, the acceptor only accepts, so
each pair holds exactly one Yggdrasil link. The lower id in string order dials, so every node computes the same
plan from the same member list.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

Topology = Literal["full", "ring", "chain"]
TOPOLOGIES: tuple[Topology, ...] = ("full", "ring", "chain")
Link = tuple[str, str]


def _ordered(a: str, b: str) -> Link:
    return (a, b) if a < b else (b, a)


def plan_links(ids: Sequence[str], topology: Topology = "full") -> list[Link]:
    """Links of `topology` over `ids`, each as (dialer, acceptor), in a stable order.

    `full` links every pair; `chain` links neighbours in the given order (ids[0]-ids[1]-...); `ring` is the
    chain closed from the last id back to the first (for 2 nodes it is the single link, not a double one).
    """
    if topology not in TOPOLOGIES:
        raise ValueError(f"unknown topology {topology!r} (expected one of {', '.join(TOPOLOGIES)})")
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate ids in {list(ids)!r}")
    n = len(ids)
    if topology == "full":
        links = [_ordered(ids[i], ids[j]) for i in range(n) for j in range(i + 1, n)]
    else:
        links = [_ordered(ids[i], ids[i + 1]) for i in range(n - 1)]
        if topology == "ring" and n > 2:
            links.append(_ordered(ids[-1], ids[0]))
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
