"""GET /cluster, /kv (GET, PUT, DELETE), /drills/lease and /drills/history (contracts §3, §7).

The service is injected as the `consensus` dependency by `agent.consensus.service.ConsensusService`. On a client
(or a voter still joining) /kv requests are forwarded as they are to a voter, and the voter's answer is relayed.
"""

from __future__ import annotations

import base64
import math
import re
import time
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, post, put
from litestar.di import NamedDependency
from litestar.exceptions import (
    ClientException,
    HTTPException,
    NotFoundException,
    ServiceUnavailableException,
)
from litestar.params import FromPath, HeaderParameter, JSONBody, PathParameter, QueryParameter
from litestar.status_codes import HTTP_201_CREATED, HTTP_409_CONFLICT, HTTP_413_REQUEST_ENTITY_TOO_LARGE

from agent.auth import require_token
from agent.consensus import lease as leases
from agent.consensus.engine import RaftUnavailable
from agent.consensus.schemas import (
    DEADLINE_HEADER,
    OUTCOME_HEADER,
    REQUEST_ID_HEADER,
    REQUEST_ID_RE,
    Cluster,
    DrillHistory,
    DrillLease,
    DrillRecord,
    KvDelete,
    KvEntry,
    KvKey,
    KvList,
    KvWrite,
    LeaseRequest,
)
from agent.consensus.store import MAX_KEY_BYTES, MAX_VALUE_BYTES
from agent.mesh.schemas import ErrorBody
from agent.openapi import response_spec

if TYPE_CHECKING:
    from agent.consensus.service import ConsensusService

KEY_RE = re.compile(r"^[A-Za-z0-9_.-][A-Za-z0-9/_.-]*$")
FORWARDED = "x-x0-forwarded"
RELAYED_HEADERS = ("x-x0-modify-index", "x-x0-index", "www-authenticate", OUTCOME_HEADER.lower())


class Conflict(HTTPException):
    status_code = HTTP_409_CONFLICT


class TooLarge(HTTPException):
    status_code = HTTP_413_REQUEST_ENTITY_TOO_LARGE


_ERR = {
    400: response_spec(data_container=ErrorBody, description="Bad key or parameter; the detail names the rule"),
    503: response_spec(data_container=ErrorBody, description="No leader / no quorum / timed out: the detail says"),
}
_WRITE_503 = response_spec(
    data_container=ErrorBody,
    description=(
        f"No leader / no quorum / timed out: the detail says. Header {OUTCOME_HEADER}: `not-applied` (refused "
        "before reaching the Raft log, or overwritten there: it never applies) or `unknown` (it reached the log "
        "and the answer was lost: it may still apply; read the key back, or retry with the same "
        f"{REQUEST_ID_HEADER})"
    ),
)
_AUTH = {
    401: response_spec(data_container=ErrorBody, description="Missing or wrong bearer token"),
    403: response_spec(data_container=ErrorBody, description="No X0_API_TOKEN configured on this agent"),
}

# The key's rules in the schema too: without them a client (or schemathesis) learns them only from our 400s.
# Documentation only (schema_extra): check_key enforces them and names the rule broken.
KeyPath = Annotated[
    str,
    PathParameter(
        description="1..512 bytes of [A-Za-z0-9/_.-], not starting with '/'",
        schema_extra={"pattern": KEY_RE.pattern, "minLength": 1, "maxLength": MAX_KEY_BYTES},
    ),
]
Stale = Annotated[bool, QueryParameter(description="answer from the local replica (may lag; see `lag`)")]
Cas = Annotated[
    int | None,
    QueryParameter(ge=0, description="compare-and-set: 0 = only if absent, N = only if modify_index is N"),
]


