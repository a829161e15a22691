"""Bring up the planned links this node dials, plus YGGDRASIL_PEERS, and remove the ones that left the plan.

At agent start, whenever the daemon (re)starts or comes back after not answering (`AgentState.daemon_epoch`) and
whenever the members change, every target is `addPeer`ed (an already configured one is harmless).
Until a target's link has been seen up once, it is redialled with a short backoff: a
target whose daemon was not listening yet would otherwise wait for the daemon's own retry (0.4.7: 3 tries 1 s
apart, then a fixed 60 s loop; 0.5: exponential backoff). Once a link has been up, keeping it up is the
daemon's and MAPE-K's job, not this module's: with MAPE-K disabled the daemons alone are measured.

Removal converges whatever happened in between (issue 11 item 2): `added` is never forgotten, not even on a new
daemon epoch, and every URI in it that is no longer a target is removePeer'ed until the daemon confirms (success
or "not configured"), with retries after a failed call. Each snapshot is also compared with the daemon's own
peer list: an outbound link to a URI this agent added and no longer wants is removed again.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field

from agent.members import peer_uri, strip_query
from agent.state import AgentState
from agent.views import MeshContext
from agent.yggdrasil.client import AdminSession
from agent.yggdrasil.errors import AdminCommandError, AdminError
from agent.yggdrasil.models import DaemonSnapshot

log = logging.getLogger("x0.peering")

BACKOFF_FIRST_S = 0.5
BACKOFF_FACTOR = 1.6
BACKOFF_MAX_S = 15.0
# Dials go out in rounds over one admin connection each, at most this many a round (the rest follow at once).
DIAL_BATCH = 64
# When many targets are down (a large plan whose members are not up yet), their redials share this budget: a
# target is redialled at most every (targets down / DIALS_PER_S) s, so the daemon and the agent's event loop see a
# flat redial rate. At 1,000 unreachable targets the backoff alone made 66-500 remove+add pairs a second, a third
# of the agent's event loop.
DIALS_PER_S = 20.0
# A dial is judged by a snapshot taken at least this long after it: a TLS link takes a few hundred ms to come
# up, and on 0.4 a redial is removePeer + addPeer, which dropped the link the first dial had just made (seen after
# every daemon start: each peer's first link replaced by a second one about a second later, delaying repair).
DIAL_SETTLE_S = 1.0


@dataclass(frozen=True, slots=True)
class DialTarget:
    uri: str
    node_id: str | None  # None for a YGGDRASIL_PEERS entry


def dial_targets(ctx: MeshContext) -> list[DialTarget]:
    """What this node addPeers: its planned dials (listen_uri pinned with ?key= when known), then static peers.
    Members whose entry cannot be dialled (`MeshContext.not_dialled`: bad or shared listen_uri, this node's own
    key) are left out."""
    out: list[DialTarget] = []
    for node_id in ctx.members.dials(ctx.node_id):
        member = ctx.members.by_id[node_id]
        if ctx.not_dialled(node_id) is not None:
            continue
        uri = peer_uri(member)
        if uri is not None:
            out.append(DialTarget(uri=uri, node_id=node_id))
    known = {t.uri for t in out}
    out.extend(DialTarget(uri=u, node_id=None) for u in ctx.static_peers if u not in known)
    return out


class UpLinks:
    """The snapshot's up links indexed by key and by dialled URI, built once per reconcile (O(links))."""

    def __init__(self, snapshot: DaemonSnapshot) -> None:
        self.keys = {link.key for link in snapshot.peers if link.up and link.key}
        outbound = [link for link in snapshot.peers if link.remote and link.inbound is not True]
        self.remotes = {strip_query(link.remote) for link in outbound if link.up and link.remote}
        # Every outbound URI the daemon lists (0.5 lists configured links that are down too; 0.4 only up ones).
        self.outbound = {strip_query(link.remote) for link in outbound if link.remote}

    def has(self, target: DialTarget, ctx: MeshContext) -> bool:
        key = ctx.key_of(target.node_id) if target.node_id else None
        return bool(key and key in self.keys) or strip_query(target.uri) in self.remotes


def target_up(target: DialTarget, snapshot: DaemonSnapshot, ctx: MeshContext) -> bool:
    """A link to the target is up: same key (planned member with a known key) or same dialled URI."""
    return UpLinks(snapshot).has(target, ctx)


def is_not_configured(exc: AdminCommandError) -> bool:
    # 0.4: "peer not configured"; 0.5: "peer is not configured".
    return "not configured" in exc.error


def is_already_configured(exc: AdminCommandError) -> bool:
    # 0.4: "peer already configured"; 0.5: "peer is already configured" (and it kicks a redial).
    return "already configured" in exc.error


@dataclass
class _Pending:
    target: DialTarget
    attempts: int = 0
    next_try: float = 0.0
    last_error: str | None = None
    dialled_at: float | None = None  # monotonic, our latest addPeer of it


@dataclass
class _Removal:
    attempts: int = 0
    next_try: float = 0.0


