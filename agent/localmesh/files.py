"""The files a local mesh hands to others: members file (contracts §2, read by the agents), inventory (§4, read
by x0dash and tests) and the Prometheus file_sd targets beside the inventory.

Builders are pure (dicts from node handles); `write_json` does the I/O atomically so a reader never sees half a
file (agents re-read the members file whenever it changes).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.localmesh.model import Mode, NodeHandle
from agent.topology import Link
from agent.yggdrasil.daemon_config import write_config

INVENTORY_NAME = "inventory.json"
SD_NAME = "prometheus-targets.json"


def sd_path_for(inventory: Path) -> Path:
    """The file_sd file beside an inventory: `prometheus-targets.json` next to `inventory.json`, else
    `<stem>-prometheus-targets.json` so two inventories in one directory keep separate target files."""
    if inventory.name == INVENTORY_NAME:
        return inventory.with_name(SD_NAME)
    return inventory.with_name(f"{inventory.stem}-{SD_NAME}")


def members_doc(mesh: str, mode: Mode, nodes: Sequence[NodeHandle], links: Iterable[Link]) -> dict[str, Any]:
    members: list[dict[str, Any]] = []
    for node in nodes:
        entry: dict[str, Any] = {
            "node_id": node.id,
            "agent_url": node.agent_url,
            "listen_uri": node.listen_uri,
            "public_key": node.public_key,
            # Explicit, so loopback nodes (one host, one port each) and netns nodes (the overlay address) are
            # reached where their agent binds Raft (contracts §2, §7).
            "raft_address": node.raft_address,
        }
        # Loopback daemons have no TUN: an overlay address would be routed by the host's default route, off
        # this machine. Leaving `address` out keeps agents from deriving an overlay URL to probe.
        if mode == "netns":
            entry["overlay_url"] = node.overlay_url
            entry["address"] = node.yggdrasil_address
        members.append(entry)
    return {"mesh": mesh, "members": members, "links": [[a, b] for a, b in links]}


def inventory_doc(
    *,
    mesh: str,
    mode: Mode,
    api_token: str,
    members_file: Path,
    sd_file: Path,
    links: Iterable[Link],
    nodes: Sequence[NodeHandle],
    mesh_dir: Path,
    owner_pid: int,
) -> dict[str, Any]:
    return {
        "mesh": mesh,
        "mode": mode,
        "api_token": api_token,
        # One host: the agents accept the token in clear on the underlay (X0_ALLOW_CLEAR_UNDERLAY), and x0dash
        # may send it so (dashboard.agent_client.clear_token_refusal).
        "allow_clear_underlay": True,
        "members_file": str(members_file),
        "prometheus_sd_file": str(sd_file),
        "mesh_dir": str(mesh_dir),
        "owner_pid": owner_pid,
        "links": [[a, b] for a, b in links],
        "nodes": [
            {
                "id": n.id,
                "agent_url": n.agent_url,
                "metrics_url": n.metrics_url,
                "yggdrasil_address": n.yggdrasil_address,
                "overlay_url": n.overlay_url,
                "public_key": n.public_key,
                "listen_uri": n.listen_uri,
                "admin_endpoint": n.admin_endpoint,
                "netns": n.netns,
                "underlay_ip": n.underlay_ip,
            }
            for n in nodes
        ],
    }


def file_sd_doc(mesh: str, nodes: Sequence[NodeHandle]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for n in nodes:
        parts = urlsplit(n.agent_url)
        host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
        out.append({"targets": [f"{host}:{parts.port}"], "labels": {"node_id": n.id, "mesh": mesh}})
    return out


def write_json(path: Path, data: Mapping[str, Any] | list[Any], mode: int = 0o600) -> Path:
    """Atomic JSON write (the config writer's: temp file, fsync-free replace), then `mode` (0600 by default:
    the inventory holds the API token; members and targets are public and get 0644)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_config(data, path)  # type: ignore[arg-type]  # a JSON list is written the same way
    if mode != 0o600:
        os.chmod(path, mode)
    return path
