"""pysyncobj behind one small async interface.

pysyncobj runs its own thread (autoTick): commands are queued from the event loop and their callbacks come back
on pysyncobj's thread, so each call is a future resolved with `call_soon_threadsafe`. Status is read in
pysyncobj's own thread (an on-tick callback) and published as an immutable `RaftStatus`, because `getStatus()`
walks dicts that thread mutates.

Settings that matter (contracts §7, docs in consensus.md):
- `password` always (messages are pickles; without it anyone who reaches the port runs code in the agent);
- `bindAddress` = the node's own Raft address (pysyncobj would otherwise bind `::`, every interface);
- `commandsWaitLeader=False`: a leaderless node fails a command at once instead of queueing it, so a request
  answered 503 never applies later from that queue (we retry ourselves until the write timeout);
- `appendEntriesUseBatch=False`: each command is sent to the followers at once instead of on the next 100 ms
  heartbeat (write latency), and the pipe notifier wakes the poller when a command is queued;
- `leaderFallbackTimeout` 2 s (default 30 s): a leader cut off from the majority steps down quickly, so
  `/cluster` stops claiming it leads and its writes report "no quorum";
- `dynamicMembershipChange=True` (one change at a time, done by the service's leader loop);
- `useFork=False`: no fork() of a multi-threaded asyncio process to write snapshots.

The SyncObj is `SafeSyncObj` (pysyncobj's log-matching bugs fixed there). A replica it flags as diverged (an
entry it applied contradicts the leader's log) is rebuilt: the engine stops it, deletes its journal and snapshot
but keeps the term and vote (Raft's promise not to vote twice in a term survives), and starts it empty, so the
leader sends it the whole state again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import mmap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf
from pysyncobj.journal import MetaStorer

from agent.consensus.safe_syncobj import SafeSyncObj
from agent.consensus.store import KvState, Result
from agent.memory import release_memory

log = logging.getLogger("x0.consensus")

# Raft timings: pysyncobj's defaults (election timeout random in 0.4..1.4 s, heartbeat 0.1 s).
RAFT_MIN_TIMEOUT = 0.4
RAFT_MAX_TIMEOUT = 1.4
HEARTBEAT = 0.1
LEADER_FALLBACK = 2.0
STATUS_EVERY = 0.05
RETRY_PAUSE = 0.05
MAX_BATCH = 256  # ops per log entry
MAX_BATCH_BYTES = 1024 * 1024  # and about this many value bytes (a lone larger op still goes alone)
# Compact the log once the values applied since the last compaction reach this, or a quarter of the store if
# more (each compaction writes the whole store: amortized O(1) per byte written).
COMPACT_AFTER_BYTES = 2 * 1024 * 1024
# And once writes pause: a store at rest then holds its values once, whatever was written last.
# At most 1/64 of the store held twice then: a store written slowly is not rewritten whole for every value.
IDLE_COMPACT_AFTER_S = 2.0
IDLE_COMPACT_MIN_BYTES = 64 * 1024
IDLE_COMPACT_STORE_DIVISOR = 64
RELEASE_AFTER_S = 0.5  # after forcing a compaction: pysyncobj serializes on its next ticks
JOURNAL_DROP_EVERY_S = 1.0  # see drop_journal_pages
_RETRYABLE = {
    FAIL_REASON.MISSING_LEADER,
    FAIL_REASON.NOT_LEADER,
    FAIL_REASON.LEADER_CHANGED,
    FAIL_REASON.DISCARDED,
    FAIL_REASON.QUEUE_FULL,
    # The leader changed between taking the command and reporting its log index: the request id makes the
    # retry safe (the store returns the first result if it had applied).
    FAIL_REASON.UNKNOWN_OUTCOME,
}
ROLES = {0: "follower", 1: "candidate", 2: "leader"}


class RaftUnavailable(Exception):
    """The group cannot commit now; `str()` names why (API: 503).

    `outcome_unknown`: the command reached a Raft log before the answer was lost (timed out waiting for commit,
    or the leader changed while it was in flight), so it may still be applied, once (the request id dedups
    retries); False means it was refused before reaching any log (no leader, not the leader, queue full) or
    was overwritten there (discarded), and never applies."""

    def __init__(self, reason: str, *, outcome_unknown: bool = False) -> None:
        super().__init__(reason)
        self.outcome_unknown = outcome_unknown


def derive_password(secret: str) -> str:
    """pysyncobj's password (it derives a Fernet key with PBKDF2 from it): never the raw token itself."""
    return hashlib.sha256(b"x0tta6bl4 raft v1\0" + secret.encode()).hexdigest()


