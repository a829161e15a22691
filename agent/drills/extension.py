"""Drills as an agent extension (see agent.api.app `AgentExtension`): serves /drills, removes leftover fault
tables when the agent starts, reverts active drills when it stops."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from litestar import Router
from litestar.di import Provide
from litestar.exceptions import ServiceUnavailableException

from agent.drills.controller import DrillsController
from agent.drills.manager import DrillCoordinator, DrillManager
from agent.settings import Settings

if TYPE_CHECKING:
    from agent.state import AgentState


async def _nothing() -> None:
    return None


class DrillsExtension:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.manager: DrillManager | None = None

        # A closure, not a bound method: Litestar deep-copies dependencies (see agent.mapek.loop).
        def provide() -> DrillManager:
            if self.manager is None:
                raise ServiceUnavailableException(
                    detail="drills are not running on this agent (starting or stopping)"
                )
            return self.manager

        self.route_handlers = [
            Router(
                path="/",
                route_handlers=[DrillsController],
                dependencies={"drills": Provide(provide, sync_to_thread=False)},
            )
        ]

    async def start(self, agent: AgentState) -> None:
        def planned_all_up() -> bool:
            return agent.yggdrasil_ok() and all(p.up for p in agent.planned_status())

        manager = DrillManager(
            self.settings.node_id,
            members=lambda: agent.members.members,
            supervisor=lambda: agent.supervisor,
            metrics=agent.metrics,
            planned_all_up=planned_all_up,
            agent_port=self.settings.listen_port,
            notify=agent.notify,
            coordinator=lambda: self._coordinator(agent),
            announce=lambda until: agent.announce_drill(until) if agent.announce_drill else _nothing(),
            mark=lambda until: setattr(agent, "own_drill_until", until),
        )
        await asyncio.to_thread(manager.cleanup_leftovers)
        self.manager = manager

    @staticmethod
    def _coordinator(agent: AgentState) -> DrillCoordinator | None:
        """The mesh-wide lease when consensus runs here (agent.consensus), else per-node drills only."""
        consensus = agent.consensus
        if consensus is None or consensus.role == "disabled":
            return None
        return consensus.drill_coordinator

    async def stop(self) -> None:
        if self.manager is not None:
            await self.manager.shutdown()