@dataclass
class Peering:
    state: AgentState
    # uri -> node id: what this agent addPeer'ed and has not seen removed since (kept across daemon epochs).
    added: dict[str, str | None] = field(default_factory=dict)
    _pending: dict[str, _Pending] = field(default_factory=dict)
    _removing: dict[str, _Removal] = field(default_factory=dict)
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
        if state.snapshot_epoch != state.daemon_epoch:
            # A daemon restarted behind our back (a sidecar's script) is noted before the monitor's next pass: the
            # snapshot in hand is the old daemon's, whose links made every target look up, and nothing was
            # re-added (a Nomad sidecar test had no link for 30 s). Wait for the new daemon's own snapshot.
            return
        ctx = state.context()
        key = (state.daemon_epoch, state.members.generation)
        targets = {t.uri: t for t in dial_targets(ctx)}
        snapshot = state.snapshot
        links = UpLinks(snapshot)
        if key != self._applied:
            self._applied = key
            # Not `added.clear()` on a new daemon: a snapshot that failed does not mean the daemon forgot its
            # peers, and forgetting them here left removed members dialled for ever. Re-adding is harmless.
            for uri in self.added:
                if uri not in targets:
                    self._removing.setdefault(uri, _Removal())
            self._pending = {uri: _Pending(t) for uri, t in targets.items()}
        # The daemon's own list: an outbound link we added and no longer want (a redial raced a removal, or the
        # daemon came back with it) is removed again.
        for uri in self.added:
            if uri not in targets and uri not in self._removing and strip_query(uri) in links.outbound:
                self._removing[uri] = _Removal()
        for uri in [u for u in self._removing if u in targets]:
            del self._removing[uri]  # wanted again (members changed back)
        now = time.monotonic()
        await self._remove_unplanned(now, ctx)
        due: list[_Pending] = []
        for uri, pending in list(self._pending.items()):
            if uri in self.added and links.has(pending.target, ctx):
                log.info("link to %s is up", pending.target.node_id or uri)
                del self._pending[uri]
                continue
            settled = pending.dialled_at is None or (
                state.snapshot_mono is not None and state.snapshot_mono - pending.dialled_at >= DIAL_SETTLE_S
            )
            if now >= pending.next_try and settled:
                due.append(pending)
        if due:
            await self._dial_round(due[:DIAL_BATCH])

    async def _dial_round(self, due: list[_Pending]) -> None:
        """Dial `due` over one admin connection. A failure of the connection itself (not a command error) ends
        the round: the others get the same error and their backoff instead of a timeout each."""
        async with self.state.admin.session() as s:
            for i, pending in enumerate(due):
                try:
                    await self._dial(s, pending)
                except AdminCommandError as exc:
                    self._failed(pending, exc)
                except AdminError as exc:
                    for p in due[i:]:
                        self._failed(p, exc)
                    return

    async def _dial(self, s: AdminSession, pending: _Pending) -> None:
        target = pending.target
        first = target.uri not in self.added
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
        pending.dialled_at = time.monotonic()
        pending.last_error = None
        if first:
            log.info("addPeer %s (%s)", target.uri, target.node_id or "YGGDRASIL_PEERS")
        self._back_off(pending)

    def _failed(self, pending: _Pending, exc: AdminError) -> None:
        pending.last_error = str(exc)
        log.warning("addPeer %s failed: %s", pending.target.uri, exc)
        self._back_off(pending)

    def _back_off(self, pending: _Pending) -> None:
        floor = len(self._pending) / DIALS_PER_S  # 0.5 s at 10 targets down: only large plans feel it
        backoff = BACKOFF_FIRST_S * BACKOFF_FACTOR**pending.attempts
        delay = max(floor, min(BACKOFF_MAX_S, backoff))
        if backoff >= BACKOFF_MAX_S or floor > backoff:
            # Targets dialled together would stay in step for ever: spread them over the delay's last tenth.
            delay *= random.uniform(0.9, 1.0)
        pending.attempts += 1
        pending.next_try = time.monotonic() + delay

    async def _remove_unplanned(self, now: float, ctx: MeshContext) -> None:
        due = [u for u, r in self._removing.items() if r.next_try <= now]
        if not due:
            return
        removed = failed = 0
        try:
            async with self.state.admin.session() as s:
                for uri in due:
                    owner = self.added.get(uri)
                    if owner is not None and owner in ctx.temporary:
                        # MAPE-K now uses this member as a stand-in over the same URI: its link, not ours.
                        self._forget(uri)
                        continue
                    try:
                        await s.remove_peer(uri)
                        removed += 1
                        log.info("removePeer %s (%s no longer planned)", uri, owner or "static peer")
                    except AdminCommandError as exc:
                        if not is_not_configured(exc):
                            failed += 1
                            self._retry_removal(uri, exc)
                            continue
                    self._forget(uri)
        except AdminError as exc:
            failed += 1
            for uri in due:
                if uri in self._removing:
                    self._retry_removal(uri, exc)
        if failed:
            log.warning("removePeer: %d removed, %d to retry", removed, failed)

    def _retry_removal(self, uri: str, exc: AdminError) -> None:
        r = self._removing[uri]
        r.next_try = time.monotonic() + min(BACKOFF_MAX_S, BACKOFF_FIRST_S * BACKOFF_FACTOR**r.attempts)
        r.attempts += 1
        log.debug("removePeer %s failed (%s), retrying", uri, exc)

    def _forget(self, uri: str) -> None:
        self.added.pop(uri, None)
        self._removing.pop(uri, None)

    async def run(self) -> None:
        gen = -1
        while True:
            gen = await self.state.wait_changed(gen, within=self._next_wait())
            try:
                await self.reconcile()
            except AdminError as exc:  # reconcile handles these per call; this is a last guard
                log.warning("peering: %s", exc)

    def _next_wait(self) -> float | None:
        tries = [p.next_try for p in self._pending.values()] + [r.next_try for r in self._removing.values()]
        if not tries:
            return None
        return max(0.05, min(tries) - time.monotonic())

    @property
    def pending(self) -> list[str]:
        return list(self._pending)

    @property
    def removing(self) -> list[str]:
        """URIs this agent added, no longer wants, and has not yet seen the daemon drop."""
        return list(self._removing)


async def run_peering(state: AgentState) -> None:
    peering = state.peering or Peering(state)
    state.peering = peering
    await peering.run()
