"""Consensus as an agent extension (see agent.api.app `AgentExtension`): serves /cluster, /kv, /drills/lease and
/drills/history, runs the node's `ConsensusService`, and hands the drills the mesh-wide lease
(`agent.state.consensus`). Start it before the drills extension."""

from __future__ import annotations

from typing import TYPE_CHECKING

from litestar import Router
from litestar.di import Provide

from agent.consensus.controller import ClusterController, KvController, LeaseController
from agent.consensus.drill_lease import DrillLeaseCoordinator
from agent.consensus.key_directory import KeyDirectory
from agent.consensus.service import ConsensusService
from agent.settings import Settings

if TYPE_CHECKING:
    from agent.state import AgentState


class ConsensusExtension:
    def __init__(self, settings: Settings) -> None:
        self.service = service = ConsensusService(settings)
        self.coordinator = service.drill_coordinator = DrillLeaseCoordinator(service)
        self.keys = KeyDirectory(service)

        # A closure, not a bound method: Litestar deep-copies dependencies (see agent.mapek.loop).
        def provide() -> ConsensusService:
            return service

        self.route_handlers = [
            Router(
                path="/",
                route_handlers=[ClusterController, KvController, LeaseController],
                dependencies={"consensus": Provide(provide, sync_to_thread=False)},
                signature_namespace={"ConsensusService": ConsensusService},
            )
        ]

    async def start(self, agent: AgentState) -> None:
        agent.consensus = self.service
        await self.service.start(agent)
        self.keys.start(agent)

    async def stop(self) -> None:
        await self.keys.stop()
        await self.coordinator.shutdown()
        await self.service.stop()
