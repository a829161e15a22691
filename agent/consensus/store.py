"""The replicated key-value state machine (contracts §3 `/kv`, §7).

`KvState` is a pysyncobj consumer: its `@replicated` methods run on every voter in log order, so everything they
do must be deterministic (no clocks, no randomness, no I/O). The `apply_*` functions hold the logic and are
plain methods, so it is tested without sockets.

- Every successful mutation bumps `index`; an entry's `modify_index`/`create_index` are that counter, the same
  on every replica. CAS compares against it (`cas=0`: create only).
- Every command carries a request id; the result of the last `DEDUP_KEEP` ids is kept (in the snapshot too), so
  a command retried after a lost acknowledgement (leader change mid-flight) returns its first result instead of
  applying twice (a CAS that won would otherwise report a conflict with itself).
- The store's size (keys + values) is capped in the state machine itself: the check is deterministic, so no
  replica can end up holding what another refused.
- Reads take the same lock as applies (they come from the event loop thread; applies from pysyncobj's).
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from typing import Any, NamedTuple

from pysyncobj import SyncObjConsumer, replicated

MAX_KEY_BYTES = 512
MAX_VALUE_BYTES = 64 * 1024
MAX_STORE_BYTES = 64 * 1024 * 1024
DEDUP_KEEP = 4096


class Entry(NamedTuple):
    value: bytes
    create_index: int
    modify_index: int


# Results are plain tuples: they cross pysyncobj's callback and (for forwarded commands) its pickled transport.
#   ("ok", modify_index, index) | ("conflict", current_modify_index, index) | ("full", store_bytes, index)
#   delete: ("ok", deleted: bool, index) | ("conflict", current_modify_index, index)
Result = tuple[str, Any, int]


class KvState(SyncObjConsumer):
    def __init__(self) -> None:
        super().__init__()
        # Everything below is serialized into snapshots (SyncObjConsumer keeps attributes set after its init).
        self.entries: dict[str, Entry] = {}
        self.keys: list[str] = []  # sorted, for prefix listing
        self.index = 0
        self.size = 0
        self.recent: OrderedDict[str, Result] = OrderedDict()
        self._lock = threading.Lock()
        # Value bytes applied since the engine last compacted the Raft log: every voter's log holds them a second
        # time until it compacts (agent.consensus.engine). Not state: left out of snapshots.
        self.logged_bytes = 0

    # pysyncobj pickles the consumer's dict for snapshots: a lock cannot be pickled, so leave it out and make a
    # new one when a snapshot is loaded.
    def _serialize(self) -> dict[str, Any]:
        with self._lock:
            data = super()._serialize()
            data.pop("_lock", None)
            data.pop("logged_bytes", None)
            return dict(data)

    def _deserialize(self, data: dict[str, Any]) -> None:
        lock = self._lock
        with lock:
            super()._deserialize(data)
            self._lock = lock
            self.logged_bytes = 0

    # --- replicated commands (run on every voter, in log order) ------------------------------------------

    @replicated
    def put(self, key: str, value: bytes, cas: int | None, rid: str) -> Result:
        self.logged_bytes += len(value)
        return self._once(rid, lambda: self.apply_put(key, value, cas))

    @replicated
    def delete(self, key: str, cas: int | None, rid: str) -> Result:
        return self._once(rid, lambda: self.apply_delete(key, cas))

    @replicated
    def append_trim(self, prefix: str, key: str, value: bytes, keep: int, rid: str) -> Result:
        self.logged_bytes += len(value)
        return self._once(rid, lambda: self.apply_append_trim(prefix, key, value, keep))

    @replicated
    def apply_batch(self, ops: list[tuple[Any, ...]]) -> list[Any]:
        """Group commit: many requests in one log entry (agent.consensus.engine batches what arrives while the
        previous entry is in flight). Each op keeps its own request id, result and order."""
        out: list[Any] = []
        self.logged_bytes += sum(len(x) for op in ops for x in op if isinstance(x, bytes))
        for op in ops:
            kind = op[0]
            if kind == "put":
                _, key, value, cas, rid = op
                out.append(self._once(rid, lambda k=key, v=value, c=cas: self.apply_put(k, v, c)))
            elif kind == "delete":
                _, key, cas, rid = op
                out.append(self._once(rid, lambda k=key, c=cas: self.apply_delete(k, c)))
            elif kind == "append":
                # A 7th field (create_only) is newer than the journals written before it: absent means False.
                _, prefix, key, value, keep, rid, *rest = op
                only = bool(rest and rest[0])
                out.append(
                    self._once(
                        rid,
                        lambda p=prefix, k=key, v=value, n=keep, c=only: self.apply_append_trim(p, k, v, n, c),
                    )
                )
            else:  # "barrier"
                out.append(self.index)
        return out

    @replicated
    def barrier(self) -> int:
        """A no-op through the log: once it is applied here, this replica holds every write acknowledged before
        the barrier was proposed (the linearizable read of contracts §7)."""
        return self.index

    # --- deterministic logic ------------------------------------------------------------------------------

    def _once(self, rid: str, op: Any) -> Result:
        with self._lock:
            done = self.recent.get(rid)
            if done is not None:
                return done
            result: Result = op()
            self.recent[rid] = result
            while len(self.recent) > DEDUP_KEEP:
                self.recent.popitem(last=False)
            return result

    def apply_put(self, key: str, value: bytes, cas: int | None) -> Result:
        old = self.entries.get(key)
        current = old.modify_index if old is not None else 0
        if cas is not None and cas != current:
            return ("conflict", current, self.index)
        grow = len(value) - (len(old.value) if old is not None else -len(key.encode()))
        if self.size + grow > MAX_STORE_BYTES:
            return ("full", self.size, self.index)
        self.index += 1
        self.entries[key] = Entry(value, old.create_index if old is not None else self.index, self.index)
        if old is None:
            bisect.insort(self.keys, key)
        self.size += grow
        return ("ok", self.index, self.index)

    def apply_delete(self, key: str, cas: int | None) -> Result:
        old = self.entries.get(key)
        current = old.modify_index if old is not None else 0
        if cas is not None and cas != current:
            return ("conflict", current, self.index)
        if old is None:
            return ("ok", False, self.index)
        self.index += 1
        del self.entries[key]
        i = bisect.bisect_left(self.keys, key)
        if i < len(self.keys) and self.keys[i] == key:
            del self.keys[i]
        self.size -= len(key.encode()) + len(old.value)
        return ("ok", True, self.index)

    def apply_append_trim(
        self, prefix: str, key: str, value: bytes, keep: int, create_only: bool = False
    ) -> Result:
        """Put `key` and drop the oldest keys under `prefix` beyond `keep`. `create_only`: leave an existing key
        as it is (answered "conflict"): an agent's plain record of a drill never replaces the one x0dash filed."""
        result = self.apply_put(key, value, 0 if create_only else None)
        if result[0] != "ok":
            return result
        under = self._prefixed(prefix)
        for old in under[: max(0, len(under) - keep)]:  # keys sort oldest first (time-stamped names)
            self.apply_delete(old, None)
        return ("ok", result[1], self.index)

    def _prefixed(self, prefix: str) -> list[str]:
        i = bisect.bisect_left(self.keys, prefix)
        out: list[str] = []
        while i < len(self.keys) and self.keys[i].startswith(prefix):
            out.append(self.keys[i])
            i += 1
        return out

    # --- local reads (event loop thread) ------------------------------------------------------------------

    def read(self, key: str) -> tuple[Entry | None, int]:
        with self._lock:
            return self.entries.get(key), self.index

    def list(self, prefix: str, limit: int) -> tuple[list[tuple[str, Entry]], int, bool]:
        with self._lock:
            keys = self._prefixed(prefix)
            return [(k, self.entries[k]) for k in keys[:limit]], self.index, len(keys) > limit

    def stats(self) -> tuple[int, int, int]:
        """(keys, bytes, index)."""
        with self._lock:
            return len(self.entries), self.size, self.index
