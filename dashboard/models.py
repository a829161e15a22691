"""The dashboard's view of the mesh, built purely from what the provider and the agents said.

`AgentData` is the last known data of one agent (the poller fills it, nothing here does I/O); `merge` turns a
provider snapshot plus every agent's data into a `MeshView`: nodes and links with states, which is all the
screens draw. A link's state comes from both ends' own peer lists:

- up: the ends that answered agree the link is up;
- silent: one end still lists the link up while the other does not, or an end reports the peer silent (MAPE-K
  `peer_silent`): the daemon has not noticed yet, traffic is gone;
- down: a planned link no answering end lists up;
- temporary: up, not planned, added by MAPE-K as a stand-in for a lost planned peer;
- unknown: neither end answered the last poll.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TypeVar

import msgspec

from dashboard import wire
from dashboard.promtext import MetricsSample, http_rate_and_p99
from dashboard.providers.base import NomadPlacement, SourceSnapshot

R = TypeVar("R")

NodeState = Literal["up", "degraded", "silent", "down", "unknown"]
LinkState = Literal["up", "silent", "down", "temporary", "unknown"]

NODE_STATES: tuple[NodeState, ...] = ("up", "degraded", "silent", "down", "unknown")
LINK_STATES: tuple[LinkState, ...] = ("up", "silent", "down", "temporary", "unknown")

# Keep the session's memory bounded on long runs: most recent records per agent.
MAX_RECORDS_PER_AGENT = 500


class AgentData(msgspec.Struct, kw_only=True):
    """Everything last heard from one agent. Times without `agent` in the name are the dashboard's clock."""

    node_id: str
    agent_url: str | None
    health: wire.Health | None = None
    status: wire.MeshStatus | None = None
    peers: wire.MeshPeers | None = None
    routes: wire.MeshRoutes | None = None
    mapek: wire.MapekState | None = None
    cluster: wire.Cluster | None = None  # Raft view (/cluster); None before consensus or when unreachable
    incidents: dict[str, wire.Incident] = {}
    actions: dict[str, wire.Action] = {}
    metrics: MetricsSample | None = None
    prev_metrics: MetricsSample | None = None
    ok: bool = False  # the last poll got /health
    last_ok_at: float | None = None
    last_attempt_at: float | None = None
    error: str | None = None  # why the last poll failed
    error_kind: str | None = None  # AgentError.kind
    endpoint_errors: dict[str, str] = {}  # endpoint -> error of the last poll (health may be fine)
    rtt_ms: float | None = None  # /health round trip as seen from the dashboard
    cursor: float | None = None  # agent clock: newest incident/action time seen, for `since=` queries
    drills: wire.DrillList | None = None  # the agent's own drills (GET /drills), whoever started them


class NodeView(msgspec.Struct, kw_only=True, frozen=True):
    id: str
    state: NodeState
    detail: str  # why this state, in words
    agent_url: str | None
    address: str | None = None
    key: str | None = None
    api_version: str | None = None
    version: str | None = None
    peers_up: int | None = None  # planned links of this node that are up (see _with_link_counts)
    peers_planned: int | None = None
    peers_temporary: int = 0  # stand-in links MAPE-K added
    members_known: int | None = None
    members_reachable: int | None = None
    # Its SWIM failure detector's Lifeguard score: 0 at full sensitivity; after this node was cut off or starved,
    # each point stretches its probe timeouts by one more interval until successful probes bring it down.
    local_health: int | None = None
    incidents_active: int = 0
    req_rate: float | None = None
    p99_ms: float | None = None
    age_s: float | None = None  # age of the last good data; None when never heard from
    rtt_ms: float | None = None
    uptime_s: float | None = None
    failing_checks: tuple[str, ...] = ()
    nomad: NomadPlacement | None = None
    # Raft (agent.consensus): role as the node reports it, its term, and how many entries its replica trails the
    # highest commit index any node reports (None: no Raft data from this node).
    raft_role: str | None = None
    raft_term: int | None = None
    raft_lag: int | None = None
    raft_leader_id: str | None = None

    @property
    def is_leader(self) -> bool:
        return self.raft_role == "leader"


