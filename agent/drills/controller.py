"""POST /drills, GET /drills, DELETE /drills/{id} (contracts §3). Mutations need the bearer token.

The manager is injected as the `drills` dependency by `agent.drills.extension`. The token guard runs before the
body is parsed: without a valid token even a malformed body gets 401. A bad body gets 400 naming the field.
"""

from __future__ import annotations

from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException, NotFoundException, ServiceUnavailableException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_202_ACCEPTED, HTTP_409_CONFLICT

from agent.auth import require_token
from agent.drills.faults import FaultUnavailable
from agent.drills.manager import DrillConflict, DrillManager, DrillNotFound, DrillUnavailable
from agent.drills.schemas import Drill, DrillList, DrillRequest
from agent.mesh.schemas import ErrorBody
from agent.openapi import response_spec


class Conflict(HTTPException):
    status_code = HTTP_409_CONFLICT


_ERRORS: dict[int, ResponseSpec] = {
    400: response_spec(data_container=ErrorBody, description="Bad body; the detail names the field"),
    401: response_spec(data_container=ErrorBody, description="Missing or wrong bearer token"),
    403: response_spec(data_container=ErrorBody, description="No X0_API_TOKEN configured on this agent"),
}


class DrillsController(Controller):
    path = "/drills"
    tags = ["drills"]

    @post(
        "",
        guards=[require_token],
        status_code=HTTP_202_ACCEPTED,
        summary="Start a drill on this node",
        description="`partition` rejects and `blackhole` silently drops this node's mesh traffic (nftables in "
        "its own namespace); `kill-daemon` stops the supervised daemon. Reverts by itself after `duration_s`.",
        responses={
            **_ERRORS,
            409: response_spec(
                data_container=ErrorBody,
                description="Cannot apply here (what is missing), or a drill holds the mesh-wide lease (named)",
            ),
            503: response_spec(
                data_container=ErrorBody,
                description="The mesh-wide drill lease cannot be taken (no leader/quorum)",
            ),
        },
    )
    async def start(self, data: JSONBody[DrillRequest], drills: NamedDependency[DrillManager]) -> Drill:
        try:
            return await drills.start(data.kind, data.duration_s, holder=data.holder, lease_id=data.lease_id)
        except (FaultUnavailable, DrillConflict) as exc:
            raise Conflict(detail=str(exc)) from None
        except DrillUnavailable as exc:
            raise ServiceUnavailableException(detail=str(exc)) from None

    @get("", summary="Active and past drills of this node", sync_to_thread=False)
    def list_drills(self, drills: NamedDependency[DrillManager]) -> DrillList:
        return drills.list()

    @delete(
        "/{drill_id:str}",
        guards=[require_token],
        status_code=200,
        summary="Abort a drill and revert its fault now",
        responses={**_ERRORS, 404: response_spec(data_container=ErrorBody, description="No such drill")},
    )
    async def abort(self, drill_id: FromPath[str], drills: NamedDependency[DrillManager]) -> Drill:
        try:
            return await drills.abort(drill_id)
        except DrillNotFound as exc:
            raise NotFoundException(detail=str(exc)) from None