def drop_journal_pages(obj: SyncObj) -> bool:
    """Unmap the resident pages of pysyncobj's journal file; call on its own thread (the engine does, after each
    compaction and every second).

    The journal is a shared mapping of a file that doubles when full and is never shrunk: every page written
    since start stayed in the agent's RSS (3 MB after a 10 MiB store was written), although pysyncobj serves the
    log from its copy in memory and reads the file only when it starts or truncates the log. The file keeps its
    content (the page cache holds it until written back); the next access maps a page again. False when this
    pysyncobj keeps no file journal, or names its attributes otherwise (the lock pins 0.3.17)."""
    journal = getattr(obj, "_SyncObj__raftLog", None)
    file = getattr(journal, "_FileJournal__journalFile", None)
    mapping = getattr(file, "_ResizableFile__mm", None)
    if not isinstance(mapping, mmap.mmap):
        return False
    mapping.madvise(mmap.MADV_DONTNEED)
    return True


@dataclass(frozen=True)
class RaftStatus:
    role: str = "follower"
    term: int = 0
    leader: str | None = None  # Raft address
    commit_index: int = 0
    applied_index: int = 0
    leader_commit_index: int | None = None
    has_quorum: bool = False
    voters: tuple[str, ...] = ()  # every voter's address, this node included
    connected: frozenset[str] = frozenset()  # voters this node is connected to (self included)
    match_index: dict[str, int] = field(default_factory=dict)  # leader only
    last_contact_mono: float | None = None  # monotonic time the leader was last seen connected (now if leader)
    leader_changes: int = 0
    ready: bool = False  # transport bound
    rebuilds: int = 0  # times this replica was rebuilt from the leader after diverging