class LinkView(msgspec.Struct, kw_only=True, frozen=True):
    a: str
    b: str
    state: LinkState
    planned: bool
    latency_ms: float | None = None
    detail: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.a, self.b)


class MeshView(msgspec.Struct, kw_only=True, frozen=True):
    source: str
    source_ok: bool
    source_detail: str
    taken_at: float  # when this view was built (dashboard clock)
    polled_at: float | None  # when the poll cycle it shows finished
    poll_duration_s: float | None
    nodes: tuple[NodeView, ...]
    links: tuple[LinkView, ...]
    warnings: tuple[str, ...] = ()
    # Drills running on the agents right now, whoever started them (this x0dash, another one, a headless run, a
    # plain POST /drills): the header's banner shows them all.
    active_drills: tuple[wire.Drill, ...] = ()
    # The mesh-wide drill lease as an agent served it (contracts §3): how a fault another x0dash's source makes
    # (a Nomad allocation stopped, a local node stopped) is known at all; None when none is held or known.
    drill_lease: wire.DrillLease | None = None

    @property
    def nodes_total(self) -> int:
        return len(self.nodes)

    @property
    def nodes_healthy(self) -> int:
        return sum(1 for n in self.nodes if n.state == "up")

    @property
    def links_planned(self) -> int:
        return sum(1 for link in self.links if link.planned)

    @property
    def links_up(self) -> int:
        return sum(1 for link in self.links if link.planned and link.state == "up")

    @property
    def links_temporary(self) -> int:
        return sum(1 for link in self.links if link.state == "temporary")

    @property
    def incidents_active(self) -> int:
        return sum(n.incidents_active for n in self.nodes)

    @property
    def worst_reach(self) -> tuple[int, int, str] | None:
        """(members reachable, members known, node) of the answering node that reaches the fewest members."""
        seen = [
            (n.members_reachable, n.members_known, n.id)
            for n in self.nodes
            if n.members_reachable is not None and n.members_known and n.state in ("up", "degraded")
        ]
        return min(seen, key=lambda r: (r[0] / r[1], r[0])) if seen else None

    def node(self, node_id: str) -> NodeView | None:
        for n in self.nodes:
            if n.id == node_id:
                return n
        return None

    def data_age(self, now: float) -> float | None:
        return None if self.polled_at is None else max(0.0, now - self.polled_at)


def link_key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def node_state(agent: AgentData | None, now: float, down_after: float) -> tuple[NodeState, str]:
    if agent is None or agent.agent_url is None:
        return "unknown", "the source does not say how to reach this node's agent"
    if agent.last_attempt_at is None:
        return "unknown", "not polled yet"
    if agent.ok and agent.health is not None:
        if agent.health.status == "ok":
            return "up", "healthy"
        failing = [f"{c.name}: {c.detail}" for c in agent.health.checks if not c.ok]
        return "degraded", "; ".join(failing) or "health check failing"
    reason = agent.error or "no answer"
    if agent.last_ok_at is None:
        return "down", reason
    age = now - agent.last_ok_at
    # A refused connection means nothing listens any more; a timeout may be a slow or partitioned agent.
    if agent.error_kind == "refused" or age >= down_after:
        return "down", f"{reason} (last good data {age:.0f} s ago)"
    return "silent", f"{reason} (last good data {age:.1f} s ago)"


def _peer_name(peer: wire.PeerView) -> str | None:
    return peer.node_id


