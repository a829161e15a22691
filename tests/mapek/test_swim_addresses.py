"""Where SWIM datagrams go and who sent one (agent.mapek.swim.addresses), without sockets."""

from __future__ import annotations

import json
from pathlib import Path

from agent.mapek.swim.addresses import AddressBook, address_for_key, normal_ip
from agent.members import parse_members

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "yggdrasil" / "0.4.7"


def test_address_for_key_matches_the_daemon() -> None:
    for name in ("a_getSelf.json", "b_getSelf.json", "c_getSelf.json"):
        me = json.loads((FIXTURES / name).read_text())["response"]
        assert address_for_key(me["key"]) == me["address"]
    assert address_for_key("zz") is None and address_for_key("ab" * 16) is None


def test_book_with_keys_uses_the_overlay_and_the_underlay_for_diagnosis() -> None:
    keys = [json.loads((FIXTURES / f"{x}_getSelf.json").read_text())["response"]["key"] for x in "abc"]
    doc = {
        "members": [
            {"node_id": n, "agent_url": f"http://10.9.0.{i + 1}:8080", "public_key": k}
            for i, (n, k) in enumerate(zip(["node-a", "node-b", "node-c"], keys, strict=True))
        ]
    }
    mesh = parse_members(json.dumps(doc).encode())
    book = AddressBook.build("node-a", mesh.members, lambda n: None, lambda h: h, overlay=True)
    key_b = keys[1]
    assert book.mesh["node-b"] == (address_for_key(key_b), 8080)
    assert book.underlay["node-b"] == ("10.9.0.2", 8080)
    assert book.has_underlay() == {"node-b", "node-c"}
    assert book.sender(("::ffff:10.9.0.2", 8080)) == ("node-b", "underlay")
    assert book.sender((address_for_key(key_b), 8080)) == ("node-b", "mesh")
    assert book.sender(("10.9.0.9", 8080)) is None and "node-a" not in book.mesh


def test_loopback_book_and_learning_an_unknown_overlay_address() -> None:
    doc = {"members": [{"node_id": n, "agent_url": f"http://127.0.0.1:{p}"} for n, p in (("a", 1), ("b", 2))]}
    mesh = parse_members(json.dumps(doc).encode())
    loop = AddressBook.build("a", mesh.members, lambda n: None, lambda h: h, overlay=False)
    assert loop.mesh["b"] == loop.underlay["b"] == ("127.0.0.1", 2) and loop.has_underlay() == set()
    assert loop.sender(("127.0.0.1", 2)) == ("b", "mesh")
    # With an overlay but no key known for b yet: the underlay carries the protocol until b's first datagram
    # over the overlay tells its address (only a Yggdrasil address is learned).
    book = AddressBook.build("a", mesh.members, lambda n: None, lambda h: h, overlay=True)
    assert book.fallback == {"b"} and book.sender_path("b", "underlay") == "mesh"
    assert not book.learn("b", ("10.1.1.1", 2))
    assert book.learn("b", ("201:5a97:faea:74cf:3896:97b2:6ceb:790d", 2))
    assert book.sender(("201:5a97:faea:74cf:3896:97b2:6ceb:790d", 2)) == ("b", "mesh")
    assert book.fallback == set() and not book.learn("b", ("201::1", 2))
    assert normal_ip("::ffff:127.0.0.1") == "127.0.0.1"
