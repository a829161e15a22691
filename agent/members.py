"""The members file (docs/contracts.md §2): parsing, key/URI matching, and re-reading it when it changes.

Parsing is pure (`parse_members`); `MembersWatcher` adds the file I/O and keeps the last good copy, so a bad
write never takes members away from a running agent.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import msgspec

from agent import topology
from agent.settings import NODE_ID_RE


class MembersError(ValueError):
    """The members file is missing, unreadable or does not follow contracts §2."""


class Member(msgspec.Struct, frozen=True, kw_only=True):
    node_id: str
    agent_url: str
    overlay_url: str | None = None
    listen_uri: str | None = None
    public_key: str | None = None
    address: str | None = None
    api_version: str | None = None
    # The machine it runs on (Nomad node id): Raft voters are spread across hosts (contracts §2, §7).
    host: str | None = None
    # host:port of its Raft listener; default from `address` or `agent_url` and X0_RAFT_PORT (agent.consensus).
    raft_address: str | None = None


class MembersFile(msgspec.Struct, frozen=True, kw_only=True):
    mesh: str | None = None
    members: list[Member] = []
    # Raw as written; None when the file leaves the plan to `topology.plan_links(ids, topology)`.
    links: list[list[str]] | None = None
    # The planned topology when `links` is absent: auto (full up to 8 members, expander above), full, ring,
    # chain or expander (agent.topology).
    topology: str = "auto"


class Members(msgspec.Struct, frozen=True, kw_only=True):
    """A validated members file with its planned links resolved and lookup tables built once.

    Every lookup the agent makes per refresh (neighbours, dials, the member behind a key, an address or a dialled
    URI) is a dict access here: the tables are built once per file, in O(members + links), so a refresh never
    scans the link list once per neighbour (issue 11 item 1: 1.6 s per refresh at 500 members).
    """

    mesh: str | None
    members: tuple[Member, ...]
    links: tuple[topology.Link, ...]
    by_id: dict[str, Member]
    by_key: dict[str, Member]
    by_address: dict[str, Member]
    # strip_query(listen_uri) -> member, for valid listen URIs only.
    by_listen: dict[str, Member] = {}
    # node id -> planned peers (either side) / members it dials, in link order.
    adjacent: dict[str, tuple[str, ...]] = {}
    dialled: dict[str, tuple[str, ...]] = {}
    # node id -> members its failure detector probes every interval (topology.watch_sets).
    watching: dict[str, tuple[str, ...]] = {}
    # node id -> why its listen_uri is not used (never dialled, reported in /health); the rest of the file works.
    invalid: dict[str, str] = {}

    @property
    def ids(self) -> list[str]:
        return [m.node_id for m in self.members]

    def neighbours(self, node_id: str) -> list[str]:
        return list(self.adjacent.get(node_id, ()))

    def dials(self, node_id: str) -> list[str]:
        return list(self.dialled.get(node_id, ()))

    def watched(self, node_id: str) -> list[str]:
        return list(self.watching.get(node_id, ()))

    def member_at(self, uri: str) -> Member | None:
        """The member whose listen URI a dialled peer URI (query ignored) is."""
        return self.by_listen.get(strip_query(uri))

    def member_for(self, key: str | None, address: str | None = None) -> Member | None:
        """The member a daemon key (or, failing that, overlay address) belongs to."""
        if key:
            found = self.by_key.get(key.lower())
            if found is not None:
                return found
        if address:
            return self.by_address.get(_normal_address(address))
        return None


EMPTY = Members(mesh=None, members=(), links=(), by_id={}, by_key={}, by_address={})

_decoder = msgspec.json.Decoder(MembersFile)


def parse_members(data: bytes) -> Members:
    """Parse and validate members JSON; raises MembersError with a message naming the bad part.

    A member whose listen_uri cannot be dialled (bad port or scheme, or a listener another member also names) is
    kept without it and listed in `invalid`; anything else wrong refuses the whole file.
    """
    try:
        raw = _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise MembersError(f"invalid members file: {exc}") from None
    except msgspec.DecodeError as exc:
        raise MembersError(f"members file is not valid JSON: {exc}") from None
    seen_ids: set[str] = set()
    key_owner: dict[str, str] = {}
    members: list[Member] = []
    invalid: dict[str, str] = {}
    for m in raw.members:
        if not NODE_ID_RE.match(m.node_id):
            raise MembersError(f"member node_id {m.node_id!r} must match [a-z0-9][a-z0-9-]{{0,62}}")
        if m.node_id in seen_ids:
            raise MembersError(f"member {m.node_id!r} listed twice")
        seen_ids.add(m.node_id)
        _check_url(m.node_id, "agent_url", m.agent_url)
        if m.overlay_url is not None:
            _check_url(m.node_id, "overlay_url", m.overlay_url)
        listen = m.listen_uri
        if listen is not None:
            problem = listen_uri_problem(listen)
            if problem is not None:
                # One bad entry must not take the whole mesh's membership away: this member is kept (probed,
                # shown) but never dialled, and /health names it.
                invalid[m.node_id] = f"listen_uri {listen!r} {problem}"
                listen = None
        if m.raft_address is not None:
            _check_host_port(m.node_id, m.raft_address)
        key = m.public_key.lower() if m.public_key else None
        if key is not None:
            if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
                raise MembersError(f"member {m.node_id!r}: public_key must be 64 hex digits")
            if key in key_owner:
                raise MembersError(f"members {key_owner[key]!r} and {m.node_id!r} share a public_key")
            key_owner[key] = m.node_id
        address = None
        if m.address is not None:
            try:
                address = _normal_address(m.address)
            except ValueError:
                raise MembersError(f"member {m.node_id!r}: address {m.address!r} is not an IPv6 address") from None
        overlay = m.overlay_url or (_overlay_url(address, m.agent_url) if address else None)
        members.append(
            msgspec.structs.replace(m, public_key=key, address=address, overlay_url=overlay, listen_uri=listen)
        )
    members = _drop_shared_listeners(members, invalid)
    by_id: dict[str, Member] = {}
    by_key: dict[str, Member] = {}
    by_address: dict[str, Member] = {}
    by_listen: dict[str, Member] = {}
    for m in members:
        by_id[m.node_id] = m
        if m.public_key is not None:
            by_key[m.public_key] = m
        if m.address is not None:
            by_address[m.address] = m
        if m.listen_uri is not None:
            by_listen[strip_query(m.listen_uri)] = m
    ids = [m.node_id for m in members]
    try:
        if raw.links is None:
            if raw.topology not in topology.TOPOLOGIES:
                raise ValueError(
                    f"topology {raw.topology!r} is not one of {', '.join(topology.TOPOLOGIES)} (or give links)"
                )
            links = topology.plan_links(ids, raw.topology)  # type: ignore[arg-type]
        else:
            links = topology.validate_links(raw.links, ids)
    except ValueError as exc:
        raise MembersError(f"invalid links: {exc}") from None
    dialled: dict[str, list[str]] = {}
    for a, b in links:
        dialled.setdefault(a, []).append(b)
    adjacent = topology.adjacency(links)
    return Members(
        mesh=raw.mesh,
        members=tuple(members),
        links=tuple(links),
        by_id=by_id,
        by_key=by_key,
        by_address=by_address,
        by_listen=by_listen,
        adjacent=adjacent,
        watching=topology.watch_sets(ids, adjacent),
        dialled={k: tuple(v) for k, v in dialled.items()},
        invalid=invalid,
    )


# Peer URI schemes either daemon version dials (reference §2.2); 0.4.7 refuses quic/ws/wss/sockstls at addPeer.
PEER_SCHEMES = frozenset({"tcp", "tls", "quic", "ws", "wss", "socks", "sockstls", "unix"})


def listen_uri_problem(uri: str) -> str | None:
    """Why `uri` cannot be dialled as a member's listen URI, or None when it can."""
    if any(c.isspace() for c in uri) or "://" not in uri:
        return "is not a peer URI like tls://host:port"
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:  # urlsplit: a port outside 0-65535 or not a number
        return "needs a port 1-65535"
    if parts.scheme.lower() not in PEER_SCHEMES:
        return f"has an unknown scheme {parts.scheme!r} (expected one of {', '.join(sorted(PEER_SCHEMES))})"
    if parts.scheme.lower() == "unix":
        return None if parts.path else "names no socket path"
    if parts.scheme.lower() in ("socks", "sockstls"):
        return (
            None if parts.hostname and port and parts.path.strip("/") else "must be socks://proxy:port/host:port"
        )
    if not parts.hostname:
        return "names no host"
    if port is None or not 1 <= port <= 65535:
        return "needs a port 1-65535"
    return None


