"""Node detail: the node's own view of the mesh: peers, routes, MAPE-K incidents and actions, and small time
series over the session. Routes are polled only while this screen is open."""

from __future__ import annotations

import datetime as dt

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Label, Sparkline, Static, TabbedContent, TabPane

from dashboard import wire
from dashboard.events import action_event, incident_event
from dashboard.models import AgentData, MeshView, NodeView
from dashboard.screens.base import MeshScreen
from dashboard.session import MeshUpdate
from dashboard.widgets.key_table import Cell, Column, KeyTable
from dashboard.widgets.screen_footer import ScreenFooter
from dashboard.widgets.styles import LINK_STYLE, NODE_STYLE, NODE_SYMBOL, fmt_age, fmt_ms


def _t(at: float | None) -> str:
    return "-" if at is None else dt.datetime.fromtimestamp(at).strftime("%H:%M:%S.%f")[:-4]


def node_summary(node: NodeView | None, agent: AgentData | None, node_id: str) -> Text:
    t = Text()
    if node is None:
        t.append(f"{node_id}: no longer listed by the source", "bold red")
        return t
    t.append(f"{NODE_SYMBOL[node.state]} {node.id} ", NODE_STYLE[node.state])
    t.append(f"{node.state}: {node.detail}\n", NODE_STYLE[node.state])
    rows = [
        ("agent", node.agent_url or "-"),
        ("address", node.address or "-"),
        ("key", node.key or "-"),
        ("yggdrasil", f"API {node.api_version or '?'}"),
        ("agent version", node.version or "-"),
        ("agent uptime", fmt_age(node.uptime_s)),
        (
            "peers",
            f"{node.peers_up if node.peers_up is not None else '-'} up of "
            f"{node.peers_planned if node.peers_planned is not None else '?'} planned",
        ),
        (
            "members reachable",
            f"{node.members_reachable if node.members_reachable is not None else '-'} of "
            f"{node.members_known if node.members_known is not None else '?'}",
        ),
        ("data age", f"{fmt_age(node.age_s)} (poll round trip {fmt_ms(node.rtt_ms)})"),
    ]
    if node.local_health:
        # Shown only when it matters: this node's SWIM timeouts are stretched, so it may notice a fault late.
        rows.append(
            (
                "failure detector",
                f"wary after a recent fault (local health {node.local_health}): probe timeouts "
                f"x{node.local_health + 1}, it may notice a fault late",
            )
        )
    if node.nomad is not None:
        nm = node.nomad
        where = f"{nm.node_name or nm.node_id[:8]} ({nm.datacenter or '?'}, node {nm.node_status or '?'}"
        rows.append(
            (
                "nomad",
                f"alloc {nm.alloc_id[:8]} {nm.client_status}/{nm.desired_status} on {where}"
                f", {nm.eligibility or '?'}{', draining' if nm.drain else ''})",
            )
        )
    if agent is not None and agent.cluster is not None:
        rows.extend(raft_rows(agent.cluster, node.raft_lag))
    for name, value in rows:
        t.append(f"{name:>18}  ", "grey50")
        t.append(f"{value}\n")
    if agent is not None:
        for name, err in sorted(agent.endpoint_errors.items()):
            t.append(f"{name:>18}  ", "grey50")
            t.append(f"{err}\n", "red")
    return t


def raft_rows(c: wire.Cluster, lag: int | None) -> list[tuple[str, str]]:
    """The node's Raft view (its own /cluster) as summary rows (pure)."""
    contact = "-" if c.last_contact_s is None else f"{c.last_contact_s:.2f} s ago"
    voters = [m for m in c.members if m.voter]
    seen = [m.node_id for m in voters if m.state in ("self", "leader", "connected")]
    rows = [
        ("raft", f"{c.role}, term {c.term}, leader {c.leader_id or 'none'} (last contact {contact})"),
        (
            "raft log",
            f"commit {c.commit_index}, applied {c.applied_index}"
            + ("" if lag is None else f", {lag} behind the mesh's highest commit"),
        ),
    ]
    if c.role not in ("client", "disabled"):
        rows.append(("raft voters", f"{len(seen)} of {len(voters)} reachable: {', '.join(seen) or '-'}"))
    if c.detail:
        rows.append(("raft detail", c.detail))
    return rows