def _latency(a: AgentData, b_id: str) -> float | None:
    # The daemon's own latency (Yggdrasil 0.5.6+), else MAPE-K's probe round trip to that member.
    if a.peers is not None:
        for p in a.peers.peers:
            if p.node_id == b_id and p.latency_ms is not None:
                return p.latency_ms
    if a.metrics is not None:
        rtt = a.metrics.member_rtt_s.get(b_id)
        if rtt is not None:
            return rtt * 1000.0
    return None


class _Side(msgspec.Struct):
    up: bool
    temporary: bool = False
    planned: bool = False
    silent: bool = False
    reason: str = ""


def _observations(agent: AgentData) -> dict[str, _Side]:
    """What this agent says about its link to each member (only members: peers without a node id are not
    part of the topology)."""
    seen: dict[str, _Side] = {}
    if agent.peers is None:
        return seen
    # The daemon keeps a silently dropped link "up" for seconds; MAPE-K's probes know better.
    silent_subjects = {
        i.subject
        for i in (agent.mapek.active_incidents if agent.mapek else ())
        if i.kind in ("peer_silent", "member_unreachable")
    }
    for p in agent.peers.peers:
        name = _peer_name(p)
        if name is None or name == agent.node_id:
            continue
        prev = seen.get(name)
        side = _Side(
            up=p.up,
            temporary=p.temporary,
            planned=p.planned,
            silent=name in silent_subjects,
            reason=p.last_error or "",
        )
        # Two links to one peer (inbound + outbound): the up one tells the truth about connectivity.
        if prev is None or (side.up and not prev.up):
            seen[name] = side
    for m in agent.peers.missing:
        if m.node_id not in seen:
            seen[m.node_id] = _Side(up=False, planned=True, reason=m.reason)
    return seen


def _link_state(sides: list[_Side], planned: bool) -> tuple[LinkState, str]:
    if not sides:
        return "unknown", "no end of this link answered the last poll"
    ups = [s for s in sides if s.up]
    downs = [s for s in sides if not s.up]
    if ups and downs:
        return "silent", "one end still lists the link up, the other lost it: " + (downs[0].reason or "no link")
    if ups:
        if any(s.silent for s in ups):
            return "silent", "listed up, but MAPE-K finds the peer silent or unreachable"
        if not planned and any(s.temporary for s in ups):
            return "temporary", "stand-in link added by MAPE-K"
        return "up", ""
    return "down", downs[0].reason or "no link"


def merge(
    snapshot: SourceSnapshot,
    agents: Mapping[str, AgentData],
    now: float,
    *,
    polled_at: float | None = None,
    poll_duration_s: float | None = None,
    down_after: float = 10.0,
    drill_lease: wire.DrillLease | None = None,
) -> MeshView:
    """Combine the provider's node list and the agents' replies into one view (pure)."""
    targets = {t.id: t for t in snapshot.nodes}
    planned: set[tuple[str, str]] = {link_key(a, b) for a, b in snapshot.planned_links if a != b}
    obs: dict[str, dict[str, _Side]] = {}
    for node_id, agent in agents.items():
        if node_id not in targets:
            continue
        sides = _observations(agent)
        # An agent that answers /health but not /mesh/peers (its daemon just died) has only stale peer data: it
        # must not keep its links "up".
        if agent.ok and "peers" not in agent.endpoint_errors:
            obs[node_id] = sides
        # Stale data still tells us which links are planned.
        planned.update(link_key(node_id, other) for other, s in sides.items() if s.planned)

    node_ids = sorted(set(targets) | {n for pair in planned for n in pair})
    nodes: list[NodeView] = []
    for node_id in node_ids:
        agent = agents.get(node_id)
        target = targets.get(node_id)
        if target is None:
            nodes.append(
                NodeView(
                    id=node_id,
                    state="unknown",
                    agent_url=None,
                    detail="in the planned topology but not listed by the source",
                )
            )
            continue
        state, detail = node_state(agent, now, down_after)
        nodes.append(
            _node_view(
                target.id, target.agent_url, target.nomad, target.yggdrasil_address, agent, state, detail, now
            )
        )

    pairs = set(planned)
    for a, sides in obs.items():
        pairs.update(link_key(a, b) for b, s in sides.items() if s.up and b in targets)
    links: list[LinkView] = []
    for a, b in sorted(pairs):
        sides = [s for s in (obs.get(a, {}).get(b), obs.get(b, {}).get(a)) if s is not None]
        is_planned = (a, b) in planned
        state, detail = _link_state(sides, is_planned)
        lat = [
            x
            for x in (
                _latency(agents[a], b) if a in agents and a in obs else None,
                _latency(agents[b], a) if b in agents and b in obs else None,
            )
            if x is not None
        ]
        links.append(
            LinkView(
                a=a,
                b=b,
                state=state,
                planned=is_planned,
                detail=detail,
                latency_ms=sum(lat) / len(lat) if lat and state != "down" else None,
            )
        )
    return MeshView(
        source=snapshot.source,
        source_ok=snapshot.ok,
        source_detail=snapshot.detail,
        taken_at=now,
        polled_at=polled_at,
        poll_duration_s=poll_duration_s,
        nodes=tuple(with_raft_lag(_with_link_counts(nodes, links), agents)),
        links=tuple(links),
        warnings=tuple(snapshot.warnings),
        active_drills=tuple(
            d
            for node_id, agent in sorted(agents.items())
            if node_id in targets and agent.drills is not None and "drills" not in agent.endpoint_errors
            for d in agent.drills.active
        ),
        drill_lease=drill_lease,
    )