def _uri_identity(uri: str) -> str:
    """What makes two listen URIs the same listener: scheme, host and port (case and query ignored)."""
    parts = urlsplit(strip_query(uri))
    host = (parts.hostname or "").lower()
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        pass
    return f"{parts.scheme.lower()}://{host}:{parts.port}{parts.path if parts.scheme.lower() == 'unix' else ''}"


def _drop_shared_listeners(members: list[Member], invalid: dict[str, str]) -> list[Member]:
    """Two members naming the same listener both lose it (and are marked invalid): dialling it would reach only
    one of them, and possibly the dialling node itself."""
    owners: dict[str, list[str]] = {}
    for m in members:
        if m.listen_uri is not None:
            owners.setdefault(_uri_identity(m.listen_uri), []).append(m.node_id)
    out: list[Member] = []
    for m in members:
        if m.listen_uri is not None:
            same = owners[_uri_identity(m.listen_uri)]
            if len(same) > 1:
                others = ", ".join(o for o in same if o != m.node_id)
                invalid[m.node_id] = f"listen_uri {m.listen_uri!r} is also the listener of {others}"
                m = msgspec.structs.replace(m, listen_uri=None)
        out.append(m)
    return out


def peer_uri(member: Member) -> str | None:
    """The URI to addPeer for `member`: its listen URI, pinned to its key when the key is known."""
    if member.listen_uri is None:
        return None
    if member.public_key is None:
        return member.listen_uri
    sep = "&" if "?" in member.listen_uri else "?"
    return f"{member.listen_uri}{sep}key={member.public_key}"


