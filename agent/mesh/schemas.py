"""Payloads of the agent's read API. These are the wire contract x0dash and tests rely on
(see docs/contracts.md); change them only together with their consumers."""

from __future__ import annotations

from typing import Literal

import msgspec


class ErrorBody(msgspec.Struct, kw_only=True):
    status_code: int
    detail: str


class HealthCheck(msgspec.Struct, kw_only=True):
    name: str  # "yggdrasil", "monitor", "members", "peers"
    ok: bool
    detail: str


class YggdrasilHealth(msgspec.Struct, kw_only=True):
    reachable: bool
    api_version: Literal["0.4", "0.5"] | None
    endpoint: str


class Health(msgspec.Struct, kw_only=True):
    status: Literal["ok", "fail"]
    node_id: str
    version: str
    yggdrasil: YggdrasilHealth
    peers_up: int
    checks: list[HealthCheck]


class MeshStatus(msgspec.Struct, kw_only=True):
    node_id: str
    key: str | None
    address: str | None
    subnet: str | None
    api_version: Literal["0.4", "0.5"] | None
    coords: list[int] | None  # 0.4 tree coordinates
    routing_entries: int | None  # 0.5
    peers_up: int
    peers_expected: int  # planned links of this node (members file)
    members_known: int
    uptime_s: float  # agent uptime
    snapshot_age_s: float | None  # age of the daemon data served; None if never read


class PeerView(msgspec.Struct, kw_only=True):
    key: str
    address: str | None
    node_id: str | None  # member id when the key belongs to a known member
    remote: str | None
    up: bool
    inbound: bool | None
    latency_ms: float | None
    bytes_recvd: int | None
    bytes_sent: int | None
    uptime_s: float | None
    last_error: str | None
    planned: bool  # part of the planned topology
    temporary: bool  # added by MAPE-K as a stand-in for a lost planned peer


class MissingPeer(msgspec.Struct, kw_only=True):
    node_id: str
    key: str | None
    listen_uri: str | None
    reason: str  # e.g. "no link", "link down: <last_error>"


class RefusedPeer(msgspec.Struct, kw_only=True):
    """A daemon that dialled this node with a key that is not a member's: its daemon refused the link."""

    key: str
    address: str | None  # the overlay address that key owns
    remote: str | None  # ip:port it dialled from, as the daemon logged it (0.4.7)
    attempts: int
    first_at: float  # unix s
    last_at: float


class MeshPeers(msgspec.Struct, kw_only=True):
    node_id: str
    peers: list[PeerView]
    missing: list[MissingPeer]
    # Peer admission (agent.admission): what this node's daemon admits, and the keys it refused in the last hour.
    # Always sent; the defaults let x0dash read an agent older than these fields (a rolling upgrade).
    admission: str = "not reported"
    refused: list[RefusedPeer] = []


class RouteView(msgspec.Struct, kw_only=True):
    kind: Literal["dht", "tree", "path", "session"]
    key: str
    address: str
    node_id: str | None
    path: list[int] | None
    next_hop_key: str | None  # peer the route goes through, when known
    next_hop_node_id: str | None


class MeshRoutes(msgspec.Struct, kw_only=True):
    node_id: str
    routes: list[RouteView]
