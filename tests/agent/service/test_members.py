"""Members file: parsing per contracts §2, and the watcher that keeps the last good copy."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent.members import MembersError, MembersWatcher, parse_members, peer_uri, strip_query

KEY_A = "a" * 64
KEY_B = "B" * 64  # upper case in the file: keys are compared lower-cased


def doc(**extra: object) -> dict:
    base = {
        "mesh": "m1",
        "members": [
            {
                "node_id": "node-a",
                "agent_url": "http://10.0.0.1:8080",
                "listen_uri": "tls://10.0.0.1:9000",
                "public_key": KEY_A,
                "address": "200:0:0:0:0:0:0:1",
            },
            {
                "node_id": "node-b",
                "agent_url": "http://10.0.0.2:8081",
                "listen_uri": "tls://10.0.0.2:9000?sni=x",
                "public_key": KEY_B,
            },
            {"node_id": "node-c", "agent_url": "http://10.0.0.3:8080"},
        ],
    }
    base.update(extra)
    return base


def test_parse_derives_links_keys_and_overlay_url() -> None:
    m = parse_members(json.dumps(doc()).encode())
    assert m.mesh == "m1" and m.ids == ["node-a", "node-b", "node-c"]
    assert m.links == (("node-a", "node-b"), ("node-a", "node-c"), ("node-b", "node-c"))
    a = m.by_id["node-a"]
    assert a.address == "200::1"  # normalized
    assert a.overlay_url == "http://[200::1]:8080"  # derived from address + agent_url port
    assert m.by_id["node-c"].overlay_url is None
    assert m.member_for(KEY_B.lower()).node_id == "node-b"
    assert m.member_for(None, "200:0::1").node_id == "node-a"
    assert m.neighbours("node-b") == ["node-a", "node-c"] and m.dials("node-b") == ["node-c"]


def test_explicit_links_keep_their_dialer() -> None:
    m = parse_members(json.dumps(doc(links=[["node-c", "node-a"]])).encode())
    assert m.links == (("node-c", "node-a"),)
    assert m.dials("node-c") == ["node-a"] and m.dials("node-a") == []


def test_peer_uri_pins_the_key() -> None:
    m = parse_members(json.dumps(doc()).encode())
    assert peer_uri(m.by_id["node-a"]) == f"tls://10.0.0.1:9000?key={KEY_A}"
    assert peer_uri(m.by_id["node-b"]) == f"tls://10.0.0.2:9000?sni=x&key={KEY_B.lower()}"
    assert peer_uri(m.by_id["node-c"]) is None
    assert strip_query("tls://h:1/?key=x") == "tls://h:1"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(members="x"), "invalid members file"),
        (lambda d: d["members"][0].update(node_id="Bad Id"), "node_id"),
        (lambda d: d["members"].append(dict(d["members"][0])), "listed twice"),
        (lambda d: d["members"][0].update(agent_url="ftp://x"), "agent_url"),
        (lambda d: d["members"][0].update(agent_url="http://x:99999"), "agent_url"),
        (lambda d: d["members"][0].update(public_key="zz"), "public_key"),
        (lambda d: d["members"][1].update(public_key=KEY_A), "share a public_key"),
        (lambda d: d["members"][0].update(address="10.0.0.1"), "not an IPv6"),
        (lambda d: d.update(links=[["node-a", "node-z"]]), "unknown member"),
        (lambda d: d["members"][0].pop("agent_url"), "agent_url"),
    ],
)
def test_invalid_files_are_refused_with_a_reason(mutate, message: str) -> None:
    d = doc()
    mutate(d)
    with pytest.raises(MembersError, match=message):
        parse_members(json.dumps(d).encode())


def test_a_listen_uri_that_cannot_be_dialled_costs_only_that_member() -> None:
    d = doc()
    d["members"][0]["listen_uri"] = "10.0.0.1:1"  # no scheme (issue 11 item 5: reported, never dialled)
    m = parse_members(json.dumps(d).encode())
    assert m.ids == ["node-a", "node-b", "node-c"] and m.by_id["node-a"].listen_uri is None
    assert m.invalid == {"node-a": "listen_uri '10.0.0.1:1' is not a peer URI like tls://host:port"}
    assert peer_uri(m.by_id["node-a"]) is None


def test_not_json() -> None:
    with pytest.raises(MembersError, match="not valid JSON"):
        parse_members(b"{nope")


def _write(path: Path, data: bytes, bump: int) -> None:
    path.write_bytes(data)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump * 1_000_000_000))


def test_watcher_rereads_on_change_and_keeps_previous_on_bad_write(tmp_path: Path) -> None:
    path = tmp_path / "members.json"
    w = MembersWatcher(path)
    assert w.check() is False and "not found" in (w.error or "")
    _write(path, json.dumps(doc()).encode(), 1)
    assert w.check() is True and w.error is None and w.generation == 1
    assert w.check() is False  # unchanged file: no re-read
    _write(path, b'{"members": [', 2)
    assert w.check() is False
    assert "not valid JSON" in (w.error or "") and len(w.members.members) == 3  # previous members kept
    d = doc()
    d["members"].pop()
    _write(path, json.dumps(d).encode(), 3)
    assert w.check() is True and w.error is None and w.members.ids == ["node-a", "node-b"] and w.generation == 2


def test_watcher_without_a_file_is_inert() -> None:
    w = MembersWatcher(None)
    assert w.check() is False and w.error is None and w.members.members == ()


def test_topology_plans_the_links_when_the_file_has_none() -> None:
    ring = parse_members(json.dumps(doc(topology="chain")).encode())
    assert ring.links == (("node-a", "node-b"), ("node-b", "node-c"))
    ids = [f"node-{c}" for c in "abcdefghij"]
    many = {"members": [{"node_id": n, "agent_url": f"http://10.0.0.{i + 1}:8080"} for i, n in enumerate(ids)]}
    auto = parse_members(json.dumps(many).encode())  # no topology: auto, the expander above 8 members
    assert max(len(auto.neighbours(i)) for i in auto.ids) <= 4 and len(auto.links) < 45
    with pytest.raises(MembersError, match="topology 'star' is not one of"):
        parse_members(json.dumps(doc(topology="star")).encode())
