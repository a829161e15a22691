"""Pure builders: (daemon snapshot, members, node id) -> the read API payloads and the metrics view.

No I/O and no clock reads here (callers pass `now`), so every rule (which link is which member, what is missing,
where a route goes) is unit-tested without a daemon. MAPE-K uses `match_peers`/`planned_status` for the same
answers the API gives.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from agent.members import Member, Members
from agent.mesh.schemas import (
    Health,
    HealthCheck,
    MeshPeers,
    MeshRoutes,
    MeshStatus,
    MissingPeer,
    PeerView,
    RouteView,
    YggdrasilHealth,
)
from agent.metrics import MetricsView, PeerSample
from agent.yggdrasil.models import DaemonSnapshot, PeerLink


@dataclass(frozen=True, slots=True)
class MeshContext:
    """Everything besides the snapshot that the views depend on."""

    node_id: str
    members: Members
    # Keys learned at runtime for members whose file entry has none (outbound links, MAPE-K probes).
    learned_keys: Mapping[str, str]
    temporary: frozenset[str]  # member ids MAPE-K linked as stand-ins
    static_peers: tuple[str, ...] = ()  # YGGDRASIL_PEERS
    self_key: str | None = None  # this node's daemon key (from the snapshot), when known
    # learned_keys inverted (key -> node id), built once per context so link matching stays O(links).
    learned_ids: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.learned_keys and not self.learned_ids:
            object.__setattr__(self, "learned_ids", {k: n for n, k in self.learned_keys.items()})

    def key_of(self, node_id: str) -> str | None:
        m = self.members.by_id.get(node_id)
        if m is not None and m.public_key:
            return m.public_key
        return self.learned_keys.get(node_id)

    def not_dialled(self, node_id: str) -> str | None:
        """Why this node must not dial `node_id` although the plan says so, or None."""
        why = self.members.invalid.get(node_id)
        if why is not None:
            return why
        if self.self_key is not None and node_id != self.node_id and self.key_of(node_id) == self.self_key:
            return "its public_key is this node's own daemon key (the daemon would dial itself)"
        return None


def member_of_link(link: PeerLink, ctx: MeshContext) -> Member | None:
    """The member at the other end of `link`: by key, then overlay address, then (outbound) dialled URI."""
    members = ctx.members
    found = members.member_for(link.key, link.address)
    if found is not None:
        return found
    if link.key:
        node_id = ctx.learned_ids.get(link.key)
        if node_id is not None and node_id in members.by_id:
            return members.by_id[node_id]
    if link.remote and link.inbound is not True:
        return members.member_at(link.remote)
    return None


def match_peers(snapshot: DaemonSnapshot, ctx: MeshContext) -> list[tuple[PeerLink, Member | None]]:
    return [(link, member_of_link(link, ctx)) for link in snapshot.peers]


def learn_keys(snapshot: DaemonSnapshot, members: Members) -> dict[str, str]:
    """Keys of members without one in the file, learned from our outbound links to their listen URI."""
    out: dict[str, str] = {}
    for link in snapshot.peers:
        if not link.up or not link.key or not link.remote or link.inbound is True:
            continue
        m = members.member_at(link.remote)
        if m is not None and m.public_key is None:
            out[m.node_id] = link.key
    return out


@dataclass(frozen=True, slots=True)
class PlannedPeerStatus:
    node_id: str
    up: bool
    reason: str  # why it is not up ("" when up)


def planned_status(matched: Iterable[tuple[PeerLink, Member | None]], ctx: MeshContext) -> list[PlannedPeerStatus]:
    """For each planned neighbour of this node: is a link to it up, and if not, why."""
    up: set[str] = set()
    down_error: dict[str, str] = {}
    for link, member in matched:
        if member is None:
            continue
        if link.up:
            up.add(member.node_id)
        elif link.last_error:
            down_error[member.node_id] = link.last_error
    out: list[PlannedPeerStatus] = []
    dials = set(ctx.members.dials(ctx.node_id))
    for node_id in ctx.members.neighbours(ctx.node_id):
        if node_id in up:
            out.append(PlannedPeerStatus(node_id, True, ""))
        elif node_id in down_error:
            out.append(PlannedPeerStatus(node_id, False, f"link down: {down_error[node_id]}"))
        elif node_id in dials and (why := ctx.not_dialled(node_id)) is not None:
            out.append(PlannedPeerStatus(node_id, False, f"not dialled: {why}"))
        elif ctx.key_of(node_id) is None and node_id not in dials:
            out.append(
                PlannedPeerStatus(
                    node_id, False, "no link (its key is unknown, so its inbound link cannot be recognised)"
                )
            )
        else:
            out.append(PlannedPeerStatus(node_id, False, "no link"))
    return out


def peers_view(snapshot: DaemonSnapshot, ctx: MeshContext) -> MeshPeers:
    matched = match_peers(snapshot, ctx)
    planned = set(ctx.members.neighbours(ctx.node_id))
    peers = [
        PeerView(
            key=link.key,
            address=link.address,
            node_id=member.node_id if member else None,
            remote=link.remote,
            up=link.up,
            inbound=link.inbound,
            latency_ms=link.latency_ms,
            bytes_recvd=link.bytes_recvd,
            bytes_sent=link.bytes_sent,
            uptime_s=link.uptime_s,
            last_error=link.last_error,
            planned=member is not None and member.node_id in planned,
            temporary=member is not None and member.node_id in ctx.temporary,
        )
        for link, member in matched
    ]
    peers.sort(key=lambda p: (p.node_id is None, p.node_id or "", p.key, p.remote or ""))
    missing = []
    for status in planned_status(matched, ctx):
        if status.up:
            continue
        m = ctx.members.by_id[status.node_id]
        missing.append(
            MissingPeer(
                node_id=m.node_id, key=ctx.key_of(m.node_id), listen_uri=m.listen_uri, reason=status.reason
            )
        )
    # Admission is filled in by the state (agent.admission follows the daemon's log, not the snapshot).
    return MeshPeers(node_id=ctx.node_id, peers=peers, missing=missing, admission="not reported", refused=[])


def routes_view(snapshot: DaemonSnapshot, ctx: MeshContext) -> MeshRoutes:
    """Route entries with member ids, and the peer each goes through: `next_hop_port` (0.4 DHT port or path[0])
    names a local peer port; a destination that is itself a direct peer is its own next hop."""
    by_port: dict[int, str] = {}
    peer_keys: set[str] = set()
    for link in snapshot.peers:
        if link.up and link.key:
            peer_keys.add(link.key)
            if link.port is not None:
                by_port[link.port] = link.key
    own_key = snapshot.self_info.key
    routes: list[RouteView] = []
    for entry in snapshot.routes:
        if entry.key == own_key:
            continue  # the daemon lists itself in its DHT/tree; not a route
        hop = by_port.get(entry.next_hop_port) if entry.next_hop_port is not None else None
        if hop is None and entry.key in peer_keys:
            hop = entry.key
        dest = ctx.members.member_for(entry.key, entry.address)
        hop_member = ctx.members.member_for(hop) if hop else None
        routes.append(
            RouteView(
                kind=entry.kind,
                key=entry.key,
                address=entry.address,
                node_id=dest.node_id if dest else _learned_id(entry.key, ctx),
                path=entry.path,
                next_hop_key=hop,
                next_hop_node_id=hop_member.node_id if hop_member else (_learned_id(hop, ctx) if hop else None),
            )
        )
    return MeshRoutes(node_id=ctx.node_id, routes=routes)


def _learned_id(key: str, ctx: MeshContext) -> str | None:
    return ctx.learned_ids.get(key)


def status_view(
    snapshot: DaemonSnapshot | None, ctx: MeshContext, *, uptime_s: float, snapshot_age_s: float | None
) -> MeshStatus:
    s = snapshot.self_info if snapshot else None
    return MeshStatus(
        node_id=ctx.node_id,
        key=s.key if s else None,
        address=s.address if s else None,
        subnet=s.subnet if s else None,
        api_version=snapshot.api_version if snapshot else None,
        coords=s.coords if s else None,
        routing_entries=s.routing_entries if s else None,
        peers_up=sum(1 for p in snapshot.peers if p.up) if snapshot else 0,
        peers_expected=len(ctx.members.neighbours(ctx.node_id)),
        members_known=len(ctx.members.members),
        uptime_s=uptime_s,
        snapshot_age_s=snapshot_age_s,
    )


def metrics_view(snapshot: DaemonSnapshot | None, ctx: MeshContext, *, yggdrasil_up: bool) -> MetricsView:
    planned = ctx.members.neighbours(ctx.node_id)
    if snapshot is None or not yggdrasil_up:
        # A daemon that does not answer carries no links: show planned peers down, not its last peer list.
        s = snapshot.self_info if snapshot else None
        return MetricsView(
            yggdrasil_up=False,
            api_version=snapshot.api_version if snapshot else None,
            address=s.address if s else None,
            key=s.key if s else None,
            peers_planned=len(planned),
            members_known=len(ctx.members.members),
            peers=tuple(PeerSample(n, True, False, None, None, None) for n in planned),
        )
    # Several links can lead to one peer (0.5 keeps one per URI); a series per peer sums/merges them.
    agg: dict[str, list] = {}
    for link, member in match_peers(snapshot, ctx):
        label = member.node_id if member else link.key
        if not label:
            continue  # a down 0.5 link to an unknown node: nothing to name it by
        cur = agg.setdefault(label, [member is not None and member.node_id in planned, False, None, None, None])
        cur[1] = cur[1] or link.up
        if link.latency_ms is not None:
            lat = link.latency_ms / 1000.0
            cur[2] = lat if cur[2] is None else min(cur[2], lat)
        if link.bytes_recvd is not None:
            cur[3] = (cur[3] or 0) + link.bytes_recvd
        if link.bytes_sent is not None:
            cur[4] = (cur[4] or 0) + link.bytes_sent
    for node_id in planned:
        agg.setdefault(node_id, [True, False, None, None, None])
    routes: dict[str, int] = {}
    for entry in snapshot.routes:
        if entry.key != snapshot.self_info.key:
            routes[entry.kind] = routes.get(entry.kind, 0) + 1
    s = snapshot.self_info
    return MetricsView(
        yggdrasil_up=yggdrasil_up,
        api_version=snapshot.api_version,
        address=s.address,
        key=s.key,
        peers_up=sum(1 for p in snapshot.peers if p.up),
        peers_planned=len(planned),
        members_known=len(ctx.members.members),
        peers=tuple(PeerSample(label, *vals) for label, vals in sorted(agg.items())),
        routes=routes,
    )


def health_view(
    *,
    node_id: str,
    version: str,
    endpoint: str,
    api_version: str | None,
    peers_up: int,
    checks: list[HealthCheck],
) -> Health:
    ok = all(c.ok for c in checks)
    ygg = next((c for c in checks if c.name == "yggdrasil"), None)
    return Health(
        status="ok" if ok else "fail",
        node_id=node_id,
        version=version,
        yggdrasil=YggdrasilHealth(
            reachable=ygg.ok if ygg else False,
            api_version=api_version,  # type: ignore[arg-type]
            endpoint=endpoint,
        ),
        peers_up=peers_up,
        checks=checks,
    )


def peers_check(statuses: list[PlannedPeerStatus]) -> HealthCheck:
    """Fails only when this node has planned peers and none is up: an isolated node cannot carry mesh traffic.
    A partly connected node is healthy; the missing ones are named in the detail."""
    if not statuses:
        return HealthCheck(name="peers", ok=True, detail="no planned peers")
    up = [s.node_id for s in statuses if s.up]
    down = [s.node_id for s in statuses if not s.up]
    detail = f"{len(up)} of {len(statuses)} planned peers up"
    if down:
        detail += f"; missing: {', '.join(down)}"
    return HealthCheck(name="peers", ok=bool(up), detail=detail)
