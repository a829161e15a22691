"""Nodes from an inventory file (docs/contracts.md §4), as written by `x0-agent local-mesh --inventory FILE`.

The file is re-read when it changes, so a mesh restarted under the same path is picked up; a file that goes
missing or stops parsing keeps the last good node list and says so.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

from dashboard.logs import LogSource, file_sources
from dashboard.providers.base import NodeTarget, Provider, ProviderError, SourceSnapshot


class InventoryError(ValueError):
    """The inventory's content is not what §4 describes; the message names the field."""


def _str(node: dict[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
    value = node.get(key)
    if value is None:
        if required:
            raise InventoryError(f"{where}: missing {key!r}")
        return None
    if not isinstance(value, str) or not value:
        raise InventoryError(f"{where}: {key!r} must be a non-empty string, got {value!r}")
    return value


def parse_inventory(doc: Any) -> tuple[str | None, list[NodeTarget], list[tuple[str, str]], str | None]:
    """(mesh name, nodes, planned links, api token) from a decoded inventory document; InventoryError names
    what is wrong."""
    if not isinstance(doc, dict):
        raise InventoryError("the inventory must be a JSON object")
    raw_nodes = doc.get("nodes")
    if not isinstance(raw_nodes, list):
        raise InventoryError("missing 'nodes' list")
    nodes: list[NodeTarget] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_nodes):
        where = f"nodes[{i}]"
        if not isinstance(raw, dict):
            raise InventoryError(f"{where}: must be an object")
        node_id = _str(raw, "id", where, required=True)
        assert node_id is not None
        if node_id in seen:
            raise InventoryError(f"{where}: duplicate node id {node_id!r}")
        seen.add(node_id)
        nodes.append(
            NodeTarget(
                id=node_id,
                agent_url=_str(raw, "agent_url", where, required=True),
                metrics_url=_str(raw, "metrics_url", where),
                overlay_url=_str(raw, "overlay_url", where),
                yggdrasil_address=_str(raw, "yggdrasil_address", where),
            )
        )
    links: list[tuple[str, str]] = []
    for i, pair in enumerate(doc.get("links") or []):
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise InventoryError(f"links[{i}]: must be a pair of node ids, got {pair!r}")
        links.append((pair[0], pair[1]))
    token = doc.get("api_token")
    if token is not None and not isinstance(token, str):
        raise InventoryError("'api_token' must be a string")
    mesh = doc.get("mesh")
    return (mesh if isinstance(mesh, str) else None), nodes, links, token or None


class InventoryProvider(Provider):
    name = "inventory"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._token: str | None = None
        self._mesh: str | None = None
        self._nodes: list[NodeTarget] = []
        self._links: list[tuple[str, str]] = []
        self._stamp: tuple[float, int] | None = None
        self._warnings: list[str] = []
        self._allow_clear = False
        self._mesh_dir: str | None = None  # a local mesh's run dir (its nodes' logs), when the inventory says

    @property
    def api_token(self) -> str | None:
        return self._token

    @property
    def allow_clear_underlay(self) -> bool:
        return self._allow_clear

    @property
    def label(self) -> str:
        mesh = f" mesh {self._mesh}" if self._mesh else ""
        return f"inventory {self.path}{mesh}"

    def _load(self) -> None:
        st = self.path.stat()
        doc = json.loads(self.path.read_text())
        self._mesh, self._nodes, self._links, self._token = parse_inventory(doc)
        mesh_dir = doc.get("mesh_dir") if isinstance(doc, dict) else None
        self._mesh_dir = mesh_dir if isinstance(mesh_dir, str) else None
        self._allow_clear = isinstance(doc, dict) and doc.get("allow_clear_underlay") is True
        self._stamp = (st.st_mtime, st.st_size)
        self._warnings = []
        if self._token and stat.S_IMODE(st.st_mode) & 0o077:
            self._warnings.append(
                f"{self.path} holds the API token but has mode {stat.S_IMODE(st.st_mode):o}; make it 0600"
            )

    def log_sources(self, node_id: str) -> list[LogSource]:
        return file_sources(self._mesh_dir, node_id)

    def start(self) -> None:
        try:
            self._load()
        except FileNotFoundError as exc:
            raise ProviderError(
                f"inventory file {self.path} does not exist (write one with "
                f"`x0-agent local-mesh --inventory {self.path}`)"
            ) from exc
        except (OSError, json.JSONDecodeError, InventoryError) as exc:
            raise ProviderError(f"inventory file {self.path} is unusable: {exc}") from exc

    def refresh(self) -> SourceSnapshot:
        ok, detail = True, f"{len(self._nodes)} nodes"
        try:
            st = os.stat(self.path)
            if self._stamp != (st.st_mtime, st.st_size):
                self._load()
        except FileNotFoundError:
            ok, detail = False, f"{self.path} is gone; showing the last node list read"
        except (OSError, json.JSONDecodeError, InventoryError) as exc:
            ok, detail = False, f"{self.path} unreadable ({exc}); showing the last node list read"
        return SourceSnapshot(
            source=self.label,
            ok=ok,
            detail=detail,
            nodes=list(self._nodes),
            planned_links=list(self._links),
            warnings=list(self._warnings),
            taken_at=time.time(),
        )
