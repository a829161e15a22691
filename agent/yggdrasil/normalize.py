"""Raw admin-socket payloads -> version-independent models. Pure functions, no I/O.

Each function takes the `response` object of one reply (the envelope is checked by the client) and the API
version it came from. Shapes and units follow shared/reference/yggdrasil.md §1.5:
- 0.4 `getPeers` lists only connected links, so every entry is up and `inbound` is unknown;
- 0.5 lists down links too (`up: false`, `key: ""`), `latency` (0.5.12+) / `latency_ms` (0.5.6-0.5.11) are
  nanoseconds despite the name, `last_error_time` is a nanosecond duration since the error.

A structurally wrong reply (missing required field, wrong type) raises `ValueError` naming the field; the client
turns it into `AdminProtocolError`. Missing optional fields become `None`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from agent.yggdrasil.models import ApiVersion, PeerLink, RouteEntry, SelfInfo

_NS_PER_MS = 1_000_000
_NS_PER_S = 1_000_000_000


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _list(payload: dict[str, Any], field: str, where: str) -> list[Any]:
    # An empty table may come back as null (Go nil slice) on some builds: treat it as empty.
    value = payload.get(field)
    if value is None:
        if field not in payload:
            raise ValueError(f"{where}: missing field {field!r}")
        return []
    if not isinstance(value, list):
        raise ValueError(f"{where}: field {field!r} is {type(value).__name__}, expected a list")
    return value


def _str(entry: dict[str, Any], field: str, where: str) -> str:
    value = entry.get(field)
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {field!r} missing or not a string")
    return value


def _opt(entry: dict[str, Any], field: str, where: str, expected: str) -> Any:
    """The field's value or None when absent/null; ValueError when it is not of the `expected` JSON type."""
    value = entry.get(field)
    if value is None:
        return None
    # bool is an int subclass in Python: a bool where a number is expected means the reply is not what we think.
    ok = {
        "a string": isinstance(value, str),
        "a number": isinstance(value, int | float) and not isinstance(value, bool),
        "a boolean": isinstance(value, bool),
    }[expected]
    if not ok:
        raise ValueError(f"{where}: field {field!r} is {type(value).__name__}, expected {expected}")
    return value


def _opt_str(entry: dict[str, Any], field: str, where: str) -> str | None:
    return _opt(entry, field, where, "a string")


def _opt_int(entry: dict[str, Any], field: str, where: str) -> int | None:
    value = _opt(entry, field, where, "a number")
    return None if value is None else int(value)


def _opt_float(entry: dict[str, Any], field: str, where: str) -> float | None:
    value = _opt(entry, field, where, "a number")
    return None if value is None else float(value)


def _opt_bool(entry: dict[str, Any], field: str, where: str) -> bool | None:
    return _opt(entry, field, where, "a boolean")


def _opt_ports(entry: dict[str, Any], field: str, where: str) -> list[int] | None:
    value = entry.get(field)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in value):
        raise ValueError(f"{where}: field {field!r} is not a list of integers")
    return list(value)


def _check_version(version: str) -> None:
    if version not in ("0.4", "0.5"):
        raise ValueError(f"unknown API version {version!r}")


def command_names(response: Any) -> set[str]:
    """`list` reply -> lower-case command names (0.4 and 0.5 both return `{"list": [{"command": ...}]}`)."""
    payload = _obj(response, "list")
    names: set[str] = set()
    for i, item in enumerate(_list(payload, "list", "list")):
        # Tolerate a plain list of names too: cheap, and older builds printed that.
        if isinstance(item, str):
            names.add(item.lower())
        else:
            names.add(_str(_obj(item, f"list[{i}]"), "command", f"list[{i}]").lower())
    return names


def version_from_commands(names: set[str]) -> ApiVersion:
    """Tell 0.4 from 0.5 by the routing-table command each exposes (reference §1.6)."""
    lowered = {n.lower() for n in names}
    if "getdht" in lowered:
        return "0.4"
    if "gettree" in lowered:
        return "0.5"
    raise ValueError("list: neither getdht (0.4) nor gettree (0.5) present; unknown admin API")


def self_info(response: Any) -> SelfInfo:
    where = "getSelf"
    payload = _obj(response, where)
    return SelfInfo(
        key=_str(payload, "key", where),
        address=_str(payload, "address", where),
        subnet=_str(payload, "subnet", where),
        build_name=_opt_str(payload, "build_name", where),
        build_version=_opt_str(payload, "build_version", where),
        coords=_opt_ports(payload, "coords", where),
        routing_entries=_opt_int(payload, "routing_entries", where),
    )


def _link_fields(entry: dict[str, Any], where: str) -> dict[str, Any]:
    """Fields both versions report the same way (0.5 omits them on a down link)."""
    return {
        "address": _opt_str(entry, "address", where) or None,
        "remote": _opt_str(entry, "remote", where) or None,
        "port": _opt_int(entry, "port", where),
        "priority": _opt_int(entry, "priority", where),
        "bytes_recvd": _opt_int(entry, "bytes_recvd", where),
        "bytes_sent": _opt_int(entry, "bytes_sent", where),
        "uptime_s": _opt_float(entry, "uptime", where),
    }


