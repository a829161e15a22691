"""Auth and validation of the drills API on the real agent app (in-process, in the test's own namespace).

Every refused request must leave nothing behind: no drill listed, no nft table created.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar.testing import TestClient

from agent.api.app import create_app
from agent.drills import faults
from agent.settings import Settings

TOKEN = "s3cret-token"


def _members(tmp_path: Path) -> Path:
    path = tmp_path / "members.json"
    path.write_text(
        json.dumps(
            {
                "members": [
                    {
                        "node_id": "node-a",
                        "agent_url": "http://127.0.0.1:18081",
                        "listen_uri": "tls://127.0.0.1:1",
                    },
                    {
                        "node_id": "node-c",
                        "agent_url": "http://127.0.0.1:18083",
                        "listen_uri": "tls://127.0.0.1:2",
                    },
                ]
            }
        )
    )
    return path


def _client(tmp_path: Path, token: str | None) -> TestClient:
    settings = Settings(
        node_id="node-c",
        api_token=token,
        mesh_members=_members(tmp_path),
        yggdrasil_admin=f"unix://{tmp_path}/no-daemon.sock",
        mapek_enabled=False,
        # The per-node drill API; the mesh-wide lease (Raft) is tested on real meshes in tests/consensus.
        raft_enabled=False,
    )
    return TestClient(create_app(settings))


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with _client(tmp_path, TOKEN) as c:
        yield c


def _nothing_happened(c: TestClient) -> None:
    body = c.get("/drills").json()
    assert body == {"active": [], "past": []}
    nft = faults.Nft()
    try:
        names = [name for _, name in nft.tables()]
    except (faults.NftError, faults.FaultUnavailable):
        return  # no nft or no privileges here: nothing could have been applied either
    assert faults.DRILL_TABLE not in names


AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer"}],
    ids=["missing", "wrong", "not-bearer", "empty"],
)
def test_missing_or_wrong_token_is_401_and_nothing_happens(client: TestClient, headers: dict[str, str]) -> None:
    r = client.post("/drills", json={"kind": "blackhole", "duration_s": 5}, headers=headers)
    assert r.status_code == 401, r.text
    assert r.json()["status_code"] == 401 and r.headers["www-authenticate"] == "Bearer"
    # The guard runs before the body is read: a malformed body without a token is still 401.
    assert client.post("/drills", content=b"{nope", headers=headers).status_code == 401
    assert client.delete("/drills/drl-x", headers=headers).status_code == 401
    _nothing_happened(client)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"kind": "meteor", "duration_s": 5}', "kind"),
        (b'{"kind": "blackhole", "duration_s": 0}', "duration_s"),
        (b'{"kind": "blackhole", "duration_s": 601}', "duration_s"),
        (b'{"kind": "blackhole", "duration_s": null}', "duration_s"),
        (b'{"kind": "blackhole"}', "duration_s"),
        (b'{"duration_s": 5}', "kind"),
        (b'{"kind": "blackhole", "duration_s": 5, "extra": 1}', "extra"),
        (b"[1, 2]", "object"),
        (b"not json", "JSON"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(client: TestClient, body: bytes, field: str) -> None:
    r = client.post("/drills", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert field in r.json()["detail"]
    _nothing_happened(client)


def test_fault_that_cannot_be_applied_is_409_with_what_is_missing(client: TestClient) -> None:
    # This test process shares the host's namespace (or lacks privileges): a network drill must be refused.
    r = client.post("/drills", json={"kind": "partition", "duration_s": 5}, headers=AUTH)
    assert r.status_code == 409, r.text
    missing = faults.missing_for_net_faults(faults.Nft())
    assert missing, "this test expects to run where network drills are refused"
    assert missing[0] in r.json()["detail"]
    r = client.post("/drills", json={"kind": "kill-daemon", "duration_s": 5}, headers=AUTH)
    assert r.status_code == 409 and "YGGDRASIL_CONFIG" in r.json()["detail"]
    assert client.delete("/drills/drl-unknown", headers=AUTH).status_code == 404
    _nothing_happened(client)


def test_no_token_configured_refuses_mutations_and_says_how(tmp_path: Path) -> None:
    with _client(tmp_path, None) as c:
        for r in (
            c.post("/drills", json={"kind": "blackhole", "duration_s": 5}),
            c.post("/drills", json={"kind": "blackhole", "duration_s": 5}, headers={"Authorization": "Bearer x"}),
            c.delete("/drills/drl-x", headers={"Authorization": "Bearer x"}),
        ):
            assert r.status_code == 403
            assert "X0_API_TOKEN" in r.json()["detail"]
        assert c.get("/drills").status_code == 200  # reading stays open
        _nothing_happened(c)


def test_mapek_read_api_when_disabled(client: TestClient) -> None:
    body = client.get("/mapek").json()
    assert body["enabled"] is False and body["state"] == "stopped" and body["active_incidents"] == []
    assert client.get("/mapek/incidents", params={"since": 0}).json() == {"incidents": []}
    assert client.get("/mapek/actions").json() == {"actions": []}
    r = client.get("/mapek/incidents", params={"since": "yesterday"})
    assert r.status_code == 400 and "since" in r.json()["detail"]
    assert client.get("/mapek/actions", params={"since": -1}).status_code == 400
