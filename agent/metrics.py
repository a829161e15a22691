"""Every Prometheus metric of the agent (docs/contracts.md §5), defined here and nowhere else.

One `AgentMetrics` per agent, with its own registry (several agents can live in one test process).
- Daemon-derived series (peers, routes, identity) are produced at scrape time from the latest
  `MetricsView` the monitor computed, so peers that disappear leave no stale series behind.
- Event series are plain prometheus-client objects on the instance; other parts update them directly, e.g.
  MAPE-K: `metrics.mapek_actions.labels(action="add_peer", outcome="ok").inc()`,
  `metrics.mapek_tick_duration.labels(phase="plan").observe(seconds)`;
  drills: `metrics.drill_active.labels(kind="partition").set(1)`.
  Membership series (SWIM counts, per-member detail for neighbours and members with open incidents only) are
  produced at scrape time from `set_membership(view)`: an agent's series stay bounded by its degree plus a
  constant whatever the mesh size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from agent import __version__
from agent.consensus.metrics import ConsensusMetrics
from agent.mapek.schemas import ActionKind, IncidentKind, Outcome

CONTENT_TYPE = CONTENT_TYPE_LATEST
HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
ADMIN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Detection/repair times: the targets are 2 s and 5 s, the daemons alone take up to ~60 s.
HEAL_BUCKETS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 30.0, 60.0, 120.0)
MEMBER_PATHS = ("overlay", "underlay")
MEMBER_STATES = ("alive", "suspect", "dead", "joining")
SWIM_KINDS = ("ping", "ack", "nack", "ping_req", "gossip")
RTT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# Closed label sets (contracts §3), pre-created at 0 so dashboards and alerts have series before the first event.
INCIDENT_KINDS: tuple[str, ...] = get_args(IncidentKind)
ACTION_KINDS: tuple[str, ...] = get_args(ActionKind)
OUTCOMES: tuple[str, ...] = get_args(Outcome)
MAPEK_PHASES = ("monitor", "analyze", "plan", "execute", "total")
DRILL_KINDS = ("partition", "blackhole", "kill-daemon")


@dataclass(frozen=True, slots=True)
class PeerSample:
    peer: str  # member node id, else the daemon key
    planned: bool
    up: bool
    latency_s: float | None
    received_bytes: int | None
    sent_bytes: int | None


@dataclass(frozen=True, slots=True)
class MetricsView:
    """What the daemon-derived series show; rebuilt by the agent state after each monitor pass."""

    yggdrasil_up: bool = False
    api_version: str | None = None
    address: str | None = None
    key: str | None = None
    peers_up: int = 0
    peers_planned: int = 0
    members_known: int = 0
    peers: tuple[PeerSample, ...] = ()
    routes: dict[str, int] = field(default_factory=dict)


class _DaemonCollector(Collector):
    def __init__(self, view: Callable[[], MetricsView]) -> None:
        self._view = view

    def describe(self) -> list[Metric]:
        return []  # names are fixed, but describing them would make the registry call collect() at register

    def collect(self) -> Iterator[Metric]:
        v = self._view()
        yield GaugeMetricFamily(
            "x0_yggdrasil_up",
            "1 when the last admin-socket call to the daemon succeeded",
            value=int(v.yggdrasil_up),
        )
        info = GaugeMetricFamily(
            "x0_yggdrasil_info",
            "Identity of the daemon beside this agent",
            labels=["api_version", "address", "key"],
        )
        if v.key is not None:
            info.add_metric([v.api_version or "", v.address or "", v.key], 1)
        yield info
        yield GaugeMetricFamily("x0_peers_up", "Yggdrasil peer links up now", value=v.peers_up)
        yield GaugeMetricFamily("x0_peers_planned", "Planned links of this node", value=v.peers_planned)
        yield GaugeMetricFamily("x0_members_known", "Members in the members file", value=v.members_known)
        up = GaugeMetricFamily(
            "x0_peer_up", "1 when a link to the peer is up, 0 when planned but down", labels=["peer", "planned"]
        )
        latency = GaugeMetricFamily(
            "x0_peer_latency_seconds", "Daemon-reported link latency (0.5.6+)", labels=["peer"]
        )
        rx = CounterMetricFamily(
            "x0_peer_received_bytes", "Bytes received from the peer (daemon counter)", labels=["peer"]
        )
        tx = CounterMetricFamily("x0_peer_sent_bytes", "Bytes sent to the peer (daemon counter)", labels=["peer"])
        for p in v.peers:
            up.add_metric([p.peer, "true" if p.planned else "false"], int(p.up))
            if p.latency_s is not None:
                latency.add_metric([p.peer], p.latency_s)
            if p.received_bytes is not None:
                rx.add_metric([p.peer], p.received_bytes)
            if p.sent_bytes is not None:
                tx.add_metric([p.peer], p.sent_bytes)
        yield from (up, latency, rx, tx)
        routes = GaugeMetricFamily("x0_routes", "Route entries the daemon knows, by kind", labels=["kind"])
        for kind, count in sorted(v.routes.items()):
            routes.add_metric([kind], count)
        yield routes


@dataclass(frozen=True, slots=True)
class MemberSample:
    """Per-member detail, exported only for this node's neighbours and members with an open incident."""

    member: str
    path: str  # "overlay" (the mesh path) or "underlay"
    reachable: bool
    rtt_s: float | None = None
    incarnation: int | None = None


