"""Where each member's agent receives SWIM datagrams, and who a datagram came from (pure).

- `mesh` path: the member's Yggdrasil address (members file `address`, else derived from its public key, else
  learned from its first datagram over the overlay) with the port of its `overlay_url`/`agent_url`. A loopback
  mesh has no overlay: the mesh path is then the underlay address itself.
- `underlay` path: the host of `agent_url` (resolved once per members change) and its port; only used for the
  diagnostic ping beside the indirect probes.
Yggdrasil addresses are derived from public keys and the daemon refuses packets whose source does not match the
sender's key, so a datagram from an overlay address really comes from the key that owns it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from agent.mapek.swim.protocol import Path
from agent.members import Member
from agent.yggdrasil.address import address_for_key

__all__ = ["Addr", "AddressBook", "address_for_key", "normal_ip"]

Addr = tuple[str, int]
YGGDRASIL_NET = ipaddress.IPv6Network("200::/7")


def normal_ip(host: str) -> str:
    """One spelling per address: IPv4-mapped IPv6 unwrapped, IPv6 compressed."""
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _port(url: str | None) -> int | None:
    if not url:
        return None
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


@dataclass
class AddressBook:
    """Addresses by member and members by address, rebuilt when the members (or learned keys) change."""

    mesh: dict[str, Addr] = field(default_factory=dict)
    underlay: dict[str, Addr] = field(default_factory=dict)
    by_addr: dict[Addr, tuple[str, Path]] = field(default_factory=dict)
    fallback: set[str] = field(default_factory=set)  # mesh path is the underlay until the overlay one is known

    @classmethod
    def build(
        cls,
        me: str,
        members: Iterable[Member],
        key_of: Callable[[str], str | None],
        resolve: Callable[[str], str | None],
        overlay: bool,
        learned: dict[str, Addr] | None = None,
    ) -> AddressBook:
        """`resolve(host)` turns an agent_url host into an IP (None: unresolvable); `overlay`: this agent has a
        Yggdrasil address (netns/Nomad with TUN), else every mesh path is the underlay (loopback)."""
        book = cls()
        for m in members:
            if m.node_id == me:
                continue
            port = _port(m.agent_url)
            host = urlsplit(m.agent_url).hostname
            ip = resolve(host) if host else None
            if ip is not None and port is not None:
                book.underlay[m.node_id] = (normal_ip(ip), port)
            mesh: Addr | None = None
            if overlay:
                address = m.address
                if address is None:
                    key = m.public_key or key_of(m.node_id)
                    address = address_for_key(key) if key else None
                oport = _port(m.overlay_url) or port
                if address is not None and oport is not None:
                    mesh = (normal_ip(address), oport)
                elif learned and m.node_id in learned:
                    mesh = learned[m.node_id]
            if mesh is None:
                # Loopback mesh, or a member whose Yggdrasil address we do not know yet: the underlay carries the
                # protocol until its first datagram over the overlay tells us (see `learn`).
                mesh = book.underlay.get(m.node_id)
                if overlay and mesh is not None:
                    book.fallback.add(m.node_id)
            if mesh is not None:
                book.mesh[m.node_id] = mesh
        for node, addr in book.underlay.items():
            book.by_addr[addr] = (node, "underlay")
        for node, addr in book.mesh.items():
            if node not in book.fallback:
                book.by_addr[addr] = (node, "mesh")  # loopback: the same address is the mesh path
        return book

    def has_underlay(self) -> set[str]:
        """Members whose underlay path is distinct from their mesh path (the diagnostic ping means something)."""
        return {m for m, a in self.underlay.items() if self.mesh.get(m) != a}

    def sender_path(self, node: str, path: Path) -> Path:
        """A datagram that came over a member's underlay while the underlay is its mesh path (fallback) counts
        as the mesh path."""
        return "mesh" if path == "underlay" and node in self.fallback else path

    def sender(self, addr: Addr) -> tuple[str, Path] | None:
        return self.by_addr.get((normal_ip(addr[0]), addr[1]))

    def learn(self, node: str, addr: Addr) -> bool:
        """First datagram over the overlay from a member whose Yggdrasil address we did not know (no key in the
        members file, not dialled by us): remember it (trust on first use). Returns True when learned."""
        ip = normal_ip(addr[0])
        if ipaddress.ip_address(ip) not in YGGDRASIL_NET:
            return False
        if node in self.mesh and node not in self.fallback:
            return False
        self.fallback.discard(node)
        self.mesh[node] = (ip, addr[1])
        self.by_addr[self.mesh[node]] = (node, "mesh")
        return True

    def learned(self) -> dict[str, Addr]:
        """Overlay addresses this book knows (to carry over into the next one)."""
        return {m: a for m, a in self.mesh.items() if m not in self.fallback}
