"""How x0dash decodes what agents send (docs/contracts.md §3): with the agent's own payload structs, so producer
and consumer cannot drift apart silently (a reply that does not match is reported as not an x0-agent reply)."""

from __future__ import annotations

from agent.consensus.schemas import Cluster, ClusterMember, DrillHistory, DrillLease, DrillRecord, KvEntry
from agent.drills.schemas import Drill, DrillList
from agent.mapek.schemas import Action, ActionList, Incident, IncidentList
from agent.mapek.schemas import MapekStatus as MapekState
from agent.mesh.schemas import ErrorBody, Health, MeshPeers, MeshRoutes, MeshStatus

__all__ = [
    "Action",
    "ActionList",
    "Cluster",
    "ClusterMember",
    "Drill",
    "DrillHistory",
    "DrillLease",
    "DrillList",
    "DrillRecord",
    "ErrorBody",
    "Health",
    "Incident",
    "IncidentList",
    "KvEntry",
    "MapekState",
    "MeshPeers",
    "MeshRoutes",
    "MeshStatus",
]