@dataclass(frozen=True, slots=True)
class MembershipView:
    """The membership layer (SWIM) as the metrics show it; every series count is bounded by degree + a constant."""

    enabled: bool = False
    states: dict[str, int] = field(default_factory=dict)  # alive/suspect/dead/joining -> members
    incarnation: int = 0
    local_health: int = 0
    sent: dict[str, int] = field(default_factory=dict)  # message kind -> count
    received: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> datagrams dropped
    suspicions: int = 0
    refutations: int = 0
    members: tuple[MemberSample, ...] = ()


class _MembershipCollector(Collector):
    def __init__(self, view: Callable[[], MembershipView]) -> None:
        self._view = view

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        v = self._view()
        reach = GaugeMetricFamily(
            "x0_member_reachable",
            "Neighbours and members with an open incident: 1 alive in the membership view (overlay) or answering "
            "the last diagnostic ping (underlay), else 0",
            labels=["member", "path"],
        )
        rtt = GaugeMetricFamily(
            "x0_member_rtt_seconds",
            "Neighbours and members with an open incident: smoothed round trip of this node's probes",
            labels=["member", "path"],
        )
        inc = GaugeMetricFamily(
            "x0_member_incarnation",
            "Neighbours and members with an open incident: SWIM incarnation in this node's view",
            labels=["member"],
        )
        for m in v.members:
            reach.add_metric([m.member, m.path], int(m.reachable))
            if m.rtt_s is not None:
                rtt.add_metric([m.member, m.path], m.rtt_s)
            if m.incarnation is not None:
                inc.add_metric([m.member], m.incarnation)
        yield from (reach, rtt, inc)
        if not v.enabled:
            return
        states = GaugeMetricFamily("x0_swim_members", "Members by state in this node's view", labels=["state"])
        for state in MEMBER_STATES:
            states.add_metric([state], v.states.get(state, 0))
        yield states
        yield GaugeMetricFamily("x0_swim_incarnation", "This node's own SWIM incarnation", value=v.incarnation)
        yield GaugeMetricFamily(
            "x0_swim_local_health",
            "Lifeguard local health score (0 healthy; timeouts stretch by one interval per point)",
            value=v.local_health,
        )
        msgs = CounterMetricFamily(
            "x0_swim_messages", "SWIM datagrams by kind and direction", labels=["kind", "direction"]
        )
        for direction, counts in (("sent", v.sent), ("received", v.received)):
            for kind in SWIM_KINDS:
                msgs.add_metric([kind, direction], counts.get(kind, 0))
        yield msgs
        dropped = CounterMetricFamily("x0_swim_dropped", "Datagrams dropped, by reason", labels=["reason"])
        for reason, count in sorted(v.dropped.items()):
            dropped.add_metric([reason], count)
        yield dropped
        yield CounterMetricFamily(
            "x0_swim_suspicions", "Members this node suspected after its own probes failed", value=v.suspicions
        )
        yield CounterMetricFamily(
            "x0_swim_refutations", "Times this node refuted a suspicion about itself", value=v.refutations
        )


