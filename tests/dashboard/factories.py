"""Builders of agent replies for the pure unit tests, using the agent's own wire structs (so a change to the
payloads breaks these tests too, not only the agent's)."""

from __future__ import annotations

from agent.mapek.schemas import PhaseMs
from agent.mesh.schemas import Health, HealthCheck, MeshPeers, MeshStatus, MissingPeer, PeerView, YggdrasilHealth
from dashboard import wire
from dashboard.models import AgentData
from dashboard.providers.base import NodeTarget, SourceSnapshot


def peer(
    node_id: str,
    *,
    up: bool = True,
    planned: bool = True,
    temporary: bool = False,
    latency_ms: float | None = None,
    last_error: str | None = None,
) -> PeerView:
    return PeerView(
        key=f"key-{node_id}",
        address=None,
        node_id=node_id,
        remote=f"tls://{node_id}:1",
        up=up,
        inbound=False,
        latency_ms=latency_ms,
        bytes_recvd=1,
        bytes_sent=1,
        uptime_s=5.0,
        last_error=last_error,
        planned=planned,
        temporary=temporary,
    )


def agent(
    node_id: str,
    peers: list[PeerView],
    *,
    missing: list[str] = (),
    ok: bool = True,  # type: ignore[assignment]
    healthy: bool = True,
    last_ok_at: float | None = 100.0,
    error_kind: str | None = None,
    incidents: list[wire.Incident] = (),
) -> AgentData:  # type: ignore[assignment]
    checks = [HealthCheck(name="yggdrasil", ok=healthy, detail="ok" if healthy else "admin socket unreachable")]
    health = Health(
        status="ok" if healthy else "fail",
        node_id=node_id,
        version="0.1.0",
        yggdrasil=YggdrasilHealth(reachable=healthy, api_version="0.4", endpoint="unix:///x"),
        peers_up=sum(p.up for p in peers),
        checks=checks,
    )
    status = MeshStatus(
        node_id=node_id,
        key=f"key-{node_id}",
        address=f"200::{node_id[-1]}",
        subnet=None,
        api_version="0.4",
        coords=[],
        routing_entries=None,
        peers_up=sum(p.up for p in peers),
        peers_expected=len([p for p in peers if p.planned]) + len(missing),
        members_known=3,
        uptime_s=10.0,
        snapshot_age_s=0.1,
    )
    mapek = wire.MapekState(
        node_id=node_id,
        enabled=True,
        state="running",
        tick=1,
        last_tick_at=100.0,
        interval_s=1.0,
        members_total=3,
        members_reachable=3,
        phase_ms=PhaseMs(monitor=1.0, analyze=0.1, plan=0.1, execute=0.0),
        active_incidents=[i for i in incidents if i.resolved_at is None],
    )
    return AgentData(
        node_id=node_id,
        agent_url=f"http://{node_id}:8080",
        health=health,
        status=status,
        peers=MeshPeers(
            node_id=node_id,
            peers=peers,
            missing=[MissingPeer(node_id=m, key=None, listen_uri=None, reason="no link") for m in missing],
        ),
        mapek=mapek,
        ok=ok,
        last_ok_at=last_ok_at,
        last_attempt_at=100.0,
        error=None if ok else "no answer within 1.5 s",
        error_kind=error_kind,
        incidents={i.id: i for i in incidents},
    )


def snapshot(*ids: str, links: list[tuple[str, str]] = ()) -> SourceSnapshot:  # type: ignore[assignment]
    return SourceSnapshot(
        source="test",
        ok=True,
        detail="",
        planned_links=list(links),
        nodes=[NodeTarget(id=i, agent_url=f"http://{i}:8080") for i in ids],
    )


def incident(
    iid: str, kind: str, subject: str, detected_at: float, resolved_at: float | None = None
) -> wire.Incident:
    return wire.Incident(
        id=iid,
        kind=kind,
        subject=subject,
        detected_at=detected_at,
        resolved_at=resolved_at,
        count=1,
        detail="",
        actions=[],
    )
