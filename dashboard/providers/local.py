"""`x0dash --local N`: start a LocalMesh (docs/contracts.md §6) for the session and stop it on exit.

Network namespaces when we are root (real node loss and partitions), loopback otherwise. Node loss stops the
node's agent and daemon; `restore_node` starts them again with the same keys and config.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Literal

from dashboard.logs import LogSource, file_sources
from dashboard.providers.base import Provider, ProviderError, SourceSnapshot
from dashboard.providers.inventory import InventoryError, parse_inventory

Mode = Literal["netns", "loopback"]


def default_mode() -> Mode:
    can_netns = os.geteuid() == 0 and (shutil.which("ip") or os.access("/usr/sbin/ip", os.X_OK))
    return "netns" if can_netns else "loopback"


class LocalProvider(Provider):
    name = "local"

    def __init__(
        self, nodes: int, *, topology: str = "auto", mode: Mode | None = None, run_dir: Path | None = None
    ) -> None:
        if nodes < 1:
            raise ProviderError(f"--local needs at least 1 node, got {nodes}")
        self.nodes = nodes
        self.topology = topology
        self.mode: Mode = mode or default_mode()
        self._run_dir = run_dir
        self._own_run_dir: Path | None = None
        # The run dir we made, kept after stop(): a failed drill's agent.log is the post-mortem.
        self.kept_run_dir: Path | None = None
        self._stack = contextlib.ExitStack()
        self._mesh: Any = None
        self._inventory: dict[str, Any] = {}
        self._lost: set[str] = set()
        self._lock = threading.Lock()

    @property
    def api_token(self) -> str | None:
        token = self._inventory.get("api_token")
        return token if isinstance(token, str) else None

    @property
    def allow_clear_underlay(self) -> bool:
        return self._inventory.get("allow_clear_underlay") is True

    @property
    def inventory_path(self) -> Path | None:
        """The running mesh's inventory file (what `x0dash serve --local`'s browser tabs read)."""
        return None if self._mesh is None else self._mesh.inventory_path

    @property
    def mesh(self) -> Any:
        """The running LocalMesh (tests use it to stop nodes behind the dashboard's back)."""
        return self._mesh

    def start(self) -> None:
        try:
            from agent.localmesh import LocalMesh, MeshOptions
        except ImportError as exc:
            raise ProviderError(f"local mesh support is not available: {exc}") from exc
        run_dir = self._run_dir
        if run_dir is None:
            run_dir = self._own_run_dir = Path(tempfile.mkdtemp(prefix="x0dash-local-"))
        try:
            mesh = LocalMesh(
                MeshOptions(nodes=self.nodes, topology=self.topology, mode=self.mode, run_dir=run_dir)
            )
            self._mesh = self._stack.enter_context(mesh)
            self._inventory = dict(self._mesh.inventory)
            parse_inventory(self._inventory)
        except InventoryError as exc:
            self.stop()
            raise ProviderError(f"the local mesh wrote an inventory x0dash cannot read: {exc}") from exc
        except Exception as exc:
            self.stop()
            raise ProviderError(f"could not start a local {self.mode} mesh of {self.nodes} nodes: {exc}") from exc

    def refresh(self) -> SourceSnapshot:
        if self._mesh is None:
            return SourceSnapshot(source=self.label, ok=False, detail="local mesh not running", nodes=[])
        _, nodes, links, _ = parse_inventory(self._inventory)
        with self._lock:
            lost = sorted(self._lost)
        detail = f"{len(nodes)} nodes" + (f"; stopped by a drill: {', '.join(lost)}" if lost else "")
        return SourceSnapshot(
            source=self.label, ok=True, detail=detail, nodes=nodes, planned_links=links, taken_at=time.time()
        )

    @property
    def label(self) -> str:
        mesh = self._inventory.get("mesh")
        return f"local {self.mode} mesh" + (f" {mesh}" if mesh else "") + f" ({self.nodes} nodes)"

    def stop(self) -> None:
        try:
            self._stack.close()
        finally:
            self._mesh = None
            if self._own_run_dir is not None and any(self._own_run_dir.iterdir()):
                self.kept_run_dir = self._own_run_dir

    def log_sources(self, node_id: str) -> list[LogSource]:
        return file_sources(self._inventory.get("mesh_dir"), node_id)

    def node_loss(self, node_id: str, duration_s: float) -> str:
        if self._mesh is None:
            raise ProviderError("local mesh not running")
        with self._lock:
            if node_id in self._lost:
                raise ProviderError(f"{node_id} is already stopped")
            self._mesh.stop_node(node_id)
            self._lost.add(node_id)
        return f"stopped {node_id}'s agent and Yggdrasil daemon (local mesh); the drill restarts them"

    def restore_node(self, node_id: str) -> None:
        with self._lock:
            if node_id not in self._lost or self._mesh is None:
                return
            self._mesh.start_node(node_id)
            self._lost.discard(node_id)