class RaftEngine:
    def __init__(
        self,
        self_address: str,
        others: list[str],
        *,
        secret: str,
        data_dir: Path | None,
        write_timeout: float,
        on_status: Callable[[RaftStatus], None] | None = None,
    ) -> None:
        self.address = self_address
        self.initial_others = [o for o in others if o != self_address]
        self.write_timeout = write_timeout
        self.data_dir = data_dir
        self.state = KvState()
        self.status = RaftStatus(voters=(self_address, *self.initial_others))
        self._on_status = on_status
        self._secret = secret
        self._obj: SafeSyncObj | None = None
        self._rebuilding = False
        self._rebuild_task: asyncio.Task[None] | None = None
        self._stopped = False
        self.rebuilds = 0
        self._last_status = 0.0
        self._last_leader: str | None = None
        self._changes = 0
        self._contact: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[tuple[tuple[Any, ...], asyncio.Future[Any], float]] = []
        self._draining: asyncio.Task[None] | None = None
        self._release_at: float | None = None  # give memory back then (after a log compaction)
        self._logged_seen = 0  # state.logged_bytes at the last tick, and when it last changed
        self._logged_at = 0.0
        self._journal_drop_at = 0.0

    # --- lifecycle ------------------------------------------------------------------------------------------

    def _conf(self) -> SyncObjConf:
        journal = dump = None
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            journal = str(self.data_dir / "journal.bin")
            dump = str(self.data_dir / "snapshot.bin")
        return SyncObjConf(
            password=derive_password(self._secret),
            bindAddress=self.address,
            commandsWaitLeader=False,
            appendEntriesUseBatch=False,
            raftMinTimeout=RAFT_MIN_TIMEOUT,
            raftMaxTimeout=RAFT_MAX_TIMEOUT,
            appendEntriesPeriod=HEARTBEAT,
            leaderFallbackTimeout=LEADER_FALLBACK,
            dynamicMembershipChange=True,
            useFork=False,
            journalFile=journal,
            fullDumpFile=dump,
            # An IP literal resolves to itself; prefer nothing so IPv6 overlay addresses are kept as they are.
            preferredAddrType=None,
            connectionRetryTime=1.0,
            bindRetryTime=0.5,
        )

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        conf = self._conf()
        # The constructor opens the journal and starts the tick thread; keep that off the event loop.
        self._obj = await asyncio.to_thread(
            SafeSyncObj, self.address, self.initial_others, conf, consumers=[self.state]
        )
        self._obj.addOnTickCallback(self._on_tick)
        log.info("raft engine on %s (voters: %s)", self.address, ", ".join([self.address, *self.initial_others]))

    async def stop(self) -> None:
        """Final. A rebuild under way ends first: cancelled, it could leave a SyncObj made in a thread running."""
        self._stopped = True
        task = self._rebuild_task
        if task is not None and not task.done():
            with contextlib.suppress(Exception):
                await task
        await self._stop_obj()

    async def _stop_obj(self) -> None:
        obj, self._obj = self._obj, None
        if obj is None:
            return
        obj.removeOnTickCallback(self._on_tick)
        await asyncio.to_thread(obj.destroy_synchronous)

    @property
    def running(self) -> bool:
        return self._obj is not None

    def _start_rebuild(self) -> None:
        if not self._stopped:
            self._rebuild_task = asyncio.get_running_loop().create_task(self._rebuild(), name="x0-raft-rebuild")

    async def _rebuild(self) -> None:
        """Restart a diverged replica empty (see the module doc); its voters are the configuration it had."""
        others = [v for v in self.status.voters if v != self.address] or self.initial_others
        try:
            await self._stop_obj()
            self._clear_replica()
            self.state = KvState()
            self.initial_others = others
            self.rebuilds += 1
            if self._stopped:
                return
            await self.start()
            log.warning("raft replica rebuilt (%d so far): it takes the leader's state again", self.rebuilds)
        finally:
            self._rebuilding = False

    def _clear_replica(self) -> None:
        if self.data_dir is None:
            log.warning("raft replica rebuilt without a data dir: its term and vote are forgotten")
            return
        journal = self.data_dir / "journal.bin"
        meta = MetaStorer(str(journal) + ".meta")
        kept = {k: v for k, v in meta.getMeta().items() if k in ("currentTerm", "votedForNodeId")}
        for name in ("journal.bin", "snapshot.bin", "snapshot.bin.tmp"):
            (self.data_dir / name).unlink(missing_ok=True)
        meta.storeMeta(kept)  # the commit index of the log it no longer has goes; the term and vote stay

    # --- status (pysyncobj's thread) ------------------------------------------------------------------------

    def _compact(self, obj: SyncObj, now: float) -> None:
        """pysyncobj compacts after 5000 entries or 300 s. A store of large values would stay twice in memory
        (state + log) until then, so every voter also compacts by the value bytes it applied: once a quarter of the
        store (at least 2 MiB) was written since the last compaction, and once writes pause for 2 s after 1/64 of
        the store (at least 64 KiB). Once compacted, the freed log goes back to the system (glibc keeps freed heap
        pages otherwise)."""
        state = self.state
        if state.logged_bytes != self._logged_seen:
            self._logged_seen, self._logged_at = state.logged_bytes, now
        full = state.logged_bytes >= max(COMPACT_AFTER_BYTES, state.size // 4)
        idle = (
            state.logged_bytes >= max(IDLE_COMPACT_MIN_BYTES, state.size // IDLE_COMPACT_STORE_DIVISOR)
            and now - self._logged_at >= IDLE_COMPACT_AFTER_S
        )
        if full or idle:
            state.logged_bytes = self._logged_seen = 0
            obj.forceLogCompaction()
            self._release_at = now + RELEASE_AFTER_S
        elif self._release_at is not None and now >= self._release_at:
            self._release_at = None
            dropped = ", journal pages dropped" if drop_journal_pages(obj) else ""
            log.info("raft log compacted: %s%s", release_memory(), dropped)
        elif now >= self._journal_drop_at:
            self._journal_drop_at = now + JOURNAL_DROP_EVERY_S
            drop_journal_pages(obj)

    def _on_tick(self) -> None:
        now = time.monotonic()
        if self._obj is not None:
            self._compact(self._obj, now)
            if self._obj.diverged is not None and not self._rebuilding and self._loop is not None:
                self._rebuilding = True
                try:
                    self._loop.call_soon_threadsafe(self._start_rebuild)
                except RuntimeError:  # loop closed while stopping
                    pass
        if now - self._last_status < STATUS_EVERY:
            return
        self._last_status = now
        obj = self._obj
        if obj is None:
            return
        try:
            st = obj.getStatus()
        except RuntimeError:  # a dict changed size under us: next tick
            return
        leader = st.get("leader")
        leader_addr = leader.address if leader is not None else None
        if leader_addr != self._last_leader:
            self._changes += 1
            self._last_leader = leader_addr
        role = ROLES.get(st.get("state", 0), "follower")
        connected = {self.address}
        voters = [self.address]
        match: dict[str, int] = {}
        for node in obj.otherNodes:
            voters.append(node.address)
            if obj.isNodeConnected(node):
                connected.add(node.address)
            if role == "leader":
                m = st.get(f"match_idx_server_{node.id}")
                if m is not None:
                    match[node.address] = int(m)
        if role == "leader" or (leader_addr is not None and leader_addr in connected):
            self._contact = now
        status = RaftStatus(
            role=role,
            term=int(st.get("raft_term", 0)),
            leader=leader_addr,
            commit_index=int(st.get("commit_idx", 0)),
            applied_index=int(st.get("last_applied", 0)),
            leader_commit_index=st.get("leader_commit_idx"),
            has_quorum=bool(st.get("has_quorum")),
            voters=tuple(sorted(voters)),
            connected=frozenset(connected),
            match_index=match,
            last_contact_mono=self._contact,
            leader_changes=self._changes,
            ready=True,
            rebuilds=self.rebuilds,
        )
        self.status = status
        if self._on_status is not None and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._on_status, status)
            except RuntimeError:  # loop closed while stopping
                pass

    def why_unavailable(self, waited: float | None = None) -> str:
        st = self.status
        seen = f"this node sees {len(st.connected)} of {len(st.voters)} voters"
        if not st.ready:
            return f"Raft not ready: cannot bind {self.address} yet"
        if st.leader is None:
            return f"no leader (election in progress, or no quorum: {seen})"
        if st.role == "leader" and not st.has_quorum:
            return f"no quorum: the leader {seen}"
        if waited is not None:
            return f"timed out after {waited:g} s waiting for commit (leader {st.leader}; {seen})"
        return f"unavailable ({seen})"

    # --- commands -------------------------------------------------------------------------------------------

    async def _call(self, method: Callable[..., None], *args: Any, budget_s: float | None = None) -> Any:
        if self._obj is None:
            raise RaftUnavailable("Raft engine is not running")
        loop = asyncio.get_running_loop()
        budget = self.write_timeout if budget_s is None else budget_s
        deadline = loop.time() + budget
        last_err: int | None = None
        in_flight = False  # an earlier attempt may sit in some log: a later refusal does not undo it
        while True:
            fut: asyncio.Future[tuple[Any, int]] = loop.create_future()

            def done(res: Any, err: int, fut: asyncio.Future[tuple[Any, int]] = fut) -> None:
                def settle() -> None:
                    if not fut.done():
                        fut.set_result((res, err))

                try:
                    loop.call_soon_threadsafe(settle)
                except RuntimeError:
                    pass

            remaining = deadline - loop.time()
            if remaining <= 0:  # never hand pysyncobj a command nobody waits for: it could apply unanswered
                raise RaftUnavailable(
                    f"timed out after {budget:g} s before reaching Raft ({self.why_unavailable()})",
                    outcome_unknown=in_flight,
                )
            method(*args, callback=done)
            try:
                async with asyncio.timeout(max(0.0, remaining)):
                    res, err = await fut
            except TimeoutError:
                raise RaftUnavailable(
                    f"timed out after {budget:g} s waiting for commit ({self.why_unavailable()})",
                    outcome_unknown=True,
                ) from None
            if err == FAIL_REASON.SUCCESS:
                return res
            last_err = err
            # pysyncobj answers LEADER_CHANGED to a command a follower forwarded when the leader changes before
            # it replies with the log index: the old leader may have appended and replicated it.
            in_flight = in_flight or err in (FAIL_REASON.LEADER_CHANGED, FAIL_REASON.UNKNOWN_OUTCOME)
            if err not in _RETRYABLE:
                raise RaftUnavailable(f"request denied by Raft (reason {err})", outcome_unknown=in_flight)
            pause = min(RETRY_PAUSE, deadline - loop.time())
            if pause <= 0:
                reason = self.why_unavailable()
                if last_err == FAIL_REASON.QUEUE_FULL:
                    reason = "Raft command queue full"
                raise RaftUnavailable(reason, outcome_unknown=in_flight)
            await asyncio.sleep(pause)

    async def _batched(self, op: tuple[Any, ...], not_after: float | None = None) -> Any:
        """Queue one op for the next log entry; wait for its own result (or RaftUnavailable). `not_after` (loop
        time) is the writer's own deadline when it is earlier than ours: the op is not handed to Raft later."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        deadline = loop.time() + self.write_timeout
        self._pending.append((op, fut, deadline if not_after is None else min(deadline, not_after)))
        if self._draining is None or self._draining.done():
            self._draining = loop.create_task(self._drain(), name="x0-raft-batch")
        try:
            # The batch answers within its budget; this bound only guards against a bug leaving it unanswered.
            async with asyncio.timeout(self.write_timeout + 1.0):
                return await asyncio.shield(fut)
        except TimeoutError:
            raise RaftUnavailable(self.why_unavailable(self.write_timeout), outcome_unknown=True) from None

    async def _drain(self) -> None:
        """Group commit: one entry in flight at a time; what arrives meanwhile goes in the next one. Adds no
        delay to a lone request, and turns 32 concurrent requests into a few entries instead of 32 (each entry
        costs a pickled, encrypted message to every follower and back). A batch gives up at its earliest
        request's deadline; a request answered 503 is applied later only if the answer said its outcome is
        unknown (it had reached a log), and then once (request ids)."""
        loop = asyncio.get_running_loop()
        while self._pending:
            # A request whose deadline passed while it waited for the entry in flight is refused on its own: in
            # a batch it would fail the others at once, with budget left.
            now = loop.time()
            for _, fut, deadline in self._pending:
                if deadline <= now and not fut.done():
                    fut.set_exception(
                        RaftUnavailable(
                            f"its deadline passed before it reached Raft ({self.why_unavailable()})",
                            outcome_unknown=False,
                        )
                    )
            self._pending = [p for p in self._pending if p[2] > now]
            if not self._pending:
                break
            n, size = 0, 0
            while n < len(self._pending) and n < MAX_BATCH and (n == 0 or size < MAX_BATCH_BYTES):
                size += sum(len(x) for x in self._pending[n][0] if isinstance(x, bytes))
                n += 1
            batch, self._pending = self._pending[:n], self._pending[n:]
            budget = max(0.0, min(deadline for _, _, deadline in batch) - loop.time())
            try:
                results = await self._call(self.state.apply_batch, [op for op, _, _ in batch], budget_s=budget)
            except Exception as exc:  # RaftUnavailable, or a pysyncobj error: every waiter gets an answer
                if isinstance(exc, RaftUnavailable):
                    reason, unknown = str(exc), exc.outcome_unknown
                else:
                    reason, unknown = f"Raft error: {type(exc).__name__}: {exc}", True
                for _, fut, _ in batch:
                    if not fut.done():
                        fut.set_exception(RaftUnavailable(reason, outcome_unknown=unknown))
                continue
            for (_, fut, _), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)

    async def put(
        self, key: str, value: bytes, cas: int | None, rid: str, not_after: float | None = None
    ) -> Result:
        return await self._batched(("put", key, value, cas, rid), not_after)  # type: ignore[no-any-return]

    async def delete(self, key: str, cas: int | None, rid: str, not_after: float | None = None) -> Result:
        return await self._batched(("delete", key, cas, rid), not_after)  # type: ignore[no-any-return]

    async def append_trim(
        self, prefix: str, key: str, value: bytes, keep: int, rid: str, create_only: bool = False
    ) -> Result:
        op = ("append", prefix, key, value, keep, rid) + ((True,) if create_only else ())
        return await self._batched(op)  # type: ignore[no-any-return]

    async def barrier(self) -> int:
        """Commit a no-op and wait until this replica applied it (linearizable read point). Reads that arrive
        while an entry is in flight share the next barrier: it is proposed after they began, which is all
        linearizability asks."""
        return int(await self._batched(("barrier",)))

    async def add_voter(self, address: str, budget_s: float = 5.0) -> None:
        obj = self._obj
        if obj is None:
            raise RaftUnavailable("Raft engine is not running")
        await self._call(obj.addNodeToCluster, address, budget_s=budget_s)

    async def remove_voter(self, address: str, budget_s: float = 5.0) -> None:
        obj = self._obj
        if obj is None:
            raise RaftUnavailable("Raft engine is not running")
        await self._call(obj.removeNodeFromCluster, address, budget_s=budget_s)

    def transfer_leadership(self) -> None:
        """Ask the most caught-up connected follower to take over (Raft TimeoutNow); best effort."""
        obj = self._obj
        if obj is not None:
            obj.transferLeadership(callback=lambda res, err: None)


def wait_thread_names() -> list[str]:
    """Names of live threads (diagnostics in tests: an engine that stopped leaves no tick thread)."""
    return [t.name for t in threading.enumerate()]
