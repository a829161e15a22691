"""The members file (docs/contracts.md §2): parsing, key/URI matching, and re-reading it when it changes.

Parsing is pure (`parse_members`); `MembersWatcher` adds the file I/O and keeps the last good copy, so a bad
write never takes members away from a running agent.
"""

from __future__ import annotations

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
    # Raw as written; None when the file leaves the plan to `topology.plan_links(ids, "full")`.
    links: list[list[str]] | None = None


class Members(msgspec.Struct, frozen=True, kw_only=True):
    """A validated members file with its planned links resolved and lookup tables built once."""

    mesh: str | None
    members: tuple[Member, ...]
    links: tuple[topology.Link, ...]
    by_id: dict[str, Member]
    by_key: dict[str, Member]
    by_address: dict[str, Member]

    @property
    def ids(self) -> list[str]:
        return [m.node_id for m in self.members]

    def neighbours(self, node_id: str) -> list[str]:
        return topology.neighbours(self.links, node_id)

    def dials(self, node_id: str) -> list[str]:
        return topology.dials(self.links, node_id)

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
    """Parse and validate members JSON; raises MembersError with a message naming the bad part."""
    try:
        raw = _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise MembersError(f"invalid members file: {exc}") from None
    except msgspec.DecodeError as exc:
        raise MembersError(f"members file is not valid JSON: {exc}") from None
    by_id: dict[str, Member] = {}
    by_key: dict[str, Member] = {}
    by_address: dict[str, Member] = {}
    members: list[Member] = []
    for m in raw.members:
        if not NODE_ID_RE.match(m.node_id):
            raise MembersError(f"member node_id {m.node_id!r} must match [a-z0-9][a-z0-9-]{{0,62}}")
        if m.node_id in by_id:
            raise MembersError(f"member {m.node_id!r} listed twice")
        _check_url(m.node_id, "agent_url", m.agent_url)
        if m.overlay_url is not None:
            _check_url(m.node_id, "overlay_url", m.overlay_url)
        if m.listen_uri is not None and "://" not in m.listen_uri:
            raise MembersError(f"member {m.node_id!r}: listen_uri {m.listen_uri!r} is not a peer URI")
        if m.raft_address is not None:
            _check_host_port(m.node_id, m.raft_address)
        key = m.public_key.lower() if m.public_key else None
        if key is not None:
            if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
                raise MembersError(f"member {m.node_id!r}: public_key must be 64 hex digits")
            if key in by_key:
                raise MembersError(f"members {by_key[key].node_id!r} and {m.node_id!r} share a public_key")
        address = None
        if m.address is not None:
            try:
                address = _normal_address(m.address)
            except ValueError:
                raise MembersError(f"member {m.node_id!r}: address {m.address!r} is not an IPv6 address") from None
        overlay = m.overlay_url or (_overlay_url(address, m.agent_url) if address else None)
        m = msgspec.structs.replace(m, public_key=key, address=address, overlay_url=overlay)
        members.append(m)
        by_id[m.node_id] = m
        if key is not None:
            by_key[key] = m
        if address is not None:
            by_address[address] = m
    ids = [m.node_id for m in members]
    try:
        links = topology.plan_links(ids, "full") if raw.links is None else topology.validate_links(raw.links, ids)
    except ValueError as exc:
        raise MembersError(f"invalid links: {exc}") from None
    return Members(
        mesh=raw.mesh,
        members=tuple(members),
        links=tuple(links),
        by_id=by_id,
        by_key=by_key,
        by_address=by_address,
    )


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
        try:
            parsed = parse_members(self.path.read_bytes())
        except OSError as exc:
            self.error = f"cannot read members file {self.path}: {exc.strerror}"
            return False
        except MembersError as exc:
            self.error = f"{self.path}: {exc}"
            return False
        self.error = None
        if parsed == self.members:
            return False
        self.members = parsed
        self.generation += 1
        return True
