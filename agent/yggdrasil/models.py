"""Version-independent view of what a Yggdrasil daemon reports.

Both admin APIs (0.4.x and 0.5.x, see shared/reference/yggdrasil.md) are normalized into these
structs by `agent.yggdrasil.normalize`; nothing outside that module looks at raw daemon JSON.
Units are base units or explicit in the name (`_s` seconds, `_ms` milliseconds).
"""

from __future__ import annotations

from typing import Literal

import msgspec

ApiVersion = Literal["0.4", "0.5"]
RouteKind = Literal["dht", "tree", "path", "session"]


class SelfInfo(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    address: str
    subnet: str
    build_name: str | None = None
    build_version: str | None = None
    # 0.4 only: tree coordinates (root has []).
    coords: list[int] | None = None
    # 0.5 only.
    routing_entries: int | None = None


class PeerLink(msgspec.Struct, frozen=True, kw_only=True):
    """One link as the daemon lists it. 0.4 lists only connected links; 0.5 lists down ones too."""

    key: str  # "" when the link is down (0.5)
    up: bool
    address: str | None = None
    remote: str | None = None  # peer URI, query stripped (as the daemon reports it)
    inbound: bool | None = None  # None when the daemon does not say (0.4)
    port: int | None = None  # local switch port
    priority: int | None = None
    cost: int | None = None  # 0.5.9+
    latency_ms: float | None = None  # 0.5.6+, converted from nanoseconds
    bytes_recvd: int | None = None
    bytes_sent: int | None = None
    rate_recvd: int | None = None  # bytes/s, 0.5.10+
    rate_sent: int | None = None
    uptime_s: float | None = None
    last_error: str | None = None
    last_error_age_s: float | None = None  # 0.5: seconds since last_error
    coords: list[int] | None = None  # 0.4


class RouteEntry(msgspec.Struct, frozen=True, kw_only=True):
    """A destination known to the routing layer: a DHT/tree entry, a path, or a session."""

    kind: RouteKind
    key: str
    address: str
    path: list[int] | None = None  # switch ports, first hop first (getPaths)
    parent_key: str | None = None  # tree parent (0.5 getTree)
    next_hop_port: int | None = None  # local port of the peer it goes through, when known
    bytes_recvd: int | None = None  # sessions
    bytes_sent: int | None = None
    uptime_s: float | None = None


class DaemonSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Everything one monitor pass read from the daemon, in one keepalive connection."""

    api_version: ApiVersion
    self_info: SelfInfo
    peers: list[PeerLink]
    routes: list[RouteEntry]  # DHT or tree entries, then paths, then sessions; never this node itself
    taken_at: float  # unix seconds
