"""normalize.py on real 0.4.7 captures and reference-built 0.5 replies (pure: no daemon, no socket)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.yggdrasil import normalize
from agent.yggdrasil.errors import AdminCommandError

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "yggdrasil"
V047 = FIXTURES / "0.4.7"
V05 = FIXTURES / "0.5"


def envelope(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def response(path: Path) -> Any:
    env = envelope(path)
    assert env["status"] == "success", env
    return env["response"]


@pytest.fixture(scope="module")
def meta() -> dict[str, Any]:
    return json.loads((V047 / "meta.json").read_text())


def node_of(meta: dict[str, Any], key: str) -> str:
    return next(name for name, node in meta["nodes"].items() if node["key"] == key)


# --- 0.4.7, captured -------------------------------------------------------------------------------------------


def test_047_list_detects_04() -> None:
    names = normalize.command_names(response(V047 / "list.json"))
    assert {"getdht", "getpeers", "addpeer", "removepeer"} <= names
    assert "gettree" not in names
    assert normalize.version_from_commands(names) == "0.4"


@pytest.mark.parametrize("node", ["a", "b", "c"])
def test_047_self_matches_identity(node: str, meta: dict[str, Any]) -> None:
    info = normalize.self_info(response(V047 / f"{node}_getSelf.json"))
    assert info.key == meta["nodes"][node]["key"]
    assert info.address == meta["nodes"][node]["address"]
    assert info.subnet == meta["nodes"][node]["subnet"]
    assert isinstance(info.coords, list)
    assert info.routing_entries is None
    assert info.build_version == "unknown"  # Debian build: why version detection uses `list`


def test_047_peers_chain(meta: dict[str, Any]) -> None:
    by_node = {n: normalize.peers(response(V047 / f"{n}_getPeers.json"), "0.4") for n in ("a", "b", "c")}
    # a -tls-> b -tcp-> c: b has two links, the ends one each.
    assert {n: sorted(node_of(meta, p.key) for p in links) for n, links in by_node.items()} == {
        "a": ["b"],
        "b": ["a", "c"],
        "c": ["b"],
    }
    for links in by_node.values():
        for link in links:
            assert link.up is True  # 0.4 lists only connected links
            assert link.inbound is None  # ... and never says which side dialled
            assert link.address == meta["nodes"][node_of(meta, link.key)]["address"]
            assert link.remote is not None and link.remote.startswith(("tls://127.0.0.1:", "tcp://127.0.0.1:"))
            assert isinstance(link.port, int) and link.port > 0
            assert link.bytes_recvd and link.bytes_sent and link.bytes_recvd > 0
            assert link.uptime_s is not None and link.uptime_s > 0
            assert link.latency_ms is None and link.cost is None and link.last_error is None
    b_links = {node_of(meta, p.key): p for p in by_node["b"]}
    assert b_links["a"].remote.startswith("tls://")  # a dialled b's tls listener
    assert b_links["c"].remote.startswith("tcp://")  # b dialled c's tcp listener


def test_047_path_next_hop_is_the_middle_peer(meta: dict[str, Any]) -> None:
    """a reaches c through b: the first port of a's path to c is a's local port of the b link."""
    for src, dst in (("a", "c"), ("c", "a")):
        peers = {
            p.port: node_of(meta, p.key) for p in normalize.peers(response(V047 / f"{src}_getPeers.json"), "0.4")
        }
        paths = normalize.paths(response(V047 / f"{src}_getPaths.json"), "0.4")
        to_dst = [r for r in paths if r.key == meta["nodes"][dst]["key"]]
        assert len(to_dst) == 1, paths
        route = to_dst[0]
        assert route.kind == "path"
        assert route.path is not None and route.path[-1] == 0 and len(route.path) == 3  # two hops, then "arrived"
        assert peers[route.next_hop_port] == "b"


def test_047_dht_entries_are_known_nodes(meta: dict[str, Any]) -> None:
    keys = {n["key"] for n in meta["nodes"].values()}
    for node in ("a", "b", "c"):
        routes = normalize.dht(response(V047 / f"{node}_getDHT.json"))
        ports = {p.port for p in normalize.peers(response(V047 / f"{node}_getPeers.json"), "0.4")}
        for route in routes:
            assert route.kind == "dht" and route.key in keys
            if route.key == meta["nodes"][node]["key"]:
                assert route.next_hop_port is None  # 0.4 lists the node itself, on port 0
            else:
                assert route.next_hop_port in ports


def test_047_session_a_to_c(meta: dict[str, Any]) -> None:
    sessions = normalize.sessions(response(V047 / "a_getSessions.json"))
    assert [s.key for s in sessions] == [meta["nodes"]["c"]["key"]]
    assert sessions[0].kind == "session" and sessions[0].bytes_recvd and sessions[0].uptime_s is not None
    assert normalize.sessions(response(V047 / "b_getSessions.json")) == []


@pytest.mark.parametrize(
    ("fixture", "kind"),
    [
        (V047 / "error_already_configured.json", "already_configured"),
        (V047 / "error_not_configured.json", "not_configured"),
        (V047 / "error_unknown_scheme.json", "unknown_scheme"),
        (V047 / "error_unknown_action.json", "unknown_command"),
        (V047 / "error_wrong_argument_type.json", "other"),
        (V047 / "error_malformed_json.json", "other"),
        (V047 / "error_no_request.json", "other"),
        (V05 / "0.5.14_error_already_configured.json", "already_configured"),
        (V05 / "0.5.14_error_not_configured.json", "not_configured"),
        (V05 / "0.5.14_error_unknown_scheme.json", "unknown_scheme"),
        (V05 / "0.5.14_error_unknown_action.json", "unknown_command"),
        (V05 / "0.5.14_error_timed_out.json", "timed_out"),
    ],
    ids=lambda v: v.name if isinstance(v, Path) else v,
)
def test_error_kinds_across_versions(fixture: Path, kind: str) -> None:
    """0.4.7 capitalises some messages and words others differently from 0.5: one kind per meaning."""
    env = envelope(fixture)
    assert env["status"] == "error" and env["response"] is None
    # 0.4.7 never fills `request`; 0.5 echoes the request.
    assert env["request"] is None if fixture.parent == V047 else env["request"]["keepalive"] is True
    assert AdminCommandError("ep", "x", env["error"]).kind == kind


# --- 0.5, built from the reference -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.5.5", "0.5.14"])
def test_05_list_detects_05(version: str) -> None:
    names = normalize.command_names(response(V05 / f"{version}_list.json"))
    assert "gettree" in names and "getdht" not in names
    assert normalize.version_from_commands(names) == "0.5"


def test_05_self_has_routing_entries() -> None:
    info = normalize.self_info(response(V05 / "0.5.14_getSelf.json"))
    assert info.routing_entries == 2 and info.coords is None


@pytest.mark.parametrize(
    ("version", "latency", "cost", "rates"),
    [
        ("0.5.5", None, None, None),
        ("0.5.9", 1.84321, 2, None),  # latency_ms holds nanoseconds despite its name
        ("0.5.14", 1.84321, 2, (812, 640)),
    ],
)
def test_05_peers_per_version(
    version: str, latency: float | None, cost: int | None, rates: tuple[int, int] | None
) -> None:
    out, inbound, down = normalize.peers(response(V05 / f"{version}_getPeers.json"), "0.5")
    assert (out.up, out.inbound, inbound.up, inbound.inbound) == (True, False, True, True)
    assert out.latency_ms == (pytest.approx(latency) if latency is not None else None)
    assert out.cost == cost
    assert (out.rate_recvd, out.rate_sent) == (rates if rates else (None, None))
    assert inbound.latency_ms == (pytest.approx(0.402117) if latency is not None else None)
    assert out.uptime_s == pytest.approx(812.412553917) and out.bytes_recvd == 52340 and out.port == 1
    # Down link: key "" (not omitted), no address, the error and how long ago it happened.
    assert (down.up, down.key, down.address, down.uptime_s, down.bytes_recvd) == (False, "", None, None, None)
    assert down.remote == "tls://192.0.2.7:14000"
    assert down.last_error is not None and "connection refused" in down.last_error
    assert down.last_error_age_s == pytest.approx(4.5)


def test_05_up_link_keeps_old_error_age() -> None:
    out = normalize.peers(response(V05 / "0.5.14_getPeers.json"), "0.5")[0]
    assert out.up and out.last_error is not None and out.last_error_age_s == pytest.approx(830.0)


def test_05_tree_paths_sessions() -> None:
    tree = normalize.tree(response(V05 / "0.5.14_getTree.json"))
    root = [t for t in tree if t.parent_key == t.key]
    assert len(root) == 1 and root[0].key.startswith("7e6d")
    assert all(t.kind == "tree" and t.next_hop_port is None for t in tree)
    paths = normalize.paths(response(V05 / "0.5.14_getPaths.json"), "0.5")
    # 0.5 paths are tree paths from the root: they name no local port, so no next hop is claimed.
    assert [(p.path, p.next_hop_port) for p in paths] == [([2], None)]
    sessions = normalize.sessions(response(V05 / "0.5.14_getSessions.json"))
    assert sessions[0].uptime_s == 41.5 and sessions[0].bytes_sent == 3981


# --- tolerance and rejection -----------------------------------------------------------------------------------


def test_missing_optional_fields_are_none() -> None:
    (link,) = normalize.peers({"peers": [{"key": "ab"}]}, "0.4")
    assert link.up and link.key == "ab" and link.remote is None and link.port is None and link.uptime_s is None
    (link5,) = normalize.peers({"peers": [{"up": False}]}, "0.5")
    assert link5.key == "" and not link5.up and link5.last_error_age_s is None
    assert normalize.peers({"peers": None}, "0.4") == []  # Go nil slice
    assert normalize.sessions({"sessions": []}) == []
    info = normalize.self_info({"key": "k", "address": "200::1", "subnet": "300::/64"})
    assert info.coords is None and info.build_name is None


@pytest.mark.parametrize(
    ("fn", "payload", "needle"),
    [
        (lambda r: normalize.peers(r, "0.4"), {"peers": "x"}, "expected a list"),
        (lambda r: normalize.peers(r, "0.4"), {}, "missing field 'peers'"),
        (lambda r: normalize.peers(r, "0.4"), ["peers"], "expected an object"),
        (lambda r: normalize.peers(r, "0.4"), {"peers": [{"port": 1}]}, "'key'"),
        (lambda r: normalize.peers(r, "0.4"), {"peers": [{"key": "k", "port": "1"}]}, "'port'"),
        (lambda r: normalize.peers(r, "0.4"), {"peers": [{"key": "k", "uptime": True}]}, "'uptime'"),
        (lambda r: normalize.peers(r, "0.5"), {"peers": [{"key": "k"}]}, "'up'"),
        (lambda r: normalize.peers(r, "0.5"), {"peers": [{"up": True, "key": ""}]}, "no key"),
        (lambda r: normalize.peers(r, "0.5"), {"peers": [{"up": "yes", "key": "k"}]}, "boolean"),
        (lambda r: normalize.peers(r, "0.5"), {"peers": [{"up": True, "key": "k", "latency": "1ms"}]}, "latency"),
        (lambda r: normalize.peers(r, "0.6"), {"peers": []}, "unknown API version"),
        (normalize.self_info, {"key": "k", "subnet": "s"}, "'address'"),
        (normalize.self_info, {"key": "k", "address": "a", "subnet": "s", "coords": [1, "x"]}, "'coords'"),
        (normalize.dht, {"dht": [{"key": "k"}]}, "'address'"),
        (normalize.tree, {"dht": []}, "missing field 'tree'"),
        (lambda r: normalize.paths(r, "0.4"), {"paths": [{"key": "k", "address": "a", "path": 1}]}, "'path'"),
        (normalize.sessions, {"sessions": [None]}, "expected an object"),
        (normalize.command_names, {"list": [{"description": "x"}]}, "'command'"),
    ],
)
def test_structurally_wrong_replies_raise_value_error(fn: Any, payload: Any, needle: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        fn(payload)
    assert needle in str(info.value)


def test_unknown_api_has_no_version() -> None:
    with pytest.raises(ValueError, match="neither getdht"):
        normalize.version_from_commands({"list", "getself"})
