"""The store workload x0dash runs during a drill on the Raft leader (leader-loss, and partition/blackhole of
the leader), and what the report concludes from it (issue 9).

While the drill runs, every observer gets a writer and a reader:
- the writer PUTs its own key `x0dash/drills/<drill>/<observer>` with values 1, 2, 3, ... (unique per key), through
  its own agent (a follower forwards to the leader, a client to a voter);
- the reader GETs (linearizable) the key of the next observer, through its own agent;
- a watcher polls each observer's `/cluster` for the leader it names.
Every request is recorded with its start and end (monotonic clock of this process) and outcome.

From the recorded history (pure functions, tested without a mesh):
- time until each observer names a new leader (not the one that led when the drill started);
- the write-unavailability window: last acknowledged write that started before the fault, first acknowledged
  write that started after it;
- the consistency verdict: every acknowledged write is present at the end (the final linearizable read of each
  key returns at least the last acknowledged value, and a value that was written), and no read returned a value
  older than a write acknowledged before that read began.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx
import msgspec

from agent.consensus.schemas import DEADLINE_HEADER, OUTCOME_HEADER

WORKLOAD_PAUSE_S = 0.05
REQUEST_TIMEOUT_S = 3.0  # above the agents' 2 s write timeout: a 503 is an answer, a timeout is not


class Op(msgspec.Struct, kw_only=True, frozen=True):
    kind: str  # "write" | "read"
    observer: str  # whose agent served it
    key: str
    value: int | None  # written value, or the value read (None: key absent / failed)
    start: float
    end: float
    ok: bool  # write acknowledged (200) / read answered (200 or 404)
    status: int | None = None  # HTTP status, None for a transport failure
    error: str = ""
    outcome: str = ""  # a refused write's X-X0-Outcome: "not-applied" (never applies), "unknown" (may apply)


class LeaderSeen(msgspec.Struct, kw_only=True, frozen=True):
    observer: str
    at: float
    leader: str | None


class Verdict(msgspec.Struct, kw_only=True, frozen=True):
    consistent: bool
    lost_writes: list[str]  # "key=value" acknowledged but missing at the end
    stale_reads: list[str]  # "observer read key=v at t, after key=w was acknowledged"
    writes_acked: int
    writes_failed: int
    reads_ok: int
    reads_failed: int
    # Reads of a value whose write was not acknowledged and may still apply (answered `unknown`, or no answer):
    # linearizable (that write may take effect any time after it began), reported because it surprises.
    late_writes: list[str] = msgspec.field(default_factory=list)

    def summary(self) -> str:
        verdict = "CONSISTENT" if self.consistent else "INCONSISTENT"
        parts = [
            f"{verdict}: {self.writes_acked} writes acknowledged ({self.writes_failed} refused or timed out), "
            f"{self.reads_ok} reads ({self.reads_failed} failed)"
        ]
        if self.lost_writes:
            parts.append(f"acknowledged writes missing at the end: {', '.join(self.lost_writes[:5])}")
        if self.stale_reads:
            parts.append(f"stale reads: {'; '.join(self.stale_reads[:5])}")
        if self.late_writes:
            parts.append(f"writes not acknowledged that applied later: {'; '.join(self.late_writes[:5])}")
        return "; ".join(parts)


class WorkloadResult(msgspec.Struct, kw_only=True, frozen=True):
    old_leader: str | None
    fault_at: float
    new_leader_after_s: dict[str, float | None]  # observer -> seconds from the fault until it named a new leader
    unavailable_from: float | None  # end of the last acknowledged write started before the fault
    unavailable_to: float | None  # end of the first acknowledged write started after it
    verdict: Verdict

    @property
    def unavailable_s(self) -> float | None:
        if self.unavailable_from is None or self.unavailable_to is None:
            return None
        return self.unavailable_to - self.unavailable_from


# --- pure analysis ---------------------------------------------------------------------------------------------


def new_leader_times(seen: Sequence[LeaderSeen], old: str | None, fault_at: float) -> dict[str, float | None]:
    """Per observer: seconds from the fault until it first named a leader other than `old`."""
    out: dict[str, float | None] = {}
    for s in sorted(seen, key=lambda s: s.at):
        out.setdefault(s.observer, None)
        if s.at >= fault_at and s.leader is not None and s.leader != old and out[s.observer] is None:
            out[s.observer] = s.at - fault_at
    return out


def unavailability(ops: Sequence[Op], fault_at: float) -> tuple[float | None, float | None]:
    acked = [o for o in ops if o.kind == "write" and o.ok]
    before = [o.end for o in acked if o.start < fault_at]
    after = [o.end for o in acked if o.start >= fault_at]
    return (max(before) if before else None, min(after) if after else None)


def verdict(ops: Sequence[Op], final: dict[str, int | None]) -> Verdict:
    """`final`: key -> value of a linearizable read of each key after the drill (None: absent).

    A write answered `not-applied` must never show; one that got no acknowledgement otherwise (`unknown`, a
    timeout) may take effect at any later time, even after later writes were acknowledged: reading its value then
    is linearizable (listed in `late_writes`), reading any other older value is stale."""
    writes = [o for o in ops if o.kind == "write"]
    reads = [o for o in ops if o.kind == "read"]
    attempted: dict[str, set[int]] = {}  # values that may be in the store: acknowledged or maybe applied
    pending: dict[str, dict[int, Op]] = {}  # value -> the write not acknowledged that may still apply
    for w in writes:
        refused = w.outcome == "not-applied" or (w.status is not None and w.status < 500)  # 4xx never apply
        if w.value is None or (not w.ok and refused):
            continue
        attempted.setdefault(w.key, set()).add(w.value)
        if not w.ok:
            pending.setdefault(w.key, {})[w.value] = w
    lost: list[str] = []
    last_acked: dict[str, int] = {}
    for w in writes:
        if w.ok and w.value is not None:
            last_acked[w.key] = max(last_acked.get(w.key, 0), w.value)
    for key, value in sorted(last_acked.items()):
        got = final.get(key)
        # Unacknowledged later writes may have applied (a lost acknowledgement): the final value may be newer,
        # but it must be one that was written.
        if got is None or got < value or got not in attempted.get(key, set()):
            lost.append(f"{key}={value} (final {got})")
    stale: list[str] = []
    late: list[str] = []
    acked_by_key: dict[str, list[Op]] = {}
    for w in writes:
        if w.ok and w.value is not None:
            acked_by_key.setdefault(w.key, []).append(w)
    for r in reads:
        if not r.ok:
            continue
        before = [w.value for w in acked_by_key.get(r.key, []) if w.end < r.start and w.value is not None]
        if not before:
            continue
        newest = max(before)
        if r.value is None or r.value >= newest:
            continue
        maybe = pending.get(r.key, {}).get(r.value)
        if maybe is not None and maybe.start < r.end:
            answer = f"answered {maybe.status} {maybe.outcome or 'unknown'}" if maybe.status else "no answer"
            late.append(
                f"{r.observer} read {r.key}={r.value} at +{r.start:.2f} after {newest} was acknowledged; "
                f"that write began at +{maybe.start:.2f}, {answer}"
            )
        else:
            stale.append(f"{r.observer} read {r.key}={r.value} at +{r.start:.2f}, after {newest} was acknowledged")
    return Verdict(
        consistent=not lost and not stale,
        lost_writes=lost,
        stale_reads=stale,
        writes_acked=sum(1 for w in writes if w.ok),
        writes_failed=sum(1 for w in writes if not w.ok),
        reads_ok=sum(1 for r in reads if r.ok),
        reads_failed=sum(1 for r in reads if not r.ok),
        late_writes=late,
    )


# --- the workload itself ---------------------------------------------------------------------------------------


@dataclass
class Workload:
    """Run with `start()`, mark the fault with `fault()`, end with `finish()` (which reads the final values and
    returns the analysis). `urls`: observer -> agent URL."""

    urls: dict[str, str]
    token: str | None
    prefix: str
    clock: Callable[[], float] = time.monotonic
    ops: list[Op] = field(default_factory=list)
    seen: list[LeaderSeen] = field(default_factory=list)
    old_leader: str | None = None
    fault_at: float | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _client: httpx.AsyncClient | None = None

    def key(self, observer: str) -> str:
        return f"{self.prefix}/{observer}"

    async def start(self) -> None:
        self._client = httpx.AsyncClient(trust_env=False, timeout=REQUEST_TIMEOUT_S)
        self.old_leader = await self._leader(next(iter(self.urls)))
        observers = list(self.urls)
        loop = asyncio.get_running_loop()
        for i, obs in enumerate(observers):
            target = observers[(i + 1) % len(observers)]
            self._tasks.append(loop.create_task(self._writer(obs), name=f"x0dash-kv-writer-{obs}"))
            self._tasks.append(loop.create_task(self._reader(obs, target), name=f"x0dash-kv-reader-{obs}"))
            self._tasks.append(loop.create_task(self._watch(obs), name=f"x0dash-kv-watch-{obs}"))

    async def warmed_up(self, within_s: float = 5.0) -> bool:
        """Wait until every writer had a write acknowledged (a baseline before the fault); False after
        `within_s` (the store is not writable: the report says so)."""
        deadline = self.clock() + within_s
        while self.clock() < deadline:
            acked = {o.observer for o in self.ops if o.kind == "write" and o.ok}
            if acked >= set(self.urls):
                return True
            await asyncio.sleep(0.05)
        return False

    def fault(self) -> None:
        self.fault_at = self.clock()

    async def finish(self, live: Sequence[str] | None = None) -> WorkloadResult:
        self._stop.set()
        for t in self._tasks:
            try:
                await asyncio.wait_for(t, REQUEST_TIMEOUT_S + 1)
            except (TimeoutError, asyncio.CancelledError):
                t.cancel()
        final: dict[str, int | None] = {}
        readers = list(live or self.urls)
        for obs in self.urls:
            final[self.key(obs)] = await self._final(readers, self.key(obs))
        if self._client is not None:
            await self._client.aclose()
        fault_at = self.fault_at if self.fault_at is not None else self.clock()
        before, after = unavailability(self.ops, fault_at)
        return WorkloadResult(
            old_leader=self.old_leader,
            fault_at=fault_at,
            new_leader_after_s=new_leader_times(self.seen, self.old_leader, fault_at),
            unavailable_from=before,
            unavailable_to=after,
            verdict=verdict(self.ops, final),
        )

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def _leader(self, observer: str) -> str | None:
        assert self._client is not None
        try:
            r = await self._client.get(f"{self.urls[observer]}/cluster", timeout=1.0)
            return r.json().get("leader_id") if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    async def _writer(self, observer: str) -> None:
        assert self._client is not None
        n = 0
        key = self.key(observer)
        while not self._stop.is_set():
            n += 1
            start = self.clock()
            status: int | None = None
            error = outcome = ""
            try:
                # The deadline: a write we gave up on must not apply later, after the history below ends.
                deadline = {DEADLINE_HEADER: f"{time.time() + REQUEST_TIMEOUT_S:.3f}"}
                r = await self._client.put(
                    f"{self.urls[observer]}/kv/{key}", content=str(n).encode(), headers=self._headers() | deadline
                )
                status = r.status_code
                if status != 200:
                    error = r.text[:200]
                    outcome = r.headers.get(OUTCOME_HEADER, "")
            except httpx.HTTPError as exc:
                error = type(exc).__name__
            self.ops.append(
                Op(kind="write", observer=observer, key=key, value=n, start=start, end=self.clock(),
                   ok=status == 200, status=status, error=error, outcome=outcome)
            )  # fmt: skip
            await asyncio.sleep(WORKLOAD_PAUSE_S)

    async def _read(self, observer: str, key: str) -> tuple[bool, int | None, int | None, str]:
        assert self._client is not None
        try:
            r = await self._client.get(f"{self.urls[observer]}/kv/{key}")
        except httpx.HTTPError as exc:
            return False, None, None, type(exc).__name__
        if r.status_code == 404:
            return True, None, 404, ""
        if r.status_code != 200:
            return False, None, r.status_code, r.text[:200]
        try:
            return True, int(base64.b64decode(r.json()["value"])), 200, ""
        except (ValueError, KeyError):
            return False, None, 200, "not a workload value"

    async def _reader(self, observer: str, target: str) -> None:
        key = self.key(target)
        while not self._stop.is_set():
            start = self.clock()
            ok, value, status, error = await self._read(observer, key)
            self.ops.append(
                Op(kind="read", observer=observer, key=key, value=value, start=start, end=self.clock(), ok=ok,
                   status=status, error=error)
            )  # fmt: skip
            await asyncio.sleep(WORKLOAD_PAUSE_S)

    async def _watch(self, observer: str) -> None:
        while not self._stop.is_set():
            at = self.clock()
            leader = await self._leader(observer)
            self.seen.append(LeaderSeen(observer=observer, at=at, leader=leader))
            await asyncio.sleep(0.1)

    async def _final(self, readers: Sequence[str], key: str) -> int | None:
        deadline = self.clock() + 30.0
        while self.clock() < deadline:
            for obs in readers:
                ok, value, _, _ = await self._read(obs, key)
                if ok:
                    return value
            await asyncio.sleep(0.2)
        return None
