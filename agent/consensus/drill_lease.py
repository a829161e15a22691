"""The drills' side of the mesh-wide lease (agent.drills.manager `DrillCoordinator`): `POST /drills` on any node
takes the lease in the store before it touches anything, refuses with 409 naming the holder when another drill
holds it anywhere in the mesh, and when the drill ends releases the lease and files the drill in the mesh's
history (in the background: a node just out of a partition may need a moment to reach the leader; the lease's
TTL covers the case where it never does)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

import httpx
import msgspec

from agent.consensus import lease as leases
from agent.consensus.engine import RaftUnavailable
from agent.consensus.schemas import DrillLease, DrillRecord
from agent.drills.manager import DrillConflict, DrillUnavailable
from agent.drills.schemas import Drill

if TYPE_CHECKING:
    from agent.consensus.service import ConsensusService

log = logging.getLogger("x0.consensus")

FINISH_RETRY_S = 1.0
FINISH_TRIES = 30


class DrillLeaseCoordinator:
    def __init__(self, consensus: ConsensusService) -> None:
        self.consensus = consensus
        self._tasks: set[asyncio.Task[None]] = set()

    async def begin(
        self,
        *,
        kind: str,
        node_id: str,
        duration_s: float,
        holder: str | None,
        lease_id: str | None,
        drill_id: str | None = None,
    ) -> str | None:
        """The lease this drill runs under: the caller's (`lease_id`, must be current) or a new one. Returns the
        lease id this node took (to release at the end), None when it runs under the caller's."""
        try:
            if lease_id is not None:
                current = await leases.active(self.consensus)
                if current is None or current.lease_id != lease_id:
                    held = f"; the current one is {current.lease_id} ({current.holder})" if current else ""
                    raise DrillConflict(f"lease {lease_id} is not the mesh's current drill lease{held}")
                return None
            lease = await leases.acquire(
                self.consensus,
                holder=holder or f"agent:{self.consensus.node_id}",
                kind=kind,
                node_id=node_id,
                ttl_s=duration_s + leases.DRILL_LEASE_GRACE_S,
                drill_id=drill_id,
                is_over=self._drill_over,
            )
            return lease.lease_id
        except leases.LeaseHeld as exc:
            raise DrillConflict(str(exc)) from None
        except leases.LeaseNotFound as exc:
            raise DrillConflict(str(exc)) from None
        except RaftUnavailable as exc:
            raise DrillUnavailable(f"cannot take the mesh-wide drill lease: {exc}") from None

    async def _drill_over(self, lease: DrillLease) -> bool:
        """True when the lease's drill ran on an agent that answers and no longer lists it as active."""
        if lease.drill_id is None:
            return False
        member = self.consensus.members.by_id.get(lease.node_id)
        http = self.consensus._http
        if member is None or http is None:
            return False
        url = member.agent_url.rstrip("/")
        try:
            r = await http.get(f"{url}/drills", timeout=1.0)
            active = [d.get("id") for d in r.json().get("active", [])] if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return False
        return active is not None and lease.drill_id not in active

    async def abandon(self, lease_id: str) -> None:
        """The drill could not start: give the lease back at once."""
        try:
            await leases.release(self.consensus, lease_id)
        except (leases.LeaseNotFound, RaftUnavailable) as exc:
            log.warning("could not release drill lease %s: %s (it expires by itself)", lease_id, exc)

    def finished(self, drill: Drill, lease_id: str | None, holder: str | None) -> None:
        task = asyncio.get_running_loop().create_task(
            self._finish(drill, lease_id, holder), name=f"x0-drill-lease-{drill.id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish(self, drill: Drill, lease_id: str | None, holder: str | None) -> None:
        record = DrillRecord(
            **msgspec.structs.asdict(drill),
            holder=holder or f"agent:{self.consensus.node_id}",
            source="agent",
            targets=[drill.node_id],
        )
        released = lease_id is None
        recorded = False
        last: Exception | None = None
        # The record first, then the lease: whoever sees the lease released (x0dash, a test) finds the drill in
        # the history already (a suite pass once saw the lease gone and the record not yet there).
        for _ in range(FINISH_TRIES):
            try:
                if not recorded:
                    # Create-only: x0dash may have filed this drill already, with its report; ours must not
                    # replace it (a retry of ours may come long after, out of a partition).
                    await self.consensus.append_value(
                        leases.HISTORY_PREFIX,
                        leases.history_key(record),
                        msgspec.json.encode(record),
                        leases.HISTORY_KEEP,
                        create_only=True,
                    )
                    recorded = True
                if not released:
                    await self._release(lease_id)
                    released = True
                return
            except Exception as exc:  # RaftUnavailable, a forwarded error, a network error: retried
                last = exc
            await asyncio.sleep(FINISH_RETRY_S)
        if not released:  # the record never went in: the lease must not stay held until its TTL for that
            with contextlib.suppress(Exception):
                await self._release(lease_id)
                released = True
        log.warning(
            "drill %s: %s after %d tries: %s",
            drill.id,
            "history not written" if released else "lease/history not written",
            FINISH_TRIES,
            last,
        )

    async def _release(self, lease_id: str | None) -> None:
        try:
            await leases.release(self.consensus, lease_id)  # type: ignore[arg-type]
        except leases.LeaseNotFound:
            pass  # expired and taken by someone else, or released by an operator

    async def shutdown(self) -> None:
        deadline = time.monotonic() + 2.0
        for task in list(self._tasks):
            left = deadline - time.monotonic()
            if left <= 0:
                task.cancel()
                continue
            try:
                await asyncio.wait_for(asyncio.shield(task), left)
            except (TimeoutError, asyncio.CancelledError, Exception):
                task.cancel()
