"""Each node's Yggdrasil identity in the replicated store (`x0/keys/<node_id>`, contracts §7).

A Nomad members file carries no keys: every daemon generates its own inside its allocation. So every agent
publishes its daemon's key in the store and reads everyone's back; peer admission (agent.admission) then admits
exactly the members' published keys. Only a process that holds the mesh's secret reaches the store (Raft is
encrypted with it, forwarded writes carry the API token), so a published key is a member's word.

Costs stay flat as the mesh grows: a node writes its record only when its key differs from the stored one (once
per new key), and re-reads the directory with one listing, from its own replica on a voter (`REFRESH_S`), from a
voter on a client (`CLIENT_REFRESH_S`), which then fetches only the records whose modify index moved.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import httpx
import msgspec

from agent.consensus.engine import RaftUnavailable
from agent.consensus.lease import KEYS_PREFIX
from agent.consensus.schemas import KvList, NodeKey
from agent.consensus.service import KvForwardError, KvFull
from agent.yggdrasil.address import address_for_key

if TYPE_CHECKING:
    from agent.consensus.service import ConsensusService
    from agent.state import AgentState

log = logging.getLogger("x0.consensus")

# A voter reads its own replica; a client asks a voter, so it asks less often. A joining member's key reaches every
# daemon's admission within about one refresh.
REFRESH_S = 2.0
CLIENT_REFRESH_S = 10.0
RETRY_S = 2.0
WARN_AFTER_S = 30.0
WARN_EVERY_S = 60.0
# Records read at most per refresh (a members file larger than this is far past what one Raft group serves).
LIMIT = 10_000


def parse_record(raw: bytes) -> NodeKey | None:
    """A stored record, or None when it is not one (a record whose address is not its key's is not trusted)."""
    try:
        rec = msgspec.json.decode(raw, type=NodeKey)
    except msgspec.DecodeError:  # also a ValidationError
        return None
    return rec if address_for_key(rec.public_key) == rec.address else None


def record_for(public_key: str, now: float) -> bytes:
    key = public_key.lower()
    return msgspec.json.encode(NodeKey(public_key=key, address=address_for_key(key) or "", updated_at=now))


class KeyDirectory:
    def __init__(self, consensus: ConsensusService) -> None:
        self.consensus = consensus
        self.detail = "not started"
        self._seen: dict[str, tuple[int, str]] = {}  # node id -> (modify index, key), clients only
        self._task: asyncio.Task[None] | None = None

    def start(self, agent: AgentState) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(agent), name="x0-key-directory")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self, agent: AgentState) -> None:
        failing_since: float | None = None
        warned = 0.0
        while True:
            if self.consensus.role == "disabled":  # set once at start (Raft off, or no secret): for good
                self.detail = f"no key directory: {self.consensus.detail}"
                return
            ok = False
            try:
                ok = await self.step(agent)
            except asyncio.CancelledError:
                raise
            except (RaftUnavailable, KvForwardError, KvFull, httpx.HTTPError, OSError) as exc:
                self.detail = f"key directory unavailable: {exc}"
            except Exception:  # one bad refresh must not end publishing for the agent's lifetime
                log.exception("key directory refresh failed")
            now = time.monotonic()
            failing_since = None if ok else failing_since or now
            # Until its key is published, the other members' daemons refuse this node's dials: say why, once a
            # minute, but not for the few seconds a mesh takes to elect its first leader.
            if failing_since is not None and now - failing_since >= WARN_AFTER_S and now - warned >= WARN_EVERY_S:
                warned = now
                log.warning("node keys (%s): %s", KEYS_PREFIX, self.detail)
            await asyncio.sleep(
                RETRY_S if not ok else CLIENT_REFRESH_S if self.consensus.is_client() else REFRESH_S
            )

    async def step(self, agent: AgentState) -> bool:
        """Read the directory, publish this node's key if the store lacks it; True when both are done."""
        published = await self._read()
        agent.set_published_keys(published)
        snapshot = agent.snapshot
        if snapshot is None:  # the daemon never answered: its key is unknown (published before, or not yet)
            done = self.consensus.node_id in published
            self.detail = f"{len(published)} node key(s) published; this node's daemon has not answered" + (
                "" if done else ", so its key is not among them"
            )
            return done
        own = snapshot.self_info.key.lower()
        me = self.consensus.node_id
        if published.get(me) != own:
            await self.consensus.write_value(KEYS_PREFIX + me, record_for(own, time.time()))
            log.info("published this node's key %s in the store (%s%s)", own, KEYS_PREFIX, me)
            published = {**published, me: own}
            agent.set_published_keys(published)
        self.detail = f"{len(published)} node key(s) published"
        return True

    async def _read(self) -> dict[str, str]:
        c = self.consensus
        if not c.is_client():
            rows, _, _ = await c.list(KEYS_PREFIX, LIMIT, stale=True)
            out: dict[str, str] = {}
            for store_key, entry in rows:
                rec = parse_record(entry.value)
                if rec is not None:
                    out[store_key[len(KEYS_PREFIX) :]] = rec.public_key
            return out
        r = await c.forward("GET", "/kv", params={"prefix": KEYS_PREFIX, "limit": str(LIMIT), "stale": "true"})
        try:
            listing = msgspec.json.decode(r.content, type=KvList) if r.status_code == 200 else None
        except msgspec.DecodeError:
            listing = None
        if listing is None:
            raise KvForwardError(r.status_code, f"listing {KEYS_PREFIX}: answered {r.status_code}, no key list")
        seen: dict[str, tuple[int, str]] = {}
        for k in listing.keys:
            node = k.key[len(KEYS_PREFIX) :]
            old = self._seen.get(node)
            if old is not None and old[0] == k.modify_index:
                seen[node] = old
                continue
            value = await c.read_value(k.key, stale=True)
            rec = parse_record(value.value) if value is not None else None
            if rec is not None:
                seen[node] = (k.modify_index, rec.public_key)
        self._seen = seen
        return {node: key for node, (_, key) in seen.items()}