class AgentMetrics:
    def __init__(self, view: Callable[[], MetricsView] | None = None) -> None:
        self.registry = r = CollectorRegistry(auto_describe=False)
        self._view = MetricsView()
        r.register(_DaemonCollector(view or (lambda: self._view)))

        self.build_info = Gauge("x0_build_info", "Agent build", ["version"], registry=r)
        self.build_info.labels(version=__version__).set(1)

        # Monitor (agent.monitor).
        self.monitor_refresh_duration = Histogram(
            "x0_monitor_refresh_duration_seconds",
            "Time to take one daemon snapshot",
            buckets=ADMIN_BUCKETS,
            registry=r,
        )
        self.monitor_errors = Counter(
            "x0_monitor_errors", "Failed daemon snapshots by error class", ["error"], registry=r
        )
        # HTTP API (agent.api.app middleware).
        self.http_request_duration = Histogram(
            "x0_http_request_duration_seconds",
            "Agent API request latency by route template, method and status",
            ["route", "method", "status"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )

        # MAPE-K (agent.mapek) and its membership layer (agent.mapek.swim).
        self._membership: Callable[[], MembershipView] = MembershipView
        r.register(_MembershipCollector(lambda: self._membership()))
        self.probe_rtt = Histogram(
            "x0_swim_probe_rtt_seconds",
            "Round trip of this node's successful SWIM probes, all members together",
            ["path"],
            buckets=RTT_BUCKETS,
            registry=r,
        )
        self.mapek_tick_duration = Histogram(
            "x0_mapek_tick_duration_seconds",
            "MAPE-K tick duration per phase and in total",
            ["phase"],
            buckets=ADMIN_BUCKETS,
            registry=r,
        )
        self.mapek_incidents = Counter("x0_mapek_incidents", "Incidents opened, by kind", ["kind"], registry=r)
        self.mapek_incidents_active = Gauge(
            "x0_mapek_incidents_active", "Incidents open now, by kind", ["kind"], registry=r
        )
        self.mapek_actions = Counter(
            "x0_mapek_actions", "Heal actions by action and outcome", ["action", "outcome"], registry=r
        )
        self.mapek_members_reachable = Gauge(
            "x0_mapek_members_reachable", "Members reachable now, this node included", registry=r
        )
        self.mapek_time_to_detect = Histogram(
            "x0_mapek_time_to_detect_seconds",
            "Fault onset (last good observation) to incident",
            ["kind"],
            buckets=HEAL_BUCKETS,
            registry=r,
        )
        self.mapek_time_to_repair = Histogram(
            "x0_mapek_time_to_repair_seconds",
            "Incident opened to resolved",
            ["kind"],
            buckets=HEAL_BUCKETS,
            registry=r,
        )

        # Drills (agent.drills).
        self.drills = Counter(
            "x0_drills", "Drills run on this node by kind and outcome", ["kind", "outcome"], registry=r
        )
        self.drill_active = Gauge(
            "x0_drill_active", "1 while a drill of that kind runs here", ["kind"], registry=r
        )
        self.drill_recovery = Gauge(
            "x0_drill_recovery_seconds",
            "Last drill: fault reverted to this node's planned peers all up",
            ["kind"],
            registry=r,
        )

        # Peer admission (agent.admission).
        self.admission_refused = Counter(
            "x0_peer_admission_refused",
            "Inbound links the daemon refused: the dialler's key is not a member's (AllowedPublicKeys)",
            registry=r,
        )
        self.admission_keys = Gauge(
            "x0_peer_admission_keys",
            "Keys the daemon admits (AllowedPublicKeys); 0: it admits every key (not enforced here)",
            registry=r,
        )

        # Consensus (agent.consensus): x0_raft_*, x0_kv_*.
        self.raft = ConsensusMetrics(r)

        self._http_children: dict[tuple[str, str, int], Histogram] = {}
        self._precreate()

    def _precreate(self) -> None:
        for kind in INCIDENT_KINDS:
            self.mapek_incidents.labels(kind=kind)
            self.mapek_incidents_active.labels(kind=kind).set(0)
            self.mapek_time_to_detect.labels(kind=kind)
            self.mapek_time_to_repair.labels(kind=kind)
        for action in ACTION_KINDS:
            for outcome in OUTCOMES:
                self.mapek_actions.labels(action=action, outcome=outcome)
        for phase in MAPEK_PHASES:
            self.mapek_tick_duration.labels(phase=phase)
        for path in MEMBER_PATHS:
            self.probe_rtt.labels(path=path)
        for kind in DRILL_KINDS:
            self.drill_active.labels(kind=kind).set(0)

    # --- updates ------------------------------------------------------------------------------------------

    def set_view(self, view: MetricsView) -> None:
        """Replace the daemon-derived series (used when no view callable was given)."""
        self._view = view

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        # labels() takes a lock and builds a tuple key; caching the child keeps the middleware cheap.
        key = (route, method, status)
        child = self._http_children.get(key)
        if child is None:
            child = self.http_request_duration.labels(route=route, method=method, status=str(status))
            self._http_children[key] = child
        child.observe(seconds)

    def set_membership(self, view: Callable[[], MembershipView]) -> None:
        """Where the membership series come from (MAPE-K sets it; read at scrape time, so a member that is no
        longer a neighbour nor has an incident leaves no series behind)."""
        self._membership = view

    # --- exposition ---------------------------------------------------------------------------------------

    def render(self) -> bytes:
        """Prometheus text format 0.0.4 (serve with CONTENT_TYPE)."""
        return generate_latest(self.registry)