def check_key(key: str) -> str:
    key = key.lstrip("/") if key.startswith("/") else key
    if not key:
        raise ClientException(detail="invalid key: empty (keys are 1..512 bytes of [A-Za-z0-9/_.-])")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise ClientException(detail=f"invalid key: {len(key.encode())} bytes, the limit is {MAX_KEY_BYTES}")
    if not KEY_RE.match(key):
        raise ClientException(
            detail=f"invalid key: only [A-Za-z0-9/_.-] allowed, not starting with '/' (got {key[:64]!r})"
        )
    return key


def check_request_id(request_id: str | None) -> str | None:
    # Checked here, not by a Parameter pattern: Litestar's message would name the argument, not the header.
    if request_id is not None and not re.match(REQUEST_ID_RE, request_id):
        raise ClientException(
            detail=f"invalid {REQUEST_ID_HEADER}: 1..64 of [A-Za-z0-9_.:-] (got {request_id[:80]!r})"
        )
    return request_id


class _Timer:
    def __init__(self, consensus: ConsensusService, op: str) -> None:
        self.c, self.op, self.t0 = consensus, op, time.perf_counter()

    def done(self, outcome: str) -> None:
        agent = self.c._agent
        if agent is None:
            return
        m = agent.metrics.raft
        m.kv_requests.labels(op=self.op, outcome=outcome).inc()
        m.kv_duration.labels(op=self.op).observe(time.perf_counter() - self.t0)


def _unavailable(detail: str) -> ServiceUnavailableException:
    return ServiceUnavailableException(detail=detail)


def _write_unavailable(exc: RaftUnavailable) -> ServiceUnavailableException:
    if exc.outcome_unknown:
        return ServiceUnavailableException(
            detail=f"{exc}; the write may still be applied: read the key back before retrying",
            headers={OUTCOME_HEADER: "unknown"},
        )
    return ServiceUnavailableException(detail=f"{exc}; not applied", headers={OUTCOME_HEADER: "not-applied"})


RequestId = Annotated[
    str | None,
    HeaderParameter(
        name=REQUEST_ID_HEADER,
        description=(
            "your id for this write (1-64 of [A-Za-z0-9_.:-]): a retry with the same id applies at most once "
            "(the last 4,096 ids are remembered), so a write answered 503 with an unknown outcome can be retried"
        ),
        schema_extra={"pattern": REQUEST_ID_RE},
    ),
]

Deadline = Annotated[
    str | None,
    HeaderParameter(
        name=DEADLINE_HEADER,
        description=(
            "when you stop waiting for this write (Unix time, seconds, e.g. 1796468669.87): a node it reaches "
            "later than this plus X0_RAFT_CLOCK_SKEW (default 1 s) refuses it (503, X-X0-Outcome: not-applied), "
            "and no voter hands it to Raft after then, so a request held up in the network cannot apply long "
            "after you gave up on it. Client agents send it with every write they forward."
        ),
    ),
]


def check_deadline(consensus: ConsensusService, raw: str | None, timer: _Timer) -> float | None:
    """The writer's deadline plus the clock slack (Unix time): the write must reach Raft by then."""
    if raw is None:
        return None
    try:
        deadline = float(raw)
    except ValueError:
        deadline = math.nan
    if not math.isfinite(deadline):
        timer.done("invalid")
        raise ClientException(
            detail=f"invalid {DEADLINE_HEADER}: a Unix time in seconds, e.g. 1796468669.87 (got {raw[:40]!r})"
        )
    skew = consensus.settings.raft_clock_skew
    late = time.time() - deadline
    if late > skew:
        timer.done("unavailable")
        raise ServiceUnavailableException(
            detail=(
                f"the write reached {consensus.node_id} {late:.2f} s after its writer's deadline "
                f"({DEADLINE_HEADER}; clocks may differ by X0_RAFT_CLOCK_SKEW={skew:g} s); not applied"
            ),
            headers={OUTCOME_HEADER: "not-applied"},
        )
    return deadline + skew


