"""Node detail: the node's own view of the mesh: peers, routes, MAPE-K incidents and actions, and small time
series over the session. Routes are polled only while this screen is open."""

from __future__ import annotations

import datetime as dt

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Footer, Label, Sparkline, Static, TabbedContent, TabPane

from dashboard import wire
from dashboard.models import AgentData, MeshView, NodeView
from dashboard.screens.base import MeshScreen
from dashboard.session import MeshUpdate
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


def refill(table: DataTable, rows: list[tuple[str | Text, ...]]) -> None:  # type: ignore[type-arg]
    """Replace a table's rows only when they changed, keeping the cursor row (a poll a second must not throw
    the operator back to the top)."""
    plain = [tuple(c.plain if isinstance(c, Text) else c for c in r) for r in rows]
    if getattr(table, "_x0_rows", None) == plain:
        return
    table._x0_rows = plain  # type: ignore[attr-defined]
    cursor = table.cursor_row
    table.clear()
    for r in rows:
        table.add_row(*r)
    if rows:
        table.move_cursor(row=min(max(cursor, 0), len(rows) - 1))


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
                yield DataTable(id="peers", cursor_type="row", zebra_stripes=True)
            with TabPane("Routes", id="tab-routes"):
                yield DataTable(id="routes", cursor_type="row", zebra_stripes=True)
            with TabPane("Incidents", id="tab-incidents"):
                yield DataTable(id="incidents", cursor_type="row", zebra_stripes=True)
            with TabPane("Heal actions", id="tab-actions"):
                yield DataTable(id="actions", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#peers", DataTable).add_columns(
            "peer", "state", "planned", "temporary", "direction", "remote", "latency", "uptime", "last error"
        )
        self.query_one("#routes", DataTable).add_columns("kind", "to", "address", "next hop", "path")
        self.query_one("#incidents", DataTable).add_columns(
            "detected", "kind", "subject", "resolved", "took", "count", "detail"
        )
        self.query_one("#actions", DataTable).add_columns("at", "action", "target", "outcome", "reason", "uri")
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
        peers: list[tuple[str | Text, ...]] = []
        routes: list[tuple[str | Text, ...]] = []
        incidents: list[tuple[str | Text, ...]] = []
        actions: list[tuple[str | Text, ...]] = []
        if agent is not None and agent.peers is not None:
            for p in sorted(agent.peers.peers, key=lambda p: (p.node_id or "~", p.key)):
                link = links.get(p.node_id or "")
                state = link.state if link is not None else ("up" if p.up else "down")
                style = LINK_STYLE.get(state, "")
                latency = link.latency_ms if link is not None else p.latency_ms
                direction = "-" if p.inbound is None else ("in" if p.inbound else "out")
                peers.append(
                    (
                        Text(p.node_id or p.key[:16] + "…", "bold"),
                        Text(state, style),
                        "yes" if p.planned else "no",
                        "yes" if p.temporary else "no",
                        direction,
                        p.remote or "-",
                        fmt_ms(latency),
                        fmt_age(p.uptime_s),
                        p.last_error or "",
                    )
                )
            for m in agent.peers.missing:
                peers.append(
                    (
                        Text(m.node_id, "bold"),
                        Text("missing", LINK_STYLE["down"]),
                        "yes",
                        "no",
                        "-",
                        m.listen_uri or "-",
                        "-",
                        "-",
                        m.reason,
                    )
                )
        if agent is not None and agent.routes is not None:
            for r in agent.routes.routes:
                routes.append(
                    (
                        r.kind,
                        r.node_id or r.key[:16] + "…",
                        r.address,
                        r.next_hop_node_id or (r.next_hop_key[:12] + "…" if r.next_hop_key else "-"),
                        " ".join(map(str, r.path)) if r.path else "-",
                    )
                )
        elif agent is not None:
            routes.append(("…", "fetching routes (polled while this screen is open)", "", "", ""))
        if agent is not None:
            for i in sorted(agent.incidents.values(), key=lambda i: i.detected_at, reverse=True):
                took = "-" if i.resolved_at is None else f"{i.resolved_at - i.detected_at:.2f} s"
                style = "yellow" if i.resolved_at is None else "green"
                incidents.append(
                    (
                        _t(i.detected_at),
                        Text(i.kind, style),
                        i.subject,
                        _t(i.resolved_at) if i.resolved_at else Text("open", "bold yellow"),
                        took,
                        str(i.count),
                        i.detail,
                    )
                )
            for a in sorted(agent.actions.values(), key=lambda a: a.at, reverse=True):
                style = {"ok": "green", "failed": "red"}.get(a.outcome, "yellow")
                actions.append((_t(a.at), a.action, a.target, Text(a.outcome, style), a.reason, a.uri or "-"))
        refill(self.query_one("#peers", DataTable), peers)
        refill(self.query_one("#routes", DataTable), routes)
        refill(self.query_one("#incidents", DataTable), incidents)
        refill(self.query_one("#actions", DataTable), actions)

    def action_back(self) -> None:
        self.dismiss()

    def action_logs(self) -> None:
        from dashboard.screens.logs import LogScreen

        self.app.push_screen(LogScreen(self.node_id))

    def action_drill(self) -> None:
        self.dash.open_drills(target=self.node_id)
