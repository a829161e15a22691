"""Bring up the planned links this node dials, plus YGGDRASIL_PEERS.

At agent start, whenever the daemon (re)starts (`AgentState.daemon_epoch`) and whenever the members change, every
target is `addPeer`ed. Until a target's link has been seen up once, it is redialled with a short backoff: a
target whose daemon was not listening yet would otherwise wait for the daemon's own retry (0.4.7: 3 tries 1 s
apart, then a fixed 60 s loop; 0.5: exponential backoff). Once a link has been up, keeping it up is the
daemon's and MAPE-K's job, not this module's: with MAPE-K disabled the daemons alone are measured.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from agent.members import peer_uri, strip_query
from agent.state import AgentState
from agent.views import MeshContext
from agent.yggdrasil.errors import AdminCommandError, AdminError
from agent.yggdrasil.models import DaemonSnapshot

log = logging.getLogger("x0.peering")

BACKOFF_FIRST_S = 0.5
BACKOFF_FACTOR = 1.6
BACKOFF_MAX_S = 15.0


@dataclass(frozen=True, slots=True)
class DialTarget:
    uri: str
    node_id: str | None  # None for a YGGDRASIL_PEERS entry


def dial_targets(ctx: MeshContext) -> list[DialTarget]:
    """What this node addPeers: its planned dials (listen_uri pinned with ?key= when known), then static peers."""
    out: list[DialTarget] = []
    for node_id in ctx.members.dials(ctx.node_id):
        member = ctx.members.by_id[node_id]
        uri = peer_uri(member)
        if uri is not None:
            out.append(DialTarget(uri=uri, node_id=node_id))
    known = {t.uri for t in out}
    out.extend(DialTarget(uri=u, node_id=None) for u in ctx.static_peers if u not in known)
    return out


def target_up(target: DialTarget, snapshot: DaemonSnapshot, ctx: MeshContext) -> bool:
    """A link to the target is up: same key (planned member with a known key) or same dialled URI."""
    key = ctx.key_of(target.node_id) if target.node_id else None
    remote = strip_query(target.uri)
    for link in snapshot.peers:
        if not link.up:
            continue
        if key and link.key == key:
            return True
        if link.remote and link.inbound is not True and strip_query(link.remote) == remote:
            return True
    return False


def is_already_configured(exc: AdminCommandError) -> bool:
    # 0.4: "peer already configured"; 0.5: "peer is already configured" (and it kicks a redial).
    return "already configured" in exc.error


@dataclass
class _Pending:
    target: DialTarget
    attempts: int = 0
    next_try: float = 0.0
    last_error: str | None = None


@dataclass
class Peering:
    state: AgentState
    added: dict[str, str | None] = field(default_factory=dict)  # uri -> node id, what this agent addPeer'ed
    _pending: dict[str, _Pending] = field(default_factory=dict)
    _applied: tuple[int, int] | None = None

    def uri_for(self, node_id: str) -> str | None:
        """The URI this agent dials `node_id` with (MAPE-K's redial/restore uses the same string)."""
        for uri, owner in self.added.items():
            if owner == node_id:
                return uri
        member = self.state.members.members.by_id.get(node_id)
        return peer_uri(member) if member else None

    async def reconcile(self) -> None:
        """One step: react to a new daemon epoch or members generation, then (re)dial pending targets."""
        state = self.state
        if not state.last_ok or state.snapshot is None:
            return  # nothing to talk to; the next epoch re-adds everything
        ctx = state.context()
        key = (state.daemon_epoch, state.members.generation)
        targets = {t.uri: t for t in dial_targets(ctx)}
        if key != self._applied:
            new_daemon = self._applied is None or key[0] != self._applied[0]
            self._applied = key
            if new_daemon:
                self.added.clear()  # a fresh daemon has no runtime peers
            await self._remove_unplanned(set(targets))
            self._pending = {uri: _Pending(t) for uri, t in targets.items()}
        now = time.monotonic()
        snapshot = state.snapshot
        for uri, pending in list(self._pending.items()):
            if uri in self.added and target_up(pending.target, snapshot, ctx):
                log.info("link to %s is up", pending.target.node_id or uri)
                del self._pending[uri]
                continue
            if now < pending.next_try:
                continue
            await self._dial(pending)

    async def _dial(self, pending: _Pending) -> None:
        target = pending.target
        first = target.uri not in self.added
        try:
            async with self.state.admin.session() as s:
                if not first and self.state.snapshot and self.state.snapshot.api_version == "0.4":
                    # 0.4 ignores addPeer of a configured URI; removing it first forces an immediate dial.
                    try:
                        await s.remove_peer(target.uri)
                    except AdminCommandError:
                        pass
                try:
                    await s.add_peer(target.uri)
                except AdminCommandError as exc:
                    if not is_already_configured(exc):
                        raise
            self.added[target.uri] = target.node_id
            pending.last_error = None
            if first:
                log.info("addPeer %s (%s)", target.uri, target.node_id or "YGGDRASIL_PEERS")
        except AdminError as exc:
            pending.last_error = str(exc)
            log.warning("addPeer %s failed: %s", target.uri, exc)
        delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * BACKOFF_FACTOR**pending.attempts)
        pending.attempts += 1
        pending.next_try = time.monotonic() + delay

    async def _remove_unplanned(self, wanted: set[str]) -> None:
        for uri in [u for u in self.added if u not in wanted]:
            try:
                await self.state.admin.remove_peer(uri)
                log.info("removePeer %s (no longer planned)", uri)
            except AdminCommandError:
                pass
            except AdminError as exc:
                log.warning("removePeer %s failed: %s", uri, exc)
                continue
            del self.added[uri]

    async def run(self) -> None:
        gen = -1
        while True:
            gen = await self.state.wait_changed(gen, within=self._next_wait())
            try:
                await self.reconcile()
            except AdminError as exc:  # reconcile handles these per call; this is a last guard
                log.warning("peering: %s", exc)

    def _next_wait(self) -> float | None:
        if not self._pending:
            return None
        soonest = min(p.next_try for p in self._pending.values())
        return max(0.05, soonest - time.monotonic())

    @property
    def pending(self) -> list[str]:
        return list(self._pending)


async def run_peering(state: AgentState) -> None:
    peering = state.peering or Peering(state)
    state.peering = peering
    await peering.run()