# The columns of the node's tables, and what goes first when the terminal is narrow (least important first).
PEER_COLUMNS = (
    Column("peer", "peer", 10),
    Column("state", "state", 11),
    Column("planned", "planned", 9),
    Column("temporary", "temporary", 11),
    Column("direction", "direction", 11),
    Column("remote", "remote", 26),
    Column("latency", "latency", 9),
    Column("uptime", "uptime", 9),
    Column("error", "last error", 24),
)
PEER_DROP = ("temporary", "direction", "planned", "uptime", "remote")
ROUTE_COLUMNS = (
    Column("kind", "kind", 8),
    Column("to", "to", 12),
    Column("address", "address", 41),
    Column("hop", "next hop", 12),
    Column("path", "path", 12),
)
ROUTE_DROP = ("path", "address")
INCIDENT_COLUMNS = (
    Column("detected", "detected", 13),
    Column("kind", "kind", 20),
    Column("subject", "subject", 10),
    Column("resolved", "resolved", 13),
    Column("took", "took", 9),
    Column("count", "count", 7),
    Column("detail", "detail", 30),
)
INCIDENT_DROP = ("count", "resolved", "took")
ACTION_COLUMNS = (
    Column("at", "at", 13),
    Column("action", "action", 13),
    Column("target", "target", 10),
    Column("outcome", "outcome", 9),
    Column("reason", "reason", 30),
    Column("uri", "uri", 28),
)
ACTION_DROP = ("uri", "at")