def _peer_04(entry: dict[str, Any], where: str) -> PeerLink:
    return PeerLink(
        key=_str(entry, "key", where),
        up=True,  # 0.4 lists connected links only
        inbound=None,  # ... and does not say who dialled
        coords=_opt_ports(entry, "coords", where),
        **_link_fields(entry, where),
    )


def _peer_05(entry: dict[str, Any], where: str) -> PeerLink:
    up = _opt_bool(entry, "up", where)
    if up is None:
        raise ValueError(f"{where}: field 'up' missing (0.5 getPeers always has it)")
    # `key` has no omitempty in 0.5, but be lenient: a down link without it is still a down link.
    key = _opt_str(entry, "key", where) or ""
    if up and not key:
        raise ValueError(f"{where}: link is up but has no key")
    latency_ns = _opt_float(entry, "latency", where)
    if latency_ns is None:
        latency_ns = _opt_float(entry, "latency_ms", where)  # 0.5.6-0.5.11: same nanoseconds, misleading name
    error_ns = _opt_float(entry, "last_error_time", where)
    last_error = _opt_str(entry, "last_error", where) or None
    return PeerLink(
        key=key,
        up=up,
        inbound=_opt_bool(entry, "inbound", where),
        cost=_opt_int(entry, "cost", where),
        latency_ms=None if latency_ns is None else latency_ns / _NS_PER_MS,
        rate_recvd=_opt_int(entry, "rate_recvd", where),
        rate_sent=_opt_int(entry, "rate_sent", where),
        last_error=last_error,
        last_error_age_s=None if error_ns is None or last_error is None else error_ns / _NS_PER_S,
        **_link_fields(entry, where),
    )


def _rows(response: Any, command: str, field: str) -> Iterator[tuple[dict[str, Any], str]]:
    """The entries of a `{field: [ {...}, ... ]}` reply, each with its location for error messages."""
    payload = _obj(response, command)
    for i, raw in enumerate(_list(payload, field, command)):
        where = f"{command}.{field}[{i}]"
        yield _obj(raw, where), where


def peers(response: Any, version: ApiVersion) -> list[PeerLink]:
    _check_version(version)
    convert = _peer_04 if version == "0.4" else _peer_05
    return [convert(entry, where) for entry, where in _rows(response, "getPeers", "peers")]


def _first_hop(path: list[int] | None) -> int | None:
    # Port 0 is the node itself in 0.4 switch paths: it names no peer.
    if path and path[0] != 0:
        return path[0]
    return None


def _dht_entry(entry: dict[str, Any], where: str) -> RouteEntry:
    port = _opt_int(entry, "port", where)
    return RouteEntry(
        kind="dht",
        key=_str(entry, "key", where),
        address=_str(entry, "address", where),
        next_hop_port=port if port else None,
    )


def dht(response: Any) -> list[RouteEntry]:
    """0.4 `getDHT`: `port` is the local port of the peer the entry came through (ironwood `dinfo.prev`);
    0 = the node itself, which a 0.4 DHT may list."""
    return [_dht_entry(entry, where) for entry, where in _rows(response, "getDHT", "dht")]


def tree(response: Any) -> list[RouteEntry]:
    """0.5 `getTree`: the spanning tree; `parent` is a key (the root is its own parent), no port."""
    return [
        RouteEntry(
            kind="tree",
            key=_str(entry, "key", where),
            address=_str(entry, "address", where),
            parent_key=_opt_str(entry, "parent", where),
        )
        for entry, where in _rows(response, "getTree", "tree")
    ]


def _path_entry(entry: dict[str, Any], where: str, version: ApiVersion) -> RouteEntry:
    path = _opt_ports(entry, "path", where)
    return RouteEntry(
        kind="path",
        key=_str(entry, "key", where),
        address=_str(entry, "address", where),
        path=path,
        next_hop_port=_first_hop(path) if version == "0.4" else None,
    )


def paths(response: Any, version: ApiVersion) -> list[RouteEntry]:
    """`getPaths`. In 0.4 `path` is the source route from this node (observed `[1, 1, 0]` to a node two hops
    away: our port 1, the middle node's port 1, 0 = arrived), so `path[0]` is the local port of the next hop.
    In 0.5 it is the destination's coordinates from the root (ironwood pathfinder: "Path from root to source,
    aka coords"), which name no local port: no next hop is derived."""
    _check_version(version)
    return [_path_entry(entry, where, version) for entry, where in _rows(response, "getPaths", "paths")]


def sessions(response: Any) -> list[RouteEntry]:
    return [
        RouteEntry(
            kind="session",
            key=_str(entry, "key", where),
            address=_str(entry, "address", where),
            bytes_recvd=_opt_int(entry, "bytes_recvd", where),
            bytes_sent=_opt_int(entry, "bytes_sent", where),
            uptime_s=_opt_float(entry, "uptime", where),
        )
        for entry, where in _rows(response, "getSessions", "sessions")
    ]
