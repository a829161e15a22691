"""The Litestar app in-process: payload shapes, OpenAPI truthfulness, error bodies, extensions, request metrics.

The state is driven directly (a snapshot built from the normalized models) so every response shape is checked
without a daemon; the process tests in tests/agent/service run the same endpoints beside real daemons.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from litestar import Controller, get, post
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.testing import AsyncTestClient

from agent.api.app import create_app
from agent.mesh import schemas
from agent.settings import Settings
from agent.state import AgentState
from agent.yggdrasil.errors import AdminUnavailable
from agent.yggdrasil.models import DaemonSnapshot, PeerLink, RouteEntry, SelfInfo

# Response fields added after the first release: optional in the schema so x0dash reads older agents.
ADDED_LATER = {"MeshPeers": {"admission", "refused"}}

KA, KB, KC = "a" * 64, "b" * 64, "c" * 64


class ProbeBody(msgspec.Struct):
    kind: str
    duration_s: int


class ProbeController(Controller):
    path = "/probe"

    @get("/{item:int}", sync_to_thread=False)
    def item(self, item: FromPath[int], since: FromQuery[float] = 0.0) -> dict[str, float]:
        return {"item": item, "since": since}

    @post("", sync_to_thread=False)
    def create(self, data: JSONBody[ProbeBody]) -> dict[str, str]:
        return {"kind": data.kind}


class ProbeExtension:
    """What MAPE-K and drills look like to the app: routes plus start/stop around the background tasks."""

    route_handlers = [ProbeController]

    def __init__(self) -> None:
        self.started_with: AgentState | None = None
        self.stopped = False

    async def start(self, agent: AgentState) -> None:
        self.started_with = agent

    async def stop(self) -> None:
        self.stopped = True


def write_members(path: Path) -> Path:
    members = [
        {
            "node_id": n,
            "agent_url": f"http://127.0.0.1:{8080 + i}",
            "listen_uri": f"tls://127.0.0.1:{9000 + i}",
            "public_key": k,
        }
        for i, (n, k) in enumerate([("node-a", KA), ("node-b", KB), ("node-c", KC)])
    ]
    path.write_text(json.dumps({"mesh": "t", "members": members}))
    return path


def snapshot() -> DaemonSnapshot:
    return DaemonSnapshot(
        api_version="0.4",
        self_info=SelfInfo(key=KA, address="200::a", subnet="300::/64", coords=[]),
        peers=[PeerLink(key=KB, up=True, port=1, remote="tls://127.0.0.1:9001", address="200::b", bytes_recvd=7)],
        routes=[
            RouteEntry(kind="dht", key=KB, address="200::b", next_hop_port=1),
            RouteEntry(kind="path", key=KC, address="200::c", path=[1, 2, 0], next_hop_port=1),
        ],
        taken_at=1.0,
    )


@pytest.fixture
def ext() -> ProbeExtension:
    return ProbeExtension()


@pytest.fixture
async def client(tmp_path: Path, ext: ProbeExtension) -> AsyncIterator[AsyncTestClient]:
    settings = Settings.from_env(
        {
            "NODE_ID": "node-a",
            "MESH_MEMBERS": str(write_members(tmp_path / "m.json")),
            "YGGDRASIL_ADMIN": f"unix://{tmp_path}/none.sock",
        }
    )
    agent = AgentState(settings)
    agent.members.check()
    agent.monitor_alive = True
    app = create_app(settings, extensions=[ext], background=False, agent=agent)
    async with AsyncTestClient(app) as c:
        yield c


def agent_of(client: AsyncTestClient) -> AgentState:
    return client.app.state.agent


async def test_before_any_snapshot_mesh_endpoints_are_503_error_bodies(client: AsyncTestClient) -> None:
    agent_of(client).record_error(AdminUnavailable("unix:///x.sock", "connection refused"))
    for path in ["/mesh/status", "/mesh/peers", "/mesh/routes"]:
        r = await client.get(path)
        body = msgspec.json.decode(r.content, type=schemas.ErrorBody)
        assert r.status_code == 503 and body.status_code == 503
        assert "no daemon snapshot yet: AdminUnavailable" in body.detail
    r = await client.get("/health")
    health = msgspec.json.decode(r.content, type=schemas.Health)
    assert r.status_code == 503 and health.status == "fail" and not health.yggdrasil.reachable
    assert [c.name for c in health.checks if not c.ok] == ["yggdrasil", "peers"]


async def test_payloads_match_the_schemas(client: AsyncTestClient) -> None:
    agent_of(client).record_snapshot(snapshot())
    h = await client.get("/health")
    health = msgspec.json.decode(h.content, type=schemas.Health)
    assert h.status_code == 200 and health.status == "ok" and health.peers_up == 1
    assert next(c for c in health.checks if c.name == "peers").detail == "1 of 2 planned peers up; missing: node-c"
    status = msgspec.json.decode((await client.get("/mesh/status")).content, type=schemas.MeshStatus)
    assert status.peers_up == 1 and status.peers_expected == 2 and status.coords == []
    peers = msgspec.json.decode((await client.get("/mesh/peers")).content, type=schemas.MeshPeers)
    assert [p.node_id for p in peers.peers] == ["node-b"] and [m.node_id for m in peers.missing] == ["node-c"]
    routes = msgspec.json.decode((await client.get("/mesh/routes")).content, type=schemas.MeshRoutes)
    assert [(r.node_id, r.next_hop_node_id) for r in routes.routes] == [("node-b", "node-b"), ("node-c", "node-b")]


async def test_temporary_and_learned_key_hooks(client: AsyncTestClient) -> None:
    agent = agent_of(client)
    agent.record_snapshot(snapshot())
    gen = agent.generation
    agent.mark_temporary("node-b")
    assert agent.generation > gen
    peers = (await client.get("/mesh/peers")).json()
    assert peers["peers"][0]["temporary"] is True
    agent.unmark_temporary("node-b")
    assert (await client.get("/mesh/peers")).json()["peers"][0]["temporary"] is False


async def test_mesh_peers_always_says_admission(client: AsyncTestClient) -> None:
    agent_of(client).record_snapshot(snapshot())
    raw = (await client.get("/mesh/peers")).json()
    assert set(ADDED_LATER["MeshPeers"]) <= set(raw)
    assert isinstance(raw["admission"], str) and raw["admission"] and raw["refused"] == []
    # An older agent's reply (without them) still decodes, as x0dash reads it during a rolling upgrade.
    older = {k: v for k, v in raw.items() if k not in ADDED_LATER["MeshPeers"]}
    decoded = msgspec.json.decode(json.dumps(older), type=schemas.MeshPeers)
    assert decoded.refused == [] and decoded.admission == "not reported"


async def test_openapi_lists_routes_and_response_schemas(client: AsyncTestClient) -> None:
    r = await client.get("/schema/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    paths = spec["paths"]
    for path in ["/health", "/mesh/status", "/mesh/peers", "/mesh/routes", "/metrics", "/probe"]:
        assert path in paths, path
    components = spec["components"]["schemas"]

    def ref(path: str, code: str) -> str:
        schema = paths[path]["get"]["responses"][code]["content"]["application/json"]["schema"]
        return schema["$ref"].rsplit("/", 1)[-1]

    assert ref("/health", "200") == "Health" and ref("/health", "503") == "Health"
    for path, name in [
        ("/mesh/status", "MeshStatus"),
        ("/mesh/peers", "MeshPeers"),
        ("/mesh/routes", "MeshRoutes"),
    ]:
        assert ref(path, "200") == name
        assert ref(path, "503") == "ErrorBody"
    # Every documented schema has exactly the fields the payload structs encode.
    for name in [
        "Health",
        "HealthCheck",
        "YggdrasilHealth",
        "MeshStatus",
        "MeshPeers",
        "PeerView",
        "MissingPeer",
        "MeshRoutes",
        "RouteView",
        "ErrorBody",
    ]:
        struct = getattr(schemas, name)
        assert set(components[name]["properties"]) == set(struct.__struct_fields__), name
        # Fields added after the first release carry defaults so that x0dash can read older agents: the only
        # ones the schema may leave optional (the server always sends them: test_mesh_peers_always_says_admission).
        later = ADDED_LATER.get(name, set())
        assert set(components[name]["required"]) == set(struct.__struct_fields__) - later, name
    assert "text/plain" in next(iter(paths["/metrics"]["get"]["responses"]["200"]["content"]))


async def test_errors_are_json_with_status_and_detail(client: AsyncTestClient) -> None:
    r = await client.get("/no/such/path")
    assert r.status_code == 404 and r.json() == {"status_code": 404, "detail": "Not Found"}
    r = await client.post("/health")
    assert r.status_code == 405 and r.json()["status_code"] == 405
    r = await client.get("/probe/1", params={"since": "yesterday"})
    assert r.status_code == 400 and r.json()["status_code"] == 400
    assert "query parameter 'since'" in r.json()["detail"], r.json()
    r = await client.get("/probe/notanint")
    assert r.status_code in (400, 404) and set(r.json()) == {"status_code", "detail"}
    r = await client.post("/probe", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and set(r.json()) == {"status_code", "detail"}
    r = await client.post("/probe", json={"kind": "x", "duration_s": "long"})
    assert r.status_code == 400 and "duration_s" in r.json()["detail"], r.json()
    r = await client.post("/probe", json={"kind": "x"})
    assert r.status_code == 400 and "duration_s" in r.json()["detail"], r.json()
    r = await client.post("/probe", content=b"x" * (65 * 1024), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["status_code"] == 413
    r = await client.post("/probe", json={"kind": "ok", "duration_s": 5})
    assert r.status_code == 201 and r.json() == {"kind": "ok"}


async def test_request_durations_by_route_template(client: AsyncTestClient) -> None:
    agent_of(client).record_snapshot(snapshot())
    await client.get("/probe/7")
    await client.get("/probe/8")
    await client.get("/nowhere")
    await client.request("FROB", "/health")
    text = (await client.get("/metrics")).text
    assert 'x0_http_request_duration_seconds_count{method="GET",route="/probe/{item}",status="200"} 2.0' in text
    assert 'x0_http_request_duration_seconds_count{method="GET",route="unmatched",status="404"} 1.0' in text
    assert 'method="other"' in text and "FROB" not in text


async def test_extension_started_and_stopped_by_the_lifespan(tmp_path: Path) -> None:
    ext = ProbeExtension()
    settings = Settings.from_env({"NODE_ID": "node-a", "YGGDRASIL_ADMIN": f"unix://{tmp_path}/none.sock"})
    app = create_app(settings, extensions=[ext])
    async with AsyncTestClient(app) as c:
        assert ext.started_with is c.app.state.agent
        assert ext.started_with.monitor_alive  # background tasks run before extensions start
        assert (await c.get("/probe/1")).json() == {"item": 1, "since": 0.0}
    assert ext.stopped
