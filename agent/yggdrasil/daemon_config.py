"""Node configuration files for a Yggdrasil daemon: generate keys, set our keys, write, read the identity back.

Keys come from the daemon itself (`yggdrasil -genconf -json`), so the key layout is whatever the installed version
uses: 0.4.x writes `PrivateKey` (128 hex = seed + public key) and `PublicKey`; 0.5.x writes only `PrivateKey`
(reference §2.1). The address and subnet are derived by the binary (`-useconffile X -address` / `-subnet`), not
re-implemented here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEBIAN_BINARY = "/usr/sbin/yggdrasil"
# Linux IFNAMSIZ is 16 including the NUL.
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")
_HEX_RE = re.compile(r"^[0-9a-fA-F]+$")
_TOOL_TIMEOUT_S = 10.0


class YggdrasilBinaryMissing(FileNotFoundError):
    """No usable yggdrasil binary."""


class DaemonConfigError(RuntimeError):
    """The binary refused a config, or a config lacks what we need (keys)."""


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """Who a config file makes the node: read back from the file and the binary."""

    public_key: str
    address: str  # IPv6, e.g. 200:…
    subnet: str  # e.g. 300:…::/64


def find_yggdrasil_binary(explicit: str | None = None) -> str:
    """`explicit` (e.g. $YGGDRASIL_BIN) if given, else `yggdrasil` on PATH, else /usr/sbin/yggdrasil."""
    if explicit:
        found = shutil.which(explicit)
        if found is None:
            raise YggdrasilBinaryMissing(f"yggdrasil binary {explicit!r} not found or not executable")
        return found
    found = shutil.which("yggdrasil")
    if found is not None:
        return found
    if os.access(DEBIAN_BINARY, os.X_OK):
        return DEBIAN_BINARY
    raise YggdrasilBinaryMissing(
        "yggdrasil binary not found on PATH or at /usr/sbin/yggdrasil (install it: apt-get install yggdrasil)"
    )


def _run_tool(binary: str, args: list[str], stdin: str | None = None) -> str:
    try:
        proc = subprocess.run(
            [binary, *args], input=stdin, capture_output=True, text=True, timeout=_TOOL_TIMEOUT_S, check=False
        )
    except FileNotFoundError as exc:
        raise YggdrasilBinaryMissing(f"yggdrasil binary {binary!r} not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise DaemonConfigError(f"{binary} {' '.join(args)} did not finish in {_TOOL_TIMEOUT_S:g} s") from exc
    if proc.returncode != 0:
        # The daemon reports a bad config with a Go panic; its first line is the message.
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        message = next((ln for ln in lines if ln.startswith("panic:")), lines[0] if lines else "no output")
        raise DaemonConfigError(f"{binary} {' '.join(args)} failed (exit {proc.returncode}): {message}")
    return proc.stdout


def generate_keys(binary: str | None = None) -> dict[str, Any]:
    """A fresh default config from `yggdrasil -genconf -json` (fresh keys; everything else we override)."""
    exe = binary or find_yggdrasil_binary()
    out = _run_tool(exe, ["-genconf", "-json"])
    try:
        config = json.loads(out)
    except json.JSONDecodeError as exc:
        raise DaemonConfigError(f"{exe} -genconf -json printed something that is not JSON: {exc}") from exc
    if not isinstance(config, dict) or not isinstance(config.get("PrivateKey"), str):
        raise DaemonConfigError(f"{exe} -genconf -json gave no PrivateKey")
    return config


def _check_if_name(if_name: str) -> None:
    if if_name in ("auto", "none"):
        return
    if not _IFNAME_RE.match(if_name):
        raise ValueError(f"IfName {if_name!r}: expected 'auto', 'none' or an interface name of 1-15 characters")


def build_config(
    node_id: str,
    *,
    admin_listen: str,
    listen: Iterable[str] = (),
    if_name: str = "none",
    peers: Iterable[str] = (),
    base: Mapping[str, Any] | None = None,
    binary: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A node config: keys from `base` (or freshly generated), then our settings.

    Peers are empty by default because the agent adds them at runtime (addPeer); multicast is off so nodes only
    peer where the plan says. `extra` keys (e.g. IfMTU, AllowedPublicKeys) are applied last.
    """
    _check_if_name(if_name)
    if not admin_listen:
        raise ValueError("admin_listen is required (the agent needs the admin socket)")
    config = dict(base) if base is not None else generate_keys(binary)
    config.update(
        Listen=list(listen),
        AdminListen=admin_listen,
        IfName=if_name,
        Peers=list(peers),
        MulticastInterfaces=[],
        NodeInfo={"name": node_id},
    )
    if extra:
        config.update(extra)
    return config


def write_config(config: Mapping[str, Any], path: Path) -> Path:
    """Write `config` as JSON, mode 0600 (it holds the private key), replacing any existing file atomically."""
    return write_json_file(config, path)


def write_json_file(data: Any, path: Path) -> Path:
    """Write `data` as JSON, mode 0600, replacing any existing file atomically (a reader never sees half)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is masked by umask and ignored for an existing file
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def public_key_of(config: Mapping[str, Any]) -> str:
    """The node's public key from either layout: 0.4 `PublicKey`, else the second half of the ed25519
    `PrivateKey` (Go stores seed || public key), which is what 0.5 derives."""
    public = config.get("PublicKey")
    if isinstance(public, str) and len(public) == 64 and _HEX_RE.match(public):
        return public.lower()
    private = config.get("PrivateKey")
    if isinstance(private, str) and len(private) == 128 and _HEX_RE.match(private):
        return private[64:].lower()
    if config.get("PrivateKeyPath"):
        raise DaemonConfigError("config uses PrivateKeyPath (PEM); its public key is not read from the file here")
    raise DaemonConfigError("config has no usable PublicKey/PrivateKey (64/128 hex characters)")


def read_identity(path: Path, binary: str | None = None) -> NodeIdentity:
    """Public key from the file; address and subnet as the binary derives them from it."""
    path = Path(path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DaemonConfigError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise DaemonConfigError(f"config {path} is not a JSON object")
    exe = binary or find_yggdrasil_binary()
    address = _run_tool(exe, ["-useconffile", str(path), "-address"]).strip()
    subnet = _run_tool(exe, ["-useconffile", str(path), "-subnet"]).strip()
    if not address or not subnet:
        raise DaemonConfigError(f"{exe} printed no address/subnet for {path}")
    return NodeIdentity(public_key=public_key_of(config), address=address, subnet=subnet)


def create_config(
    path: Path,
    node_id: str,
    *,
    admin_listen: str,
    listen: Iterable[str] = (),
    if_name: str = "none",
    peers: Iterable[str] = (),
    binary: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> NodeIdentity:
    """Generate keys, write a config for `node_id` to `path` (0600) and return the node's identity."""
    exe = binary or find_yggdrasil_binary()
    config = build_config(
        node_id, admin_listen=admin_listen, listen=listen, if_name=if_name, peers=peers, binary=exe, extra=extra
    )
    write_config(config, path)
    return read_identity(path, exe)
