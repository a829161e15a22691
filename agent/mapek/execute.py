"""MAPE-K Execute: carry out planned actions through the daemon's admin API; report an outcome for each.

- `redial`: 0.4 ignores addPeer of a configured URI, so removePeer + addPeer on one keepalive connection (the
  daemon dials at once, ~0.2 s); 0.5 answers "peer is already configured" to addPeer but kicks the link out of its
  backoff, which is the point, so that reply counts as ok.
- `add_peer`: addPeer of the stand-in's listen URI.
- `restore` / `remove_peer`: removePeer. On 0.4 the daemon redials a removed outbound link by itself after 1 s,
  so first a short nft hold refuses our own dials to that one peer (see agent.drills.faults); without nft the
  link may come back and the outcome says so.
- `quarantine`: bookkeeping only; the knowledge applies it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from agent.drills import faults
from agent.drills.faults import FaultUnavailable, Nft, NftError
from agent.mapek.knowledge import PlannedAction
from agent.mapek.schemas import Outcome
from agent.yggdrasil.client import AdminClient
from agent.yggdrasil.errors import AdminCommandError, AdminError

log = logging.getLogger("x0.mapek")


def _already_configured(exc: AdminCommandError) -> bool:
    return "already configured" in exc.error


def _not_configured(exc: AdminCommandError) -> bool:
    return "not configured" in exc.error


class Executor:
    def __init__(self, admin: AdminClient, nft: Nft | None = None) -> None:
        self.admin = admin
        self.nft = nft or Nft()
        self._holds: dict[str, asyncio.Task[None]] = {}

    async def run(self, action: PlannedAction, api_version: str | None) -> tuple[Outcome, str]:
        """Carry out one action (the loop records the ones the plan held back without calling this)."""
        try:
            if action.action == "quarantine":
                return "ok", action.reason
            if action.uri is None:
                return "failed", f"no peer URI known for {action.target}"
            if action.action == "redial":
                return await self._redial(action.uri, api_version)
            if action.action == "add_peer":
                try:
                    await self.admin.add_peer(action.uri)
                except AdminCommandError as exc:
                    if not _already_configured(exc):
                        raise
                    return "ok", f"{action.reason} (already configured)"
                return "ok", action.reason
            return await self._remove(action)
        except AdminError as exc:
            return "failed", f"{type(exc).__name__}: {exc}"

    async def _redial(self, uri: str, api_version: str | None) -> tuple[Outcome, str]:
        async with self.admin.session() as s:
            if api_version == "0.4":
                try:
                    await s.remove_peer(uri)
                except AdminCommandError as exc:
                    if not _not_configured(exc):
                        raise
                await s.add_peer(uri)
                return "ok", "removePeer + addPeer: the daemon dials now"
            try:
                await s.add_peer(uri)
            except AdminCommandError as exc:
                if _already_configured(exc):
                    return "ok", "addPeer kicked the configured link out of its backoff"
                raise
            return "ok", "addPeer: the daemon dials now"

    async def _remove(self, action: PlannedAction) -> tuple[Outcome, str]:
        assert action.uri is not None
        note = ""
        if action.hold_s > 0:
            note = await self._hold(action.target, action.uri, action.hold_s)
        try:
            await self.admin.remove_peer(action.uri)
        except AdminCommandError as exc:
            if not _not_configured(exc):
                raise
            return "ok", f"{action.reason} (was not configured){note}"
        return "ok", f"{action.reason}{note}"

    async def _hold(self, member: str, uri: str, seconds: float) -> str:
        try:
            await asyncio.to_thread(self.nft.apply, faults.hold_script(member, uri))
        except (NftError, FaultUnavailable, ValueError) as exc:
            return f"; no hold ({exc}): a 0.4 daemon may redial it once"
        old = self._holds.pop(member, None)
        if old is not None:
            old.cancel()
        self._holds[member] = asyncio.get_running_loop().create_task(self._release(member, seconds))
        return f"; own dials to it refused for {seconds:g} s so 0.4 does not redial it"

    async def _release(self, member: str, seconds: float) -> None:
        try:
            await asyncio.sleep(seconds)
        finally:
            # Only the member's current hold lifts the table: a hold replaced by a newer one (same table) is
            # cancelled and must leave the newer one in place.
            if self._holds.get(member) is asyncio.current_task():
                del self._holds[member]
                with contextlib.suppress(NftError, FaultUnavailable):
                    await asyncio.to_thread(self.nft.delete_table, faults.hold_table(member))

    async def aclose(self) -> None:
        """Lift every hold now (agent stopping)."""
        tasks = list(self._holds.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