def _with_link_counts(nodes: list[NodeView], links: list[LinkView]) -> list[NodeView]:
    """A node's peers are its links as the view judges them (both ends' peer lists and MAPE-K), so the node table,
    node detail and the header's `links up` can never disagree. The daemon's own count (`/mesh/status`) goes
    stale when the daemon dies under a live agent: it said 2/2 while the links were down."""
    up: dict[str, int] = {}
    planned: dict[str, int] = {}
    temporary: dict[str, int] = {}
    for link in links:
        for end in (link.a, link.b):
            if link.planned:
                planned[end] = planned.get(end, 0) + 1
                if link.state == "up":
                    up[end] = up.get(end, 0) + 1
            elif link.state == "temporary":
                temporary[end] = temporary.get(end, 0) + 1
    out = []
    for n in nodes:
        if n.peers_up is None and n.id not in planned and n.id not in temporary:
            out.append(n)  # never heard from and no planned link: nothing to count
            continue
        out.append(
            msgspec.structs.replace(
                n,
                peers_up=up.get(n.id, 0),
                peers_planned=planned.get(n.id, 0),
                peers_temporary=temporary.get(n.id, 0),
            )
        )
    return out


def _node_view(
    node_id: str,
    url: str | None,
    nomad: NomadPlacement | None,
    address: str | None,
    agent: AgentData | None,
    state: NodeState,
    detail: str,
    now: float,
) -> NodeView:
    if agent is None:
        return NodeView(id=node_id, state=state, detail=detail, agent_url=url, address=address, nomad=nomad)
    st, health, mapek = agent.status, agent.health, agent.mapek
    rate = p99 = None
    if agent.metrics is not None:
        rate, p99_s = http_rate_and_p99(agent.prev_metrics, agent.metrics)
        p99 = None if p99_s is None else p99_s * 1000.0
    return NodeView(
        id=node_id,
        state=state,
        detail=detail,
        agent_url=url,
        address=(st.address if st else None) or address,
        key=st.key if st else None,
        api_version=(st.api_version if st else None) or (health.yggdrasil.api_version if health else None),
        version=health.version if health else None,
        peers_up=st.peers_up if st else (health.peers_up if health else None),
        peers_planned=st.peers_expected if st else None,
        members_known=st.members_known if st else None,
        members_reachable=mapek.members_reachable if mapek else None,
        local_health=mapek.membership.local_health
        if mapek and mapek.membership and mapek.membership.enabled
        else None,
        incidents_active=len(mapek.active_incidents) if mapek and agent.ok else 0,
        req_rate=rate,
        p99_ms=p99,
        age_s=None if agent.last_ok_at is None else max(0.0, now - agent.last_ok_at),
        rtt_ms=agent.rtt_ms,
        uptime_s=st.uptime_s if st else None,
        failing_checks=tuple(c.name for c in health.checks if not c.ok) if health else (),
        nomad=nomad,
        **_raft_fields(agent.cluster if agent.ok else None),
    )


