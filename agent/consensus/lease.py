"""The mesh-wide drill lease and drill history in the store (contracts §7).

The lease is one key taken with compare-and-set: created when absent, or replacing an expired lease by its modify
index. Two nodes racing for it both read "absent" (or the same expired lease); the store commits one CAS and the
other gets a conflict, re-reads, and reports the winner as the holder. Expiry is judged by the wall clock of the
node that asks; the TTL (a drill's duration + 30 s) is far above the clock skew of NTP-synced hosts.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Protocol

import msgspec

from agent.consensus.schemas import DrillLease, DrillRecord

log = logging.getLogger("x0.consensus")

LEASE_KEY = "x0/drills/lease"
HISTORY_PREFIX = "x0/drills/history/"
HISTORY_KEEP = 200
KEYS_PREFIX = "x0/keys/"
DRILL_LEASE_GRACE_S = 30.0


class LeaseHeld(Exception):
    """Another lease is current (API: 409 naming its holder)."""

    def __init__(self, lease: DrillLease) -> None:
        self.lease = lease
        left = max(0.0, lease.expires_at - time.time())
        drill = f", drill {lease.drill_id}" if lease.drill_id else ""
        super().__init__(
            f"a drill holds the mesh-wide lease: {lease.holder} ({lease.kind} on {lease.node_id}{drill}, "
            f"lease {lease.lease_id}) for another {left:.0f} s; wait for it to end or "
            f"DELETE /drills/lease/{lease.lease_id}"
        )


class LeaseNotFound(Exception):
    pass


class Conflict(Exception):
    """The store's CAS failed (duck-typed: agent.consensus.service.KvConflict)."""


class Store(Protocol):
    async def read_value(self, key: str, *, stale: bool = False) -> object | None: ...

    async def write_value(self, key: str, value: bytes, cas: int | None = None) -> int: ...

    async def delete_value(self, key: str, cas: int | None = None) -> bool: ...


def _decode(raw: bytes) -> DrillLease | None:
    try:
        return msgspec.json.decode(raw, type=DrillLease)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


async def current(store: Store, *, stale: bool = False) -> tuple[DrillLease | None, int]:
    """The lease in the store (expired or not) and its modify index (0: none)."""
    v = await store.read_value(LEASE_KEY, stale=stale)
    if v is None:
        return None, 0
    return _decode(v.value), v.modify_index  # type: ignore[attr-defined]


async def active(store: Store, *, stale: bool = False) -> DrillLease | None:
    lease, _ = await current(store, stale=stale)
    if lease is None or lease.expires_at <= time.time():
        return None
    return lease


class StaleCheck(Protocol):
    async def __call__(self, lease: DrillLease) -> bool: ...


async def acquire(
    store: Store,
    *,
    holder: str,
    kind: str,
    node_id: str,
    ttl_s: float,
    drill_id: str | None = None,
    is_over: StaleCheck | None = None,
) -> DrillLease:
    """Take the lease. `is_over(lease)` may prove a held lease's drill already ended (its node no longer runs
    it: the node reverted but could not release yet, e.g. right after a partition); such a lease is replaced."""
    from agent.consensus.service import KvConflict

    for _ in range(3):
        lease, index = await current(store)
        now = time.time()
        if lease is not None and lease.expires_at > now:
            if is_over is None or not await is_over(lease):
                raise LeaseHeld(lease)
            log.warning(
                "drill lease %s of %s: its drill %s has ended; taking over",
                lease.lease_id,
                lease.holder,
                lease.drill_id,
            )
        new = DrillLease(
            lease_id=f"lse-{secrets.token_hex(4)}",
            holder=holder,
            kind=kind,
            node_id=node_id,
            acquired_at=now,
            expires_at=now + ttl_s,
            drill_id=drill_id,
        )
        try:
            await store.write_value(LEASE_KEY, msgspec.json.encode(new), cas=index)
        except KvConflict:
            continue  # someone else wrote it between our read and our CAS: look again
        return new
    lease, _ = await current(store)
    if lease is not None:
        raise LeaseHeld(lease)
    raise LeaseNotFound("the lease key kept changing under us; try again")


async def attach_drill(store: Store, lease: DrillLease, drill_id: str, expires_at: float) -> DrillLease:
    """Record which drill runs under a lease (and its end); only if the lease is still ours."""
    from agent.consensus.service import KvConflict

    cur, index = await current(store)
    if cur is None or cur.lease_id != lease.lease_id:
        raise LeaseNotFound(f"lease {lease.lease_id} is no longer the current one")
    new = msgspec.structs.replace(cur, drill_id=drill_id, expires_at=max(cur.expires_at, expires_at))
    try:
        await store.write_value(LEASE_KEY, msgspec.json.encode(new), cas=index)
    except KvConflict:
        raise LeaseNotFound(f"lease {lease.lease_id} changed while attaching drill {drill_id}") from None
    return new


async def release(store: Store, lease_id: str) -> DrillLease:
    from agent.consensus.service import KvConflict

    cur, index = await current(store)
    if cur is None or cur.lease_id != lease_id:
        raise LeaseNotFound(f"lease {lease_id} is not the current drill lease")
    try:
        await store.delete_value(LEASE_KEY, cas=index)
    except KvConflict:
        raise LeaseNotFound(f"lease {lease_id} changed while releasing it") from None
    return cur


def history_key(record: DrillRecord) -> str:
    return f"{HISTORY_PREFIX}{int(record.started_at * 1000):013d}-{record.id}"
