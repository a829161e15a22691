"""Network namespaces, the bridge and veth pairs of a netns mesh, through iproute2 (`ip`).

Layout of one mesh (names from `agent.localmesh.naming`):

    host:  bridge x0b<id> 10.213.N.254/24 ── veth x0v<id>a ─┐
                                          ── veth x0v<id>b ─┼─ (other ends inside the namespaces)
    x0-<id>-a:  lo up, eth0 10.213.N.1/24 (peer of x0v<id>a), ygg0 (the daemon's TUN)
    x0-<id>-b:  lo up, eth0 10.213.N.2/24, ygg0

The namespaces get no default route: a node can reach the bridge subnet and the overlay, nothing else, so nothing
a mesh does can send traffic off this machine.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
from collections.abc import Sequence

_IP_TIMEOUT_S = 15.0
NODE_IFNAME = "eth0"


class NetnsError(RuntimeError):
    """An `ip` command failed; the message names the command and what `ip` said."""


def ip_binary() -> str:
    found = shutil.which("ip") or ("/usr/sbin/ip" if os.access("/usr/sbin/ip", os.X_OK) else None)
    if found is None:
        raise NetnsError("iproute2 `ip` not found (apt-get install iproute2); netns mode needs it")
    return found


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGS`; raise NetnsError with ip's own message when `check` and it fails."""
    argv = [ip_binary(), *args]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=_IP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise NetnsError(f"`ip {' '.join(args)}` did not finish in {_IP_TIMEOUT_S:g} s") from exc
    if check and proc.returncode != 0:
        said = (proc.stderr or proc.stdout).strip() or f"exit code {proc.returncode}"
        raise NetnsError(f"`ip {' '.join(args)}` failed: {said}")
    return proc


def _ip_json(*args: str) -> list[dict[str, object]]:
    out = ip("-j", *args).stdout.strip()
    if not out:
        return []
    data = json.loads(out)
    return data if isinstance(data, list) else []


def exec_argv(netns: str, argv: Sequence[str]) -> list[str]:
    """argv that runs `argv` inside `netns` (ip execs it directly, so the pid is the command's own)."""
    return [ip_binary(), "netns", "exec", netns, *argv]


def list_netns() -> list[str]:
    """Names of the named network namespaces (`ip netns list`)."""
    names: list[str] = []
    for line in ip("netns", "list").stdout.splitlines():
        # "x0-3f2a-a (id: 4)" or just "x0-3f2a-a"
        name = line.split(" ", 1)[0].strip()
        if name:
            names.append(name)
    return names


def list_links() -> list[str]:
    """Names of the host's network interfaces."""
    return [str(entry["ifname"]) for entry in _ip_json("link", "show") if "ifname" in entry]


def host_ipv4_networks() -> list[ipaddress.IPv4Network]:
    """IPv4 networks the host already has addresses or routes in (a subnet we pick must not overlap them)."""
    nets: list[ipaddress.IPv4Network] = []
    for entry in _ip_json("-4", "addr", "show"):
        for info in entry.get("addr_info", []) or []:  # type: ignore[union-attr]
            if isinstance(info, dict) and "local" in info:
                nets.append(ipaddress.IPv4Network(f"{info['local']}/{info.get('prefixlen', 32)}", strict=False))
    for entry in _ip_json("-4", "route", "show", "table", "all"):
        dst = entry.get("dst")
        if isinstance(dst, str) and dst not in ("default", ""):
            try:
                nets.append(ipaddress.IPv4Network(dst, strict=False))
            except ValueError:
                continue  # e.g. "broadcast"/"local" pseudo entries we cannot parse
    return nets


def netns_pids(netns: str) -> list[int]:
    """Processes running inside `netns` ([] when it does not exist)."""
    proc = ip("netns", "pids", netns, check=False)
    if proc.returncode != 0:
        return []
    return [int(tok) for tok in proc.stdout.split() if tok.isdigit()]


def create_bridge(bridge: str, address: ipaddress.IPv4Interface) -> None:
    ip("link", "add", "name", bridge, "type", "bridge")
    ip("addr", "add", str(address), "dev", bridge)
    ip("link", "set", bridge, "up")


def create_node_netns(netns: str, veth: str, bridge: str, address: ipaddress.IPv4Interface) -> None:
    """Namespace with lo up and `eth0` (the far end of `veth`, which joins `bridge`) holding `address`."""
    ip("netns", "add", netns)
    # Creating the peer directly inside the namespace keeps the host free of temporary interface names.
    ip("link", "add", veth, "type", "veth", "peer", "name", NODE_IFNAME, "netns", netns)
    ip("link", "set", veth, "master", bridge)
    ip("link", "set", veth, "up")
    ip("-n", netns, "link", "set", "lo", "up")
    ip("-n", netns, "addr", "add", str(address), "dev", NODE_IFNAME)
    ip("-n", netns, "link", "set", NODE_IFNAME, "up")


def delete_netns(netns: str) -> bool:
    """Delete `netns` (its veth end and TUN go with it). False when it did not exist."""
    if netns not in list_netns():
        return False
    ip("netns", "delete", netns)
    return True


def delete_link(name: str) -> bool:
    """Delete a host interface (bridge or veth). False when it did not exist."""
    if name not in list_links():
        return False
    ip("link", "delete", name)
    return True
