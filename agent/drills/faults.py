"""Network faults with nftables, in the agent's own network namespace, in tables of our own.

- Drill faults (`partition`, `blackhole`) live in table `inet x0_drill`: they match this node's MESH traffic only,
  the Yggdrasil peering ports of every member (its own listen port and the ones it dials), both directions.
  The agent's HTTP port stays open, so observers and x0dash still read this node's own view during a drill.
  `partition` rejects (TCP reset / ICMP): both ends see the link die at once. `blackhole` drops silently: the
  daemons only notice after their 4-6 s read deadline, which is what the agent's probes must beat.
- MAPE-K holds (`x0_hold_<member>`): on 0.4 a removed outbound link is redialled by the daemon itself (observed),
  so dropping a stand-in refuses our own dials to that one peer for a few seconds.

Each change is one `nft -f` transaction, so a fault is either fully applied or not at all. `Nft(netns=...)` runs
in another namespace through `ip netns exec` (tests); the agent uses its own (netns=None).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

FAMILY = "inet"
DRILL_TABLE = "x0_drill"
HOLD_PREFIX = "x0_hold_"
NFT_TIMEOUT_S = 5.0
CAP_NET_ADMIN = 12

NetFault = Literal["partition", "blackhole"]


class FaultUnavailable(Exception):
    """A fault cannot be applied here; the message says what is missing (API: 409)."""


class NftError(Exception):
    """nft ran and failed."""


def nft_binary() -> str | None:
    return shutil.which("nft") or ("/usr/sbin/nft" if os.access("/usr/sbin/nft", os.X_OK) else None)


def _ip_binary() -> str:
    return shutil.which("ip") or "/usr/sbin/ip"


@dataclass(frozen=True)
class Nft:
    netns: str | None = None
    binary: str | None = None

    def _argv(self, args: list[str]) -> list[str]:
        nft = self.binary or nft_binary()
        if nft is None:
            raise FaultUnavailable("nft binary not found (install nftables)")
        prefix = [_ip_binary(), "netns", "exec", self.netns] if self.netns else []
        return [*prefix, nft, *args]

    def run(self, args: list[str], script: str | None = None) -> str:
        try:
            proc = subprocess.run(
                self._argv(args), input=script, capture_output=True, text=True, timeout=NFT_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            raise NftError(f"nft {' '.join(args)} did not finish within {NFT_TIMEOUT_S:g} s") from None
        except OSError as exc:
            raise NftError(f"cannot run nft: {exc}") from None
        if proc.returncode != 0:
            raise NftError((proc.stderr or proc.stdout).strip() or f"nft exited with {proc.returncode}")
        return proc.stdout

    def tables(self) -> list[tuple[str, str]]:
        out = self.run(["list", "tables"])
        found = []
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "table":
                found.append((parts[1], parts[2]))
        return found

    def apply(self, script: str) -> None:
        self.run(["-f", "-"], script=script)

    def delete_table(self, name: str, family: str = FAMILY) -> bool:
        """Delete one table; False when it was not there."""
        try:
            self.run(["delete", "table", family, name])
        except NftError as exc:
            if "No such file or directory" in str(exc):
                return False
            raise
        return True


# The kernel's initial network namespace has this fixed inode (PROC_NET_INIT_INO) on current kernels.
_INIT_NET_INO = 0xEFFFFFF9


def in_own_netns() -> bool:
    """True only when this process is surely NOT in the host's initial network namespace: a drill there would cut
    every mesh node on the host. When in doubt, False (refuse)."""
    try:
        ino = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return False
    if ino == _INIT_NET_INO:
        return False
    try:
        return ino != os.stat("/proc/1/ns/net").st_ino
    except OSError:
        pass  # PID 1 hidden (sandbox, hidepid): fall back to named namespaces
    try:
        named = os.scandir("/var/run/netns")
    except OSError:
        return False
    with named:
        for entry in named:
            try:
                if os.stat(entry.path).st_ino == ino:
                    return True  # an `ip netns` namespace, like x0-agent local-mesh creates
            except OSError:
                continue
    return False


def has_net_admin() -> bool:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError):
        pass
    return os.geteuid() == 0


def missing_for_net_faults(nft: Nft, *, check_namespace: bool = True) -> list[str]:
    """Everything that stops a network fault from being applied; empty when it can be."""
    missing: list[str] = []
    binary = nft.binary or nft_binary()
    if binary is None or not os.access(binary, os.X_OK):
        missing.append("the nft binary is not installed (apt-get install nftables)")
    if not has_net_admin():
        missing.append("the agent lacks CAP_NET_ADMIN (run it as root or grant cap_net_admin)")
    if check_namespace and nft.netns is None and not in_own_netns():
        missing.append(
            "the agent shares the host's network namespace, where a drill would cut every mesh node on the host "
            "(run each node in its own namespace, e.g. x0-agent local-mesh in netns mode)"
        )
    if not missing:
        try:
            nft.run(["list", "tables"])
        except (NftError, FaultUnavailable) as exc:
            missing.append(f"nft does not work here: {exc}")
    return missing


def mesh_ports(uris: Iterable[str | None]) -> list[int]:
    """Peering ports named by listen URIs (tcp/tls/quic/ws...); unix sockets and URIs without a port skipped."""
    ports: set[int] = set()
    for uri in uris:
        if not uri:
            continue
        try:
            parts = urlsplit(uri)
            port = parts.port
        except ValueError:
            continue
        if parts.scheme != "unix" and port:
            ports.add(port)
    return sorted(ports)


def fault_script(kind: NetFault, ports: Iterable[int], note: str) -> str:
    """The whole `x0_drill` table for one fault, created atomically (an old copy is replaced in the same
    transaction). Both directions, by source and destination port, TCP and UDP (0.5 quic)."""
    port_list = sorted(set(ports))
    if not port_list:
        raise ValueError("no mesh ports to match")
    if kind not in ("partition", "blackhole"):
        raise ValueError(f"unknown network fault {kind!r}")
    ports_expr = "{ " + ", ".join(str(p) for p in port_list) + " }"
    tcp = "reject with tcp reset" if kind == "partition" else "drop"
    udp = "reject" if kind == "partition" else "drop"
    comment = re.sub(r"[^A-Za-z0-9 :._,=-]", "", note)[:120]
    rules = "\n".join(
        f"        {proto} {direction} {ports_expr} {verdict}"
        for proto, verdict in (("tcp", tcp), ("udp", udp))
        for direction in ("dport", "sport")
    )
    # A partition must be loud: the resets our own reject (and kill_mesh_sockets) send pass these hooks too, and
    # would otherwise be swallowed by the rules below, leaving both ends to time out as if silent.
    let_resets_pass = "        tcp flags & rst == rst accept\n" if kind == "partition" else ""
    chains = "\n".join(
        f"    chain {hook} {{\n        type filter hook {hook} priority -150; policy accept;\n"
        f"{let_resets_pass}{rules}\n    }}"
        for hook in ("input", "output")
    )
    return (
        f"table {FAMILY} {DRILL_TABLE} {{}}\n"
        f"delete table {FAMILY} {DRILL_TABLE}\n"
        f'table {FAMILY} {DRILL_TABLE} {{\n    comment "{comment}"\n{chains}\n}}\n'
    )


def apply_net_fault(nft: Nft, kind: NetFault, ports: Iterable[int], note: str) -> None:
    nft.apply(fault_script(kind, ports, note))


def kill_mesh_sockets(nft: Nft, ports: Iterable[int]) -> str | None:
    """Abort established mesh connections (`ss -K`), so a partition cuts idle links at once instead of at the
    next keepalive. Returns why it could not, or None. Best effort: the reject rules cut them soon anyway."""
    port_list = sorted(set(ports))
    if not port_list:
        return None
    expr = " or ".join(f"sport = :{p} or dport = :{p}" for p in port_list)
    ss = shutil.which("ss") or "/usr/bin/ss"
    prefix = [_ip_binary(), "netns", "exec", nft.netns] if nft.netns else []
    try:
        proc = subprocess.run(
            [*prefix, ss, "-K", "-t", f"( {expr} )"],
            capture_output=True,
            text=True,
            timeout=NFT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"ss -K failed: {exc}"
    return None if proc.returncode == 0 else (proc.stderr.strip() or f"ss exited with {proc.returncode}")


def revert_net_fault(nft: Nft) -> bool:
    """Remove the drill table; False when there was none."""
    return nft.delete_table(DRILL_TABLE)


def hold_table(member: str) -> str:
    return HOLD_PREFIX + re.sub(r"[^a-z0-9]", "_", member.lower())


def hold_script(member: str, uri: str) -> str:
    """Refuse this node's own new TCP dials to `uri` (one peer's listen address and port), nothing else: only
    SYNs match, so the FIN of the link being removed still reaches the peer and it drops its end at once."""
    parts = urlsplit(uri)
    host, port = parts.hostname, parts.port
    if not host or not port:
        raise ValueError(f"cannot hold {uri!r}: no host:port")
    addr = ipaddress.ip_address(host)  # ValueError for a hostname: we do not resolve names here
    match = f"ip daddr {addr}" if addr.version == 4 else f"ip6 daddr {addr}"
    table = hold_table(member)
    return (
        f"table {FAMILY} {table} {{}}\n"
        f"delete table {FAMILY} {table}\n"
        f"table {FAMILY} {table} {{\n"
        f"    chain output {{\n        type filter hook output priority -150; policy accept;\n"
        f"        {match} tcp dport {port} tcp flags & (syn | ack) == syn reject with tcp reset\n    }}\n}}\n"
    )


def leftover_tables(nft: Nft) -> list[str]:
    """Our tables present in this namespace (a drill or hold left by an earlier agent)."""
    return [
        name
        for family, name in nft.tables()
        if family == FAMILY and (name == DRILL_TABLE or name.startswith(HOLD_PREFIX))
    ]


def remove_leftovers(nft: Nft) -> list[str]:
    removed = []
    for name in leftover_tables(nft):
        if nft.delete_table(name):
            removed.append(name)
    return removed