async def _relay(
    consensus: ConsensusService,
    request: Request[Any, Any, Any],
    timer: _Timer,
    request_id: str | None = None,
    not_after: float | None = None,
) -> Response[bytes]:
    """A client forwards the request to a voter and hands back its answer."""
    if request.headers.get(FORWARDED):
        timer.done("unavailable")
        raise _unavailable(f"{consensus.node_id} is not a voter (forwarded by {request.headers.get(FORWARDED)})")
    body = await request.body() if request.method in ("PUT", "POST") else None
    try:
        r = await consensus.forward(
            request.method,
            request.url.path,
            params=dict(request.query_params),
            content=body,
            request_id=request_id,
            # The voter allows the clock slack again: hand it the writer's own deadline.
            writer_deadline=None if not_after is None else not_after - consensus.settings.raft_clock_skew,
        )
    except RaftUnavailable as exc:
        timer.done("unavailable")
        writing = request.method in ("PUT", "DELETE")
        raise (_write_unavailable(exc) if writing else _unavailable(str(exc))) from None
    outcome = {200: "ok", 404: "not_found", 409: "conflict", 400: "invalid", 413: "invalid", 503: "unavailable"}
    timer.done(outcome.get(r.status_code, "forwarded_error"))
    headers = {k: v for k, v in r.headers.items() if k.lower() in RELAYED_HEADERS}
    return Response(
        r.content, status_code=r.status_code, media_type=r.headers.get("content-type"), headers=headers
    )


def _check_served(consensus: ConsensusService, timer: _Timer) -> None:
    reason = consensus.unavailable_reason()
    if reason is not None:
        timer.done("unavailable")
        raise _unavailable(reason)


class ClusterController(Controller):
    path = "/cluster"
    tags = ["consensus"]

    @get("", summary="This node's Raft view: role, term, leader, indices, members", sync_to_thread=False)
    def cluster(self, consensus: NamedDependency[ConsensusService]) -> Cluster:
        return consensus.cluster()


