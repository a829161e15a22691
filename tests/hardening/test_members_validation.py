"""Issue 11 item 5: members whose listen_uri cannot be dialled are reported in /health and never dialled.

A port outside 1-65535, an unknown scheme, a listener two members name (one of them possibly this node: its
daemon would dial itself) and a member carrying this node's own daemon key. The rest of the file keeps working.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from agent.members import MembersWatcher, listen_uri_problem, parse_members
from agent.peering import dial_targets
from agent.settings import Settings
from agent.state import AgentState
from agent.views import MeshContext, planned_status

KA, KE = "a" * 64, "e" * 64


def doc() -> dict:
    return {
        "mesh": "v",
        "members": [
            {"node_id": "node-a", "agent_url": "http://10.0.0.1:8080", "listen_uri": "tls://10.0.0.1:12345"},
            {"node_id": "node-b", "agent_url": "http://10.0.0.2:8080", "listen_uri": "tls://10.0.0.2:99999"},
            # node-c names node-a's listener: node-a would dial itself, the others would reach node-a.
            {"node_id": "node-c", "agent_url": "http://10.0.0.3:8080", "listen_uri": "TLS://10.0.0.1:12345/"},
            {"node_id": "node-d", "agent_url": "http://10.0.0.4:8080", "listen_uri": "gopher://10.0.0.4:1"},
            {"node_id": "node-e", "agent_url": "http://10.0.0.5:8080", "listen_uri": "tls://10.0.0.5:12345"},
            {
                "node_id": "node-f",
                "agent_url": "http://10.0.0.6:8080",
                "listen_uri": "tls://10.0.0.6:12345",
                "public_key": KA,  # node-a's own daemon key
            },
        ],
    }


def test_listen_uri_problems() -> None:
    assert listen_uri_problem("tls://10.0.0.1:12345") is None
    assert listen_uri_problem("tls://[200::1]:1?key=ab") is None
    assert listen_uri_problem("unix:///run/ygg.sock") is None
    assert listen_uri_problem("socks://127.0.0.1:9050/10.0.0.1:1") is None
    assert "port 1-65535" in (listen_uri_problem("tls://h:99999") or "")
    assert "port 1-65535" in (listen_uri_problem("tls://h:0") or "")
    assert "port 1-65535" in (listen_uri_problem("tls://h") or "")
    assert "port 1-65535" in (listen_uri_problem("tls://h:x") or "")
    assert "unknown scheme" in (listen_uri_problem("http://h:1") or "")
    assert "not a peer URI" in (listen_uri_problem("10.0.0.1:1") or "")
    assert "not a peer URI" in (listen_uri_problem("tls://h:1 x") or "")
    assert "no host" in (listen_uri_problem("tls://:1") or "")


def test_invalid_members_are_kept_but_never_dialled() -> None:
    m = parse_members(json.dumps(doc()).encode())
    assert m.ids == ["node-a", "node-b", "node-c", "node-d", "node-e", "node-f"]  # nothing lost
    assert set(m.invalid) == {"node-a", "node-b", "node-c", "node-d"}
    assert "port 1-65535" in m.invalid["node-b"] and "unknown scheme" in m.invalid["node-d"]
    assert "also the listener of node-c" in m.invalid["node-a"]
    assert m.by_id["node-b"].listen_uri is None and m.member_at("tls://10.0.0.1:12345") is None
    ctx = MeshContext(node_id="node-a", members=m, learned_keys={}, temporary=frozenset(), self_key=KA)
    # node-a dials b..f by the plan: only node-e is dialled; node-f carries node-a's own key.
    assert [t.node_id for t in dial_targets(ctx)] == ["node-e"]
    reasons = {s.node_id: s.reason for s in planned_status([], ctx)}
    assert reasons["node-b"].startswith("not dialled: listen_uri 'tls://10.0.0.2:99999' needs a port")
    assert "own daemon key" in reasons["node-f"] and reasons["node-e"] == "no link"


def test_health_names_invalid_members(tmp_path: Path) -> None:
    path = tmp_path / "members.json"
    path.write_text(json.dumps(doc()))
    state = AgentState(Settings(node_id="node-e", mesh_members=path))
    assert state.members.check() is True
    check = next(c for c in state.health()[0].checks if c.name == "members")
    assert check.ok is False
    assert check.detail.startswith("4 of 6 members from") and "are never dialled" in check.detail
    assert "node-b: listen_uri 'tls://10.0.0.2:99999' needs a port 1-65535" in check.detail
    assert state.health()[1] == 503
    # Fixed file: healthy again, same members.
    d = doc()
    for i, uri in enumerate(["tls://10.0.0.2:1", "tls://10.0.0.3:1", "tls://10.0.0.4:1"], start=1):
        d["members"][i]["listen_uri"] = uri
    d["members"][5].pop("public_key")
    path.write_text(json.dumps(d))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert state.members.check() is True
    state.record_members_change()  # what the monitor does after a changed file
    check = next(c for c in state.health()[0].checks if c.name == "members")
    assert check.ok is True, check.detail


def test_many_invalid_members_keep_the_detail_short(tmp_path: Path) -> None:
    members = [{"node_id": "node-a", "agent_url": "http://h:1", "listen_uri": "tls://h:1"}]
    members += [
        {"node_id": f"x-{i}", "agent_url": "http://h:1", "listen_uri": f"tls://h{i}:70000"} for i in range(40)
    ]
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"members": members}))
    w = MembersWatcher(path)
    assert w.check() is True and len(w.members.invalid) == 40
    state = AgentState(Settings(node_id="node-a", mesh_members=path))
    state.members = w
    check = next(c for c in state.health()[0].checks if c.name == "members")
    assert check.detail.endswith("; and 35 more") and len(check.detail) < 1000
