"""GET /mapek, /mapek/incidents?since=, /mapek/actions?since=, /mapek/members (contracts §3). Read-only.

The loop is injected as the `mapek` dependency by `agent.mapek.loop.MapekLoop`. `since` is a unix time (float);
a bad one gets 400 naming the parameter.
"""

from __future__ import annotations

from typing import Annotated, Protocol, runtime_checkable

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import QueryParameter

from agent.mapek.knowledge import Knowledge
from agent.mapek.schemas import ActionList, Incident, IncidentList, MapekStatus, MemberList


@runtime_checkable
class MapekReader(Protocol):
    """What the controller reads of agent.mapek.loop.MapekLoop (the loop mounts the controller, so the controller
    must not import the loop back)."""

    kn: Knowledge

    def status(self) -> MapekStatus: ...

    def incidents(self, since: float) -> list[Incident]: ...

    def member_list(self) -> MemberList: ...


Since = Annotated[
    float,
    QueryParameter(
        name="since", ge=0, description="unix seconds; items detected/resolved (or taken) at or after it"
    ),
]


class MapekController(Controller):
    path = "/mapek"
    tags = ["mapek"]

    @get("", summary="MAPE-K loop state, last tick, phase timings, active incidents", sync_to_thread=False)
    def status(self, mapek: NamedDependency[MapekReader]) -> MapekStatus:
        return mapek.status()

    @get("/incidents", summary="Incidents detected or resolved since a time", sync_to_thread=False)
    def incidents(self, mapek: NamedDependency[MapekReader], since: Since = 0.0) -> IncidentList:
        return IncidentList(incidents=mapek.incidents(since))

    @get("/members", summary="Every member in this node's membership view (SWIM)", sync_to_thread=False)
    def members(self, mapek: NamedDependency[MapekReader]) -> MemberList:
        return mapek.member_list()

    @get("/actions", summary="Heal actions taken since a time, with outcomes", sync_to_thread=False)
    def actions(self, mapek: NamedDependency[MapekReader], since: Since = 0.0) -> ActionList:
        return ActionList(actions=mapek.kn.actions_since(since))
