"""Peer admission, pure: which keys a node's daemon admits, and the daemon's own word that it refused one.

Yggdrasil's `AllowedPublicKeys` (0.4.7 and 0.5.x alike) applies to inbound links only: a daemon whose key is not
listed gets its handshake closed, and the listener logs (0.4.7 `src/core/link.go`, 0.5 `src/core/link.go`)

    Link handler tls://127.0.0.1:41984 error (127.0.0.1:41984): node public key "a14a…" is not in AllowedPublicKeys

Outbound links need no rule: the agent dials only members. An empty list admits everyone.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from agent.members import Members

CONFIG_KEY = "AllowedPublicKeys"
_REFUSED = re.compile(
    r"(?:error \((?P<remote>[^()\s]+)\): )?"
    r'node public key "?(?P<key>[0-9a-fA-F]{64})"? is not in AllowedPublicKeys'
)
# Distinct refused keys remembered (a scan with fresh keys must not grow the agent's memory).
MAX_REFUSED_KEYS = 64
# A daemon restarted for admission drops its links for about a second (then peering re-adds them): restarts take
# turns on a wall-clock grid of slots this long (see `restart_time`), each at the start of its slot.
RESTART_SLOT_S = 2.0
RESTART_LATE_S = 0.2


class Refusal(msgspec.Struct, frozen=True):
    key: str
    remote: str | None


def parse_refusal(line: str) -> Refusal | None:
    """The refused key (and the dialler's ip:port on 0.4.7) from one daemon log line, or None."""
    m = _REFUSED.search(line)
    if m is None:
        return None
    return Refusal(key=m.group("key").lower(), remote=m.group("remote"))


def member_keys(members: Members, published: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every member's known key by node id: the members file's `public_key`, else the key the node published in
    the replicated store (`published`, `x0/keys/<node_id>`: a Nomad members file carries no keys). A published key
    of a node that is not in the members file is not a member's."""
    published = published or {}
    out: dict[str, str] = {}
    for m in members.members:
        key = m.public_key or published.get(m.node_id)
        if key is not None:
            out[m.node_id] = key.lower()
    return out


def admitted_keys(
    members: Members, node_id: str, published: Mapping[str, str] | None = None
) -> tuple[str, ...] | None:
    """The keys this node's daemon should admit: every other member's known key (`member_keys`), sorted. None
    when no other member's key is known (a fresh Nomad mesh before any node published its key): the daemon then
    admits everyone. A member whose key is not known cannot dial in (`keyless` names them): admission never
    opens because one key is missing."""
    keys = {k for n, k in member_keys(members, published).items() if n != node_id}
    return tuple(sorted(keys)) if keys else None


def keyless(members: Members, node_id: str, published: Mapping[str, str] | None = None) -> list[str]:
    known = member_keys(members, published)
    return [m.node_id for m in members.members if m.node_id != node_id and m.node_id not in known]


def restart_needed(
    members: Members, node_id: str, running: tuple[str, ...], published: Mapping[str, str] | None = None
) -> bool:
    """Must the daemon restart (the only way it re-reads AllowedPublicKeys) to admit what members need now?

    `running`: the keys the running daemon admits (empty: everyone). Only when a planned neighbour's key is
    missing, or the daemon is open while every key is known: a joining node then restarts its few neighbours'
    daemons (the expander's degree), not the whole mesh. A key that left stays admitted until the daemon's next
    start (peering removes that member's links meanwhile), and a non-neighbour's key may wait for it too."""
    if admitted_keys(members, node_id, published) is None:
        return False  # opening up can wait for the next start
    if not running:
        return True
    known = member_keys(members, published)
    keys = {known[n] for n in members.neighbours(node_id) if n in known}
    return not keys <= set(running)


def restart_colours(members: Members) -> dict[str, int]:
    """A colour per member such that no two planned neighbours share one: greedy, in sorted node-id order, so every
    node computes the same colouring from the same members file (at most the topology's degree + 1 colours)."""
    colours: dict[str, int] = {}
    for node_id in sorted(members.ids):
        taken = {colours[n] for n in members.neighbours(node_id) if n in colours}
        colours[node_id] = next(c for c in range(len(taken) + 1) if c not in taken)
    return colours


def restart_time(colours: Mapping[str, int], node_id: str, now: float) -> float:
    """When (Unix time) this node's daemon may restart for admission: the start of its colour's next
    `RESTART_SLOT_S` slot (or of the current one, if that began at most `RESTART_LATE_S` ago), slots counted
    from the epoch and coloured in turn.

    Every node of a Nomad mesh learns every key from the store within a refresh of the others, and a daemon that
    runs open must restart to close: all at once, every link of the mesh would drop together (and Raft, which
    rides those links, would lose its leader). On a shared grid a restart never meets a neighbour's, whatever
    moment each node learned the keys; a node waits at most one round of colours."""
    rounds = max(colours.values(), default=0) + 1
    colour = colours.get(node_id, 0)
    # A slot already under way is taken only at its very start: a restart late in it would meet the next colour's.
    slot = math.ceil((now - RESTART_LATE_S) / RESTART_SLOT_S)
    return (slot + (colour - slot) % rounds) * RESTART_SLOT_S


def configured_keys(config: Mapping[str, Any]) -> tuple[str, ...]:
    raw = config.get(CONFIG_KEY) or []
    return tuple(sorted(str(k).lower() for k in raw)) if isinstance(raw, list) else ()


class RefusedPeer(msgspec.Struct, kw_only=True):
    key: str
    remote: str | None  # ip:port it dialled from, as the daemon saw it (0.4.7 logs it)
    attempts: int
    first_at: float  # unix s
    last_at: float


class RefusalLog:
    """Refused keys seen in the daemon's log, bounded: past MAX_REFUSED_KEYS the least recent is forgotten."""

    def __init__(self, limit: int = MAX_REFUSED_KEYS) -> None:
        self.limit = limit
        self._by_key: dict[str, RefusedPeer] = {}
        self.total = 0

    def record(self, refusal: Refusal, now: float) -> RefusedPeer:
        self.total += 1
        peer = self._by_key.pop(refusal.key, None)
        if peer is None:
            peer = RefusedPeer(key=refusal.key, remote=refusal.remote, attempts=0, first_at=now, last_at=now)
        peer.attempts += 1
        peer.last_at = now
        peer.remote = refusal.remote or peer.remote
        self._by_key[refusal.key] = peer  # re-inserted: dict order = least recent first
        while len(self._by_key) > self.limit:
            del self._by_key[next(iter(self._by_key))]
        return peer

    def recent(self, since: float) -> list[RefusedPeer]:
        """Keys refused at or after `since`, most recent first."""
        return [p for p in reversed(self._by_key.values()) if p.last_at >= since]

    def extend(self, refusals: Iterable[Refusal], now: float) -> list[RefusedPeer]:
        return [self.record(r, now) for r in refusals]