def _raft_fields(cluster: wire.Cluster | None) -> dict[str, Any]:
    if cluster is None:
        return {}
    return {
        "raft_role": cluster.role,
        "raft_term": cluster.term,
        "raft_leader_id": cluster.leader_id,
        # Replaced by the lag behind the mesh's highest commit index in `with_raft_lag`.
        "raft_lag": None
        if cluster.role in ("client", "disabled")
        else cluster.commit_index - cluster.applied_index,
    }


def with_raft_lag(nodes: list[NodeView], agents: Mapping[str, AgentData]) -> list[NodeView]:
    """Each voter's lag: the highest commit index any node reports minus the entries its replica applied."""
    commits = [a.cluster.commit_index for a in agents.values() if a.ok and a.cluster is not None]
    if not commits:
        return nodes
    top = max(commits)
    out: list[NodeView] = []
    for n in nodes:
        a = agents.get(n.id)
        c = a.cluster if a is not None and a.ok else None
        if c is None or c.role in ("client", "disabled", "joining"):
            out.append(n)
        else:
            out.append(msgspec.structs.replace(n, raft_lag=max(0, top - c.applied_index)))
    return out


def absorb_incidents(agent: AgentData, incidents: Iterable[wire.Incident]) -> list[tuple[wire.Incident, str]]:
    """Merge incidents into the agent's record; returns (incident, "opened"|"resolved") for what is news."""
    news: list[tuple[wire.Incident, str]] = []
    for inc in incidents:
        old = agent.incidents.get(inc.id)
        if old is not None and (
            inc.detected_at < old.detected_at
            or (inc.detected_at == old.detected_at and inc.resolved_at is None and old.resolved_at is not None)
        ):
            # A stale copy: the replies of one poll are served at slightly different moments, and one can predate
            # a reopen (older detected_at) or a resolution the other already showed. The newer record stands.
            continue
        # The agent merges a fault that comes back within its merge window into the same incident (same id, count
        # + 1, detected again): that is a new opening too, or a drill's detections would be missing from the log.
        if old is None or inc.detected_at > old.detected_at:
            news.append((inc, "opened"))
            if inc.resolved_at is not None:
                news.append((inc, "resolved"))
        elif old.resolved_at is None and inc.resolved_at is not None:
            news.append((inc, "resolved"))
        agent.incidents[inc.id] = inc
        _advance_cursor(agent, inc.resolved_at or inc.detected_at)
    _cap(agent.incidents, key=lambda i: i.resolved_at or i.detected_at)
    return news


def absorb_actions(agent: AgentData, actions: Iterable[wire.Action]) -> list[wire.Action]:
    news = []
    for act in actions:
        if act.id not in agent.actions:
            news.append(act)
        agent.actions[act.id] = act
        _advance_cursor(agent, act.at)
    _cap(agent.actions, key=lambda a: a.at)
    return news


def _advance_cursor(agent: AgentData, t: float) -> None:
    if agent.cursor is None or t > agent.cursor:
        agent.cursor = t


def _cap(records: dict[str, R], key: Callable[[R], float]) -> None:
    if len(records) > MAX_RECORDS_PER_AGENT:
        for rid, _ in sorted(records.items(), key=lambda kv: key(kv[1]))[: len(records) - MAX_RECORDS_PER_AGENT]:
            del records[rid]
