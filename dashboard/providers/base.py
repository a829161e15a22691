"""The one interface every node source implements (local mesh, inventory file, Nomad).

A provider answers "which nodes are there and how do I reach their agents"; polling the agents themselves is
the poller's job (dashboard/poller.py), the same for every provider. Providers are synchronous-friendly: the
Nomad one runs python-nomad in thread workers, so every method here may block and is called off the UI thread.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Literal

import msgspec

from dashboard.logs import MAX_LOG_BYTES, LogSource, read_tail

# leader-loss: a node loss of whichever node leads the Raft group when the drill starts (issue 9).
DrillKind = Literal["blackhole", "partition", "node-loss", "leader-loss", "restart-alloc", "drain"]
# Drills only a scheduler source can make (Nomad): offered only when `Provider.source_drill_kinds` lists them.
SOURCE_DRILL_KINDS: tuple[DrillKind, ...] = ("restart-alloc", "drain")


class NomadPlacement(msgspec.Struct, kw_only=True):
    """Nomad's view of one mesh node (only for the Nomad provider)."""

    alloc_id: str
    alloc_name: str
    client_status: str  # pending|running|complete|failed|lost|unknown
    desired_status: str  # run|stop|evict
    node_id: str
    node_name: str | None = None
    datacenter: str | None = None
    node_status: str | None = None  # initializing|ready|down|disconnected
    eligibility: str | None = None  # eligible|ineligible
    drain: bool | None = None


class NodeTarget(msgspec.Struct, kw_only=True):
    id: str  # mesh node id (agent NODE_ID)
    agent_url: str | None  # None when the source knows the node but not how to reach its agent
    metrics_url: str | None = None
    overlay_url: str | None = None
    yggdrasil_address: str | None = None
    nomad: NomadPlacement | None = None


class SourceSnapshot(msgspec.Struct, kw_only=True):
    """One refresh of a provider."""

    source: str  # human label, e.g. "local mesh (netns, 3 nodes)", "inventory run/inv.json", "nomad http://…"
    ok: bool
    detail: str  # why not ok, or a short status line
    nodes: list[NodeTarget]
    planned_links: list[tuple[str, str]] = []
    # Nomad's view that disagrees with reality: allocation running but agent unhealthy, nodes without an alloc…
    warnings: list[str] = []
    taken_at: float = 0.0


class ProviderError(Exception):
    """A provider could not start or refresh; the message is shown to the operator as is."""


class Provider(abc.ABC):
    """Lifecycle: start() once, refresh() repeatedly (never concurrently), stop() once (also after a failed
    start). Methods may block; callers run them in thread workers."""

    name: str = "provider"

    @property
    def api_token(self) -> str | None:
        """Bearer token for the agents' mutating endpoints (drills), when the source knows it."""
        return None

    @property
    def allow_clear_underlay(self) -> bool:
        """The source says the mesh is on one host, so the token may go to its agents in clear (a local mesh's
        inventory). Never true for a real cluster."""
        return False

    def start(self) -> None:  # noqa: B027 - optional hook
        """Prepare (e.g. start a local mesh). Raise ProviderError with an operator-facing message."""

    @abc.abstractmethod
    def refresh(self) -> SourceSnapshot:
        """Current node list. Must not raise for an unreachable backend: return ok=False with detail."""

    def stop(self) -> None:  # noqa: B027 - optional hook
        """Release everything start() took (stop the local mesh, close sessions)."""

    def node_loss(self, node_id: str, duration_s: float) -> str:
        """Make `node_id` disappear for `duration_s` (or until restore_node). Returns a description of what was
        done. Default: not supported by this source (the drill engine then uses the agent's `kill-daemon`).
        The drill engine calls restore_node when the duration is over or the drill is aborted; a source whose
        backend brings the node back by itself (Nomad reschedules a stopped allocation) may leave it a no-op."""
        raise ProviderError(f"{self.name}: node loss is not supported by this source")

    def restore_node(self, node_id: str) -> None:  # noqa: B027 - optional hook
        """Undo node_loss (duration over, or abort). Must be idempotent. Default: nothing to undo."""

    @property
    def supports_node_loss(self) -> bool:
        """True when this source overrides node_loss (drills then use it instead of the agent's kill-daemon)."""
        return type(self).node_loss is not Provider.node_loss

    # A source whose scheduler replaces a lost node by itself (Nomad places a new allocation): a node-loss drill
    # then is over only once the node runs on a new allocation whose agent is healthy.
    replaces_lost_nodes: bool = False

    def add_change_listener(self, listener: Callable[[], None]) -> None:  # noqa: B027 - optional hook
        """Call `listener` (from any thread) when the source learns its node list changed, so the dashboard
        refreshes at once instead of at its next poll. Default: a source without change notifications."""

    def restart_allocation(self, node_id: str, task: str | None = None) -> str:
        """Restart the scheduler's allocation of `node_id` in place (all tasks, or `task`)."""
        raise ProviderError(f"{self.name}: restarting an allocation needs a scheduler source (Nomad)")

    def drain_preview(self, node_id: str, deadline_s: float) -> str:
        """What drain_node would do, said exactly (which scheduler node, which allocations, the deadline)."""
        raise ProviderError(f"{self.name}: draining a node needs a scheduler source (Nomad)")

    def drain_node(self, node_id: str, deadline_s: float) -> str:
        """Drain the scheduler node running `node_id`; undo_drain gives back its eligibility."""
        raise ProviderError(f"{self.name}: draining a node needs a scheduler source (Nomad)")

    def undo_drain(self, node_id: str) -> str:
        """Cancel drain_node and restore the node's eligibility from before it."""
        raise ProviderError(f"{self.name}: draining a node needs a scheduler source (Nomad)")

    def log_sources(self, node_id: str) -> list[LogSource]:
        """Where this node's logs can be read (the log view); default: none known."""
        return []

    def read_log(self, source: LogSource, max_bytes: int = MAX_LOG_BYTES) -> str:
        """The tail of one of log_sources(); ProviderError with the reason when it cannot be read."""
        if source.path is None:
            raise ProviderError(f"{self.name}: cannot read {source.name} ({source.where})")
        try:
            return read_tail(source.path, max_bytes)
        except OSError as exc:
            raise ProviderError(f"cannot read {source.where}: {exc.strerror or exc}") from exc

    @property
    def source_drill_kinds(self) -> tuple[DrillKind, ...]:
        """The SOURCE_DRILL_KINDS this source implements (by overriding their methods)."""
        kinds: list[DrillKind] = []
        if type(self).restart_allocation is not Provider.restart_allocation:
            kinds.append("restart-alloc")
        if type(self).drain_node is not Provider.drain_node and type(self).undo_drain is not Provider.undo_drain:
            kinds.append("drain")
        return tuple(kinds)
