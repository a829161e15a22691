"""HTTP client for the agents' API (docs/contracts.md §3): the one place x0dash talks to agents.

Used by the poller (read endpoints, many agents at once) and the drill engine (drills, incidents, actions).
Every failure becomes an `AgentError` whose `kind` says what the operator should think: the agent is gone
(`refused`), too slow (`timeout`), refused our request (`http`, `auth`, `conflict`, `not_found`) or answered
something that is not our API (`garbage`).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import httpx
import msgspec

from agent.auth import ALLOW_CLEAR_ENV, may_send_token
from dashboard import wire

T = TypeVar("T")

ErrorKind = Literal["refused", "timeout", "protocol", "http", "auth", "conflict", "not_found", "garbage"]


class AgentError(Exception):
    def __init__(self, kind: ErrorKind, detail: str, *, url: str, status: int | None = None) -> None:
        super().__init__(f"{url}: {detail}")
        self.kind: ErrorKind = kind
        self.detail = detail
        self.url = url
        self.status = status


_DECODERS: dict[type, msgspec.json.Decoder[Any]] = {}
_ERROR_DECODER = msgspec.json.Decoder(wire.ErrorBody)


def _decoder(type_: type[T]) -> msgspec.json.Decoder[T]:
    dec = _DECODERS.get(type_)
    if dec is None:
        dec = _DECODERS[type_] = msgspec.json.Decoder(type_)
    return dec


def _error_detail(resp: httpx.Response) -> str:
    try:
        return _ERROR_DECODER.decode(resp.content).detail
    except (msgspec.DecodeError, msgspec.ValidationError):
        text = resp.text.strip().replace("\n", " ")
        return text[:200] or resp.reason_phrase


TLS_CA_ENV = "X0_TLS_CA"


def clear_token_refusal(url: str, allow_clear: bool) -> str | None:
    """Why the token may not be sent to `url`, or None. The agents' rule (agent.auth), applied before sending:
    over https, to an overlay address (Yggdrasil encrypts it), to loopback, or when explicitly allowed."""
    if may_send_token(url, allow_clear):
        return None
    return (
        f"not sending the API token in clear over the underlay to {urlsplit(url).netloc}: run the agents with TLS "
        f"(X0_TLS_CERT/X0_TLS_KEY; x0dash then uses https, trusting $X0_TLS_CA) or reach them over the overlay; "
        f"for a mesh on one host set {ALLOW_CLEAR_ENV}=true"
    )


def _https(url: str) -> str:
    return "https" + url[len("http") :]


def _origin(url: str) -> str:
    return url.split("/", 3)[2] if "://" in url else url


# Writes (drills, the mesh-wide lease, drill records) go through Raft on the agent: it answers within its write
# timeout (X0_RAFT_WRITE_TIMEOUT, 2 s) plus a forward to a voter. The polls' short timeout would give up on a
# legitimate answer: scale_bench at 20 nodes had x0dash call a drill refused ("no answer within 1.5 s") there.
WRITE_TIMEOUT_S = 5.0


class AgentClient:
    """httpx clients for all agents, one small pool per agent. `timeout` bounds every read; writes (the requests
    that carry the token) get at least WRITE_TIMEOUT_S.

    One pool per agent, not one shared pool: httpcore's pool scans its connections for every request, so a single
    pool holding ~600 connections (100 agents x 6 concurrent requests) spends seconds per cycle in that scan
    (measured: 400 concurrent GETs took 9.6 s through one pool, 600 took 0.75 s through per-agent pools).
    """

    def __init__(
        self,
        *,
        timeout: float = 1.5,
        token: str | None = None,
        per_agent_connections: int = 8,
        allow_clear: bool = False,
        ca_file: str | None = None,
    ) -> None:
        self.timeout = timeout
        self.token = token
        # Send the token over plain HTTP to underlay addresses (a mesh on one host only): see clear_token_refusal.
        self.allow_clear = allow_clear
        # Origins given as http:// whose agent answered https instead (it serves TLS): used as https from then on.
        self._tls_origins: set[str] = set()
        self._limits = httpx.Limits(
            max_connections=per_agent_connections, max_keepalive_connections=per_agent_connections
        )
        # Creating an SSL context per client is slow and costs memory; agents share one.
        self._ssl = ssl.create_default_context()
        if ca_file:  # the agents' own CA or self-signed certificate, beside the system's
            self._ssl.load_verify_locations(cafile=ca_file)
        self._clients: dict[str, httpx.AsyncClient] = {}

    def _client(self, url: str) -> httpx.AsyncClient:
        origin = _origin(url)
        client = self._clients.get(origin)
        if client is None:
            client = self._clients[origin] = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout),
                limits=self._limits,
                verify=self._ssl,
                # Agents live on private underlay addresses; an operator's proxy settings must not capture them.
                trust_env=False,
                headers={"accept": "application/json", "user-agent": "x0dash"},
            )
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def request(
        self,
        method: str,
        base_url: str,
        path: str,
        type_: type[T],
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        auth: bool = False,
        ok_statuses: tuple[int, ...] = (200,),
    ) -> T:
        url = self._url(base_url, path)
        headers = None
        timeout = max(self.timeout, WRITE_TIMEOUT_S) if auth else self.timeout
        if auth:
            if not self.token:
                raise AgentError(
                    "auth", "no API token known for this mesh (X0_API_TOKEN / inventory api_token)", url=url
                )
            refusal = clear_token_refusal(url, self.allow_clear)
            if refusal is not None and await self._offers_tls(url):
                url, refusal = _https(url), None
            if refusal is not None:
                raise AgentError("auth", refusal, url=url)
            headers = {"authorization": f"Bearer {self.token}"}
        try:
            try:
                resp = await self._client(url).request(
                    method, url, params=params, json=json, headers=headers, timeout=timeout
                )
            except (httpx.RemoteProtocolError, httpx.ReadError):
                # Plain HTTP to an agent serving TLS: it drops the connection. Use https if it answers there.
                if not (url.startswith("http://") and await self._offers_tls(url)):
                    raise
                url = _https(url)
                resp = await self._client(url).request(
                    method, url, params=params, json=json, headers=headers, timeout=timeout
                )
        except httpx.TimeoutException as exc:
            raise AgentError("timeout", f"no answer within {timeout:g} s ({type(exc).__name__})", url=url) from exc
        except httpx.ConnectError as exc:
            raise AgentError("refused", f"cannot connect: {exc or type(exc).__name__}", url=url) from exc
        except httpx.HTTPError as exc:
            raise AgentError("protocol", f"{type(exc).__name__}: {exc}", url=url) from exc
        if resp.status_code not in ok_statuses:
            kind: ErrorKind = {401: "auth", 403: "auth", 404: "not_found", 409: "conflict"}.get(
                resp.status_code, "http"
            )
            raise AgentError(
                kind, f"HTTP {resp.status_code}: {_error_detail(resp)}", url=url, status=resp.status_code
            )
        try:
            return _decoder(type_).decode(resp.content)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise AgentError("garbage", f"not an x0-agent reply: {exc}", url=url, status=resp.status_code) from exc

    def _url(self, base_url: str, path: str) -> str:
        url = base_url.rstrip("/") + path
        if url.startswith("http://") and _origin(url) in self._tls_origins:
            return _https(url)
        return url

    async def _offers_tls(self, url: str) -> bool:
        """Does the agent behind this http:// URL answer https (GET /health, any status)? Remembered per origin."""
        origin = _origin(url)
        if origin in self._tls_origins:
            return True
        parts = urlsplit(url)
        probe = f"https://{parts.netloc}/health"
        try:
            await self._client(probe).get(probe)
        except httpx.HTTPError:
            return False
        self._tls_origins.add(origin)
        return True

    # Read API ---------------------------------------------------------------------------------------------
    async def health(self, base_url: str) -> wire.Health:
        # 503 still carries a Health body naming the failing check.
        return await self.request("GET", base_url, "/health", wire.Health, ok_statuses=(200, 503))

    async def status(self, base_url: str) -> wire.MeshStatus:
        return await self.request("GET", base_url, "/mesh/status", wire.MeshStatus)

    async def peers(self, base_url: str) -> wire.MeshPeers:
        return await self.request("GET", base_url, "/mesh/peers", wire.MeshPeers)

    async def routes(self, base_url: str) -> wire.MeshRoutes:
        return await self.request("GET", base_url, "/mesh/routes", wire.MeshRoutes)

    async def cluster(self, base_url: str) -> wire.Cluster:
        """The node's Raft view (contracts §3 `/cluster`)."""
        return await self.request("GET", base_url, "/cluster", wire.Cluster)

    async def mapek(self, base_url: str) -> wire.MapekState:
        return await self.request("GET", base_url, "/mapek", wire.MapekState)

    async def incidents(self, base_url: str, since: float) -> list[wire.Incident]:
        reply = await self.request(
            "GET", base_url, "/mapek/incidents", wire.IncidentList, params={"since": f"{since:.3f}"}
        )
        return reply.incidents

    async def actions(self, base_url: str, since: float) -> list[wire.Action]:
        reply = await self.request(
            "GET", base_url, "/mapek/actions", wire.ActionList, params={"since": f"{since:.3f}"}
        )
        return reply.actions

    async def metrics_text(self, base_url: str) -> str:
        url = self._url(base_url, "/metrics")
        try:
            resp = await self._client(url).get(url, headers={"accept": "text/plain"})
        except httpx.TimeoutException as exc:
            raise AgentError("timeout", f"no answer within {self.timeout:g} s", url=url) from exc
        except httpx.HTTPError as exc:
            raise AgentError("refused", f"{type(exc).__name__}: {exc}", url=url) from exc
        if resp.status_code != 200:
            raise AgentError("http", f"HTTP {resp.status_code}", url=url, status=resp.status_code)
        return resp.text

    # Drills -------------------------------------------------------------------------------------------------
    async def drills(self, base_url: str) -> wire.DrillList:
        return await self.request("GET", base_url, "/drills", wire.DrillList)

    async def drill_history(self, base_url: str, limit: int = 200, since: float = 0.0) -> list[wire.DrillRecord]:
        """The mesh's finished drills from the replicated store (contracts §3: any node serves them)."""
        params = {"limit": str(limit)} | ({"since": f"{max(0.0, since):.3f}"} if since else {})
        reply = await self.request("GET", base_url, "/drills/history", wire.DrillHistory, params=params)
        return reply.drills

    async def file_drill(self, base_url: str, record: wire.DrillRecord) -> wire.DrillRecord:
        """File a finished drill (with its report) in the mesh-wide history (contracts §3 POST /drills/history)."""
        return await self.request(
            "POST",
            base_url,
            "/drills/history",
            wire.DrillRecord,
            auth=True,
            json=msgspec.to_builtins(record),
            ok_statuses=(200, 201),
        )

    async def drill_lease(self, base_url: str, *, stale: bool = False) -> wire.DrillLease | None:
        """The mesh-wide drill lease (contracts §3 `GET /drills/lease`, linearizable); None when nobody holds one.
        `stale`: this node's replica of its store key (§7 `x0/drills/lease`), no Raft round: for showing it each
        poll; it may be an expired or released-meanwhile lease (check `expires_at`)."""
        try:
            if stale:
                params = {"stale": "true", "raw": "true"}
                return await self.request("GET", base_url, "/kv/x0/drills/lease", wire.DrillLease, params=params)
            return await self.request("GET", base_url, "/drills/lease", wire.DrillLease)
        except AgentError as exc:
            if exc.kind == "not_found":  # none held (or an agent from before the lease: none it knows of)
                return None
            raise

    async def take_lease(
        self, base_url: str, *, holder: str, kind: str, node_id: str, ttl_s: float
    ) -> wire.DrillLease:
        body = {"holder": holder, "kind": kind, "node_id": node_id, "ttl_s": ttl_s}
        return await self.request(
            "POST", base_url, "/drills/lease", wire.DrillLease, auth=True, json=body, ok_statuses=(200, 201)
        )

    async def release_lease(self, base_url: str, lease_id: str) -> wire.DrillLease:
        return await self.request("DELETE", base_url, f"/drills/lease/{lease_id}", wire.DrillLease, auth=True)

    async def start_drill(
        self, base_url: str, kind: str, duration_s: int, *, holder: str | None = None
    ) -> wire.Drill:
        body: dict[str, Any] = {"kind": kind, "duration_s": duration_s}
        if holder is not None:
            body["holder"] = holder  # named to whoever the mesh-wide lease refuses meanwhile (contracts §3)
        return await self.request(
            "POST",
            base_url,
            "/drills",
            wire.Drill,
            auth=True,
            json=body,
            ok_statuses=(200, 201, 202),
        )

    async def stop_drill(self, base_url: str, drill_id: str) -> wire.Drill:
        return await self.request("DELETE", base_url, f"/drills/{drill_id}", wire.Drill, auth=True)