class KvController(Controller):
    path = "/kv"
    tags = ["kv"]

    @get(
        "",
        summary="List keys under a prefix",
        responses=_ERR,
    )
    async def list_keys(
        self,
        request: Request[Any, Any, Any],
        consensus: NamedDependency[ConsensusService],
        prefix: Annotated[str, QueryParameter(max_length=MAX_KEY_BYTES)] = "",
        limit: Annotated[int, QueryParameter(ge=1, le=10000)] = 1000,
        stale: Stale = False,
    ) -> KvList | Response[bytes]:
        timer = _Timer(consensus, "list")
        _check_served(consensus, timer)
        if consensus.is_client():
            return await _relay(consensus, request, timer)
        try:
            rows, index, truncated = await consensus.list(prefix, limit, stale=stale)
        except RaftUnavailable as exc:
            timer.done("unavailable")
            raise _unavailable(str(exc)) from None
        timer.done("ok")
        return KvList(
            keys=[KvKey(key=k, modify_index=e.modify_index, size=len(e.value)) for k, e in rows],
            index=index,
            truncated=truncated,
        )

    @get(
        "/{key:path}",
        summary="Read a key (linearizable unless stale=true; raw=true: the value bytes, application/octet-stream)",
        responses={**_ERR, 404: response_spec(data_container=ErrorBody, description="No such key")},
        opt={"also_answers": "application/octet-stream"},  # raw=true (agent.api.strict documents it)
    )
    async def read(
        self,
        request: Request[Any, Any, Any],
        key: KeyPath,
        consensus: NamedDependency[ConsensusService],
        stale: Stale = False,
        raw: Annotated[bool, QueryParameter(description="answer with the value bytes")] = False,
    ) -> KvEntry | Response[bytes]:
        timer = _Timer(consensus, "get")
        try:
            key = check_key(key)
        except ClientException:
            timer.done("invalid")
            raise
        _check_served(consensus, timer)
        if consensus.is_client():
            return await _relay(consensus, request, timer)
        try:
            value = await consensus.get(key, stale=stale)
        except RaftUnavailable as exc:
            timer.done("unavailable")
            raise _unavailable(str(exc)) from None
        if value is None:
            timer.done("not_found")
            raise NotFoundException(detail=f"no key {key!r}")
        timer.done("ok")
        if raw:
            return Response(
                value.value,
                media_type="application/octet-stream",
                headers={"X-X0-Modify-Index": str(value.modify_index), "X-X0-Index": str(value.index)},
            )
        return KvEntry(
            key=key,
            value=base64.b64encode(value.value).decode(),
            modify_index=value.modify_index,
            create_index=value.create_index,
            index=value.index,
            stale=value.stale,
            lag=value.lag,
        )

    @put(
        "/{key:path}",
        guards=[require_token],
        summary="Write a key (body = value bytes); 200 once committed on a majority",
        request_max_body_size=2 * MAX_VALUE_BYTES,
        responses={
            **_ERR,
            **_AUTH,
            409: response_spec(data_container=ErrorBody, description="cas did not match; detail names the index"),
            413: response_spec(data_container=ErrorBody, description="Value over 64 KiB or store over 64 MiB"),
            503: _WRITE_503,
        },
    )
    async def write(
        self,
        request: Request[Any, Any, Any],
        key: KeyPath,
        consensus: NamedDependency[ConsensusService],
        cas: Cas = None,
        request_id: RequestId = None,
        deadline: Deadline = None,
    ) -> KvWrite | Response[bytes]:
        timer = _Timer(consensus, "put" if cas is None else "cas")
        try:
            key = check_key(key)
            check_request_id(request_id)
        except ClientException:
            timer.done("invalid")
            raise
        value = await request.body()
        if len(value) > MAX_VALUE_BYTES:
            timer.done("invalid")
            raise TooLarge(detail=f"value is {len(value)} bytes: the limit is {MAX_VALUE_BYTES} bytes (64 KiB)")
        not_after = check_deadline(consensus, deadline, timer)
        _check_served(consensus, timer)
        if consensus.is_client():
            return await _relay(consensus, request, timer, request_id, not_after)
        from agent.consensus.service import KvConflict, KvFull

        try:
            modify, index = await consensus.put(key, value, cas, request_id, not_after)
        except KvConflict as exc:
            timer.done("conflict")
            raise Conflict(detail=str(exc)) from None
        except KvFull as exc:
            timer.done("invalid")
            raise TooLarge(detail=str(exc)) from None
        except RaftUnavailable as exc:
            timer.done("unavailable")
            raise _write_unavailable(exc) from None
        timer.done("ok")
        return KvWrite(key=key, modify_index=modify, index=index)

    @delete(
        "/{key:path}",
        guards=[require_token],
        status_code=200,
        summary="Delete a key",
        responses={
            **_ERR,
            **_AUTH,
            409: response_spec(data_container=ErrorBody, description="cas did not match"),
            503: _WRITE_503,
        },
    )
    async def remove(
        self,
        request: Request[Any, Any, Any],
        key: KeyPath,
        consensus: NamedDependency[ConsensusService],
        cas: Cas = None,
        request_id: RequestId = None,
        deadline: Deadline = None,
    ) -> KvDelete | Response[bytes]:
        timer = _Timer(consensus, "delete")
        try:
            key = check_key(key)
            check_request_id(request_id)
        except ClientException:
            timer.done("invalid")
            raise
        not_after = check_deadline(consensus, deadline, timer)
        _check_served(consensus, timer)
        if consensus.is_client():
            return await _relay(consensus, request, timer, request_id, not_after)
        from agent.consensus.service import KvConflict

        try:
            deleted, index = await consensus.delete(key, cas, request_id, not_after)
        except KvConflict as exc:
            timer.done("conflict")
            raise Conflict(detail=str(exc)) from None
        except RaftUnavailable as exc:
            timer.done("unavailable")
            raise _write_unavailable(exc) from None
        timer.done("ok")
        return KvDelete(key=key, deleted=deleted, index=index)