class NodeDetailScreen(MeshScreen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("d", "drill", "Drill this node"),
        Binding("L", "logs", "Logs"),
    ]

    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id

    def compose(self) -> ComposeResult:
        yield self.header()
        with Horizontal(id="detail-top"):
            yield Static(id="node-info")
            with Vertical(id="series"):
                yield Label("peers up", classes="series-label", id="peers-label")
                yield Sparkline([], id="spark-peers", summary_function=min)
                yield Label("link latency ms (session)", classes="series-label", id="latency-label")
                yield Sparkline([], id="spark-latency", summary_function=max)
        with TabbedContent(id="detail-tabs"):
            with TabPane("Peers", id="tab-peers"):
                yield KeyTable(PEER_COLUMNS, PEER_DROP, id="peers")
            with TabPane("Routes", id="tab-routes"):
                yield KeyTable(ROUTE_COLUMNS, ROUTE_DROP, id="routes")
            with TabPane("Incidents", id="tab-incidents"):
                yield KeyTable(INCIDENT_COLUMNS, INCIDENT_DROP, id="incidents")
            with TabPane("Heal actions", id="tab-actions"):
                yield KeyTable(ACTION_COLUMNS, ACTION_DROP, id="actions")
        yield ScreenFooter()

    def on_mount(self) -> None:
        self.dash.watch_routes(self.node_id, True)
        self.query_one("#peers").focus()

    def on_unmount(self) -> None:
        self.dash.watch_routes(self.node_id, False)

    def show_update(self, update: MeshUpdate | None) -> None:
        super().show_update(update)
        view = self.dash.view
        node = view.node(self.node_id) if view else None
        agent = self.dash.agent_data(self.node_id)
        self.query_one("#node-info", Static).update(node_summary(node, agent, self.node_id))
        history = self.dash.history
        peers = history.peers(self.node_id)
        latency = history.latency(self.node_id)
        self.query_one("#spark-peers", Sparkline).data = peers
        self.query_one("#spark-peers").display = bool(peers)
        self.query_one("#spark-latency", Sparkline).data = latency
        self.query_one("#spark-latency").display = bool(latency)
        low, high = (min(peers), max(peers)) if peers else (0, 0)
        self.query_one("#peers-label", Label).update(
            f"peers up, session: {low:.0f}..{high:.0f}" if peers else "peers up: no data yet"
        )
        self.query_one("#latency-label", Label).update(
            f"link latency, session: {min(latency):.1f}..{max(latency):.1f} ms"
            if latency
            else "link latency: not reported (Yggdrasil 0.5.6+ or MAPE-K probes give it)"
        )
        self._fill(agent, view)

    def _fill(self, agent: AgentData | None, view: MeshView | None = None) -> None:
        # Per peer, the link as the whole view judges it (both ends, MAPE-K): the same state and latency the
        # topology draws, so the two never disagree ("13ms" on the map, "-" here).
        links = {}
        if view is not None:
            for link in view.links:
                if self.node_id in (link.a, link.b):
                    links[link.b if link.a == self.node_id else link.a] = link
        peers: list[tuple[str | None, dict[str, Cell]]] = []
        routes: list[tuple[str | None, dict[str, Cell]]] = []
        incidents: list[tuple[str | None, dict[str, Cell]]] = []
        actions: list[tuple[str | None, dict[str, Cell]]] = []
        if agent is not None and agent.peers is not None:
            for p in sorted(agent.peers.peers, key=lambda p: (p.node_id or "~", p.key)):
                link = links.get(p.node_id or "")
                state = link.state if link is not None else ("up" if p.up else "down")
                latency = link.latency_ms if link is not None else p.latency_ms
                cells: dict[str, Cell] = {
                    "peer": Text(p.node_id or p.key[:16] + "…", "bold"),
                    "state": Text(state, LINK_STYLE.get(state, "")),
                    "planned": "yes" if p.planned else "no",
                    "temporary": "yes" if p.temporary else "no",
                    "direction": "-" if p.inbound is None else ("in" if p.inbound else "out"),
                    "remote": p.remote or "-",
                    "latency": fmt_ms(latency),
                    "uptime": fmt_age(p.uptime_s),
                    "error": p.last_error or "",
                }
                peers.append((None, cells))
            for m in agent.peers.missing:
                cells = {
                    "peer": Text(m.node_id, "bold"),
                    "state": Text("missing", LINK_STYLE["down"]),
                    "planned": "yes",
                    "temporary": "no",
                    "remote": m.listen_uri or "-",
                    "error": m.reason,
                }
                peers.append((None, cells))
        if agent is not None and agent.routes is not None:
            for r in agent.routes.routes:
                hop = r.next_hop_node_id or (r.next_hop_key[:12] + "…" if r.next_hop_key else "-")
                cells = {
                    "kind": r.kind,
                    "to": r.node_id or r.key[:16] + "…",
                    "address": r.address,
                    "hop": hop,
                    "path": " ".join(map(str, r.path)) if r.path else "-",
                }
                routes.append((None, cells))
        elif agent is not None:
            routes.append((None, {"kind": "…", "to": "fetching routes (polled while this screen is open)"}))
        if agent is not None:
            for i in sorted(agent.incidents.values(), key=lambda i: i.detected_at, reverse=True):
                took = "-" if i.resolved_at is None else f"{i.resolved_at - i.detected_at:.2f} s"
                style = "yellow" if i.resolved_at is None else "green"
                cells = {
                    "detected": _t(i.detected_at),
                    "kind": Text(i.kind, style),
                    "subject": i.subject,
                    "resolved": _t(i.resolved_at) if i.resolved_at else Text("open", "bold yellow"),
                    "took": took,
                    "count": str(i.count),
                    "detail": i.detail,
                }
                incidents.append((i.id, cells))
            for a in sorted(agent.actions.values(), key=lambda a: a.at, reverse=True):
                style = {"ok": "green", "failed": "red"}.get(a.outcome, "yellow")
                cells = {
                    "at": _t(a.at),
                    "action": a.action,
                    "target": a.target,
                    "outcome": Text(a.outcome, style),
                    "reason": a.reason,
                    "uri": a.uri or "-",
                }
                actions.append((a.id, cells))
        self.query_one("#peers", KeyTable).show(peers)
        self.query_one("#routes", KeyTable).show(routes)
        self.query_one("#incidents", KeyTable).show(incidents)
        self.query_one("#actions", KeyTable).show(actions)

    @on(DataTable.RowSelected, "#incidents, #actions")
    def _record_selected(self, event: DataTable.RowSelected) -> None:
        """Enter on an incident or heal action: the whole record (its detail is often longer than the column)."""
        from dashboard.screens.event_detail import EventDetailScreen

        agent = self.dash.agent_data(self.node_id)
        key = event.row_key.value
        if agent is None or key is None:
            return
        if event.data_table.id == "incidents" and key in agent.incidents:
            inc = agent.incidents[key]
            self.app.push_screen(
                EventDetailScreen(
                    incident_event(self.node_id, inc, "opened" if inc.resolved_at is None else "resolved")
                )
            )
        elif event.data_table.id == "actions" and key in agent.actions:
            self.app.push_screen(EventDetailScreen(action_event(self.node_id, agent.actions[key])))

    def action_back(self) -> None:
        self.dismiss()

    def action_logs(self) -> None:
        from dashboard.screens.logs import LogScreen

        self.app.push_screen(LogScreen(self.node_id))

    def action_drill(self) -> None:
        self.dash.open_drills(target=self.node_id)