def strip_query(uri: str) -> str:
    """A peer URI the way the daemon reports it in getPeers `remote` (query removed, no trailing slash)."""
    return uri.split("?", 1)[0].rstrip("/")


def _normal_address(address: str) -> str:
    return str(ipaddress.IPv6Address(address))


def _check_url(node_id: str, field: str, url: str) -> None:
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        ok = False
    if not ok:
        raise MembersError(f"member {node_id!r}: {field} {url!r} is not an http(s) URL")


def _check_host_port(node_id: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535 or any(c.isspace() for c in value):
        raise MembersError(f"member {node_id!r}: raft_address {value!r} is not host:port")


def _overlay_url(address: str, agent_url: str) -> str:
    parts = urlsplit(agent_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://[{address}]:{port}"


@dataclass
class MembersWatcher:
    """Re-reads the members file when its mtime/size change; keeps the last good members on a bad read."""

    path: Path | None
    members: Members = EMPTY
    error: str | None = None  # why the latest read failed; None when the file in use is the current one
    generation: int = 0  # bumps each time `members` changes
    _stamp: tuple[int, int, int] | None = None

    def check(self) -> bool:
        """Stat the file and re-read it if it changed. Returns True when `members` changed."""
        if not self._stat_changed():
            return False
        return self._apply(self._read())

    async def check_async(self) -> bool:
        """`check` for the event loop: the read and parse (O(members + links), a large file takes a while) run in
        a worker thread, so the loop keeps answering /health meanwhile."""
        if not self._stat_changed():
            return False
        return self._apply(await asyncio.to_thread(self._read))

    def _stat_changed(self) -> bool:
        if self.path is None:
            return False
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp = None
            self.error = f"members file not found: {self.path}"
            return False
        except OSError as exc:
            self._stamp = None
            self.error = f"cannot stat members file {self.path}: {exc.strerror}"
            return False
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        return True

    def _read(self) -> Members | str:
        """The parsed file, or why it could not be used."""
        assert self.path is not None
        try:
            return parse_members(self.path.read_bytes())
        except OSError as exc:
            return f"cannot read members file {self.path}: {exc.strerror}"
        except MembersError as exc:
            return f"{self.path}: {exc}"

    def _apply(self, parsed: Members | str) -> bool:
        if isinstance(parsed, str):
            self.error = parsed
            return False
        self.error = None
        if parsed == self.members:
            return False
        self.members = parsed
        self.generation += 1
        return True