class LeaseController(Controller):
    path = "/drills"
    tags = ["drills"]

    @get("/lease", summary="The mesh-wide drill lease, if one is current", responses=_ERR)
    async def get_lease(self, consensus: NamedDependency[ConsensusService]) -> DrillLease:
        _require_store(consensus)
        try:
            lease = await leases.active(consensus)
        except RaftUnavailable as exc:
            raise _unavailable(str(exc)) from None
        if lease is None:
            raise NotFoundException(detail="no drill lease is held in the mesh")
        return lease

    @post(
        "/lease",
        guards=[require_token],
        status_code=HTTP_201_CREATED,
        summary="Take the mesh-wide drill lease (x0dash before a drill it drives itself)",
        responses={**_ERR, **_AUTH, 409: response_spec(ErrorBody, "Held: names the holder")},
    )
    async def take_lease(
        self, data: JSONBody[LeaseRequest], consensus: NamedDependency[ConsensusService]
    ) -> DrillLease:
        _require_store(consensus)
        try:
            return await leases.acquire(
                consensus, holder=data.holder, kind=data.kind, node_id=data.node_id, ttl_s=data.ttl_s
            )
        except leases.LeaseHeld as exc:
            raise Conflict(detail=str(exc)) from None
        except leases.LeaseNotFound as exc:
            raise Conflict(detail=str(exc)) from None
        except RaftUnavailable as exc:
            raise _unavailable(f"cannot take the drill lease: {exc}") from None

    @delete(
        "/lease/{lease_id:str}",
        guards=[require_token],
        status_code=200,
        summary="Release the drill lease",
        responses={**_ERR, **_AUTH, 404: response_spec(data_container=ErrorBody, description="Not the current")},
    )
    async def release_lease(
        self, lease_id: FromPath[str], consensus: NamedDependency[ConsensusService]
    ) -> DrillLease:
        _require_store(consensus)
        try:
            return await leases.release(consensus, lease_id)
        except leases.LeaseNotFound as exc:
            raise NotFoundException(detail=str(exc)) from None
        except RaftUnavailable as exc:
            raise _unavailable(str(exc)) from None

    @get("/history", summary="The mesh's finished drills, newest first (any node serves them)", responses=_ERR)
    async def history(
        self,
        consensus: NamedDependency[ConsensusService],
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 100,
        since: Annotated[float, QueryParameter(ge=0)] = 0.0,
    ) -> DrillHistory:
        _require_store(consensus)
        try:
            rows = await consensus.list_values(leases.HISTORY_PREFIX, leases.HISTORY_KEEP + 50)
        except RaftUnavailable as exc:
            raise _unavailable(str(exc)) from None
        out: list[DrillRecord] = []
        for _, raw in reversed(rows):
            try:
                rec = msgspec.json.decode(raw, type=DrillRecord)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            if rec.started_at >= since:
                out.append(rec)
            if len(out) >= limit:
                break
        return DrillHistory(drills=out)

    @post(
        "/history",
        guards=[require_token],
        status_code=HTTP_201_CREATED,
        summary="File a finished drill record (x0dash reports)",
        responses={**_ERR, **_AUTH},
    )
    async def add_history(
        self, data: JSONBody[DrillRecord], consensus: NamedDependency[ConsensusService]
    ) -> DrillRecord:
        _require_store(consensus)
        try:
            await consensus.append_value(
                leases.HISTORY_PREFIX, leases.history_key(data), msgspec.json.encode(data), leases.HISTORY_KEEP
            )
        except RaftUnavailable as exc:
            raise _unavailable(str(exc)) from None
        return data


def _require_store(consensus: ConsensusService) -> None:
    reason = consensus.unavailable_reason()
    if reason is not None:
        raise _unavailable(reason)
