"""The consensus extension (see agent.api.app `AgentExtension`): decides this node's Raft role from the members
file, runs the engine on voters, forwards on clients, and lets the leader steer membership (contracts §7).

Every 0.5 s (`_step`):
- disabled (X0_RAFT_ENABLED=false) or no secret: nothing runs; `/cluster` says why, `/kv` answers 503.
- not running, and this node is a target voter: start the engine. Without a journal it first asks the other
  members' `/cluster`: if a group already has a leader it starts as a joiner (others = that group's voters) and
  waits for the leader to add it; if none has, it bootstraps with the deterministic target (every fresh node
  computes the same one). With a journal it restarts with the voters it last knew (`voters.json`), and Raft
  replays the rest.
- running and leading: `_lead` applies at most one membership change (remove a voter that left the target, or
  add a target member whose agent reports `joining`), dropping voters unseen for X0_RAFT_REPLACE_AFTER from the
  target.
- running but removed from the group (the leader's voters no longer include it): stop, wipe the journal, become
  a client.
- client: learn the leader (and the leader's target, to know when to join) from a voter's `/cluster`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import ipaddress
import json
import logging
import random
import shutil
import socket
import ssl
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import msgspec

from agent.auth import ALLOW_CLEAR_ENV, may_send_token
from agent.consensus import voters as vt
from agent.consensus.engine import RaftEngine, RaftStatus, RaftUnavailable
from agent.consensus.schemas import (
    DEADLINE_HEADER,
    OUTCOME_HEADER,
    REQUEST_ID_HEADER,
    Cluster,
    ClusterMember,
    Role,
)
from agent.consensus.store import Entry
from agent.members import Member, Members
from agent.settings import Settings
from agent.yggdrasil.address import address_for_key

if TYPE_CHECKING:
    from agent.drills.manager import DrillCoordinator
    from agent.state import AgentState

_T = TypeVar("_T")
log = logging.getLogger("x0.consensus")

STEP_S = 0.5
CLIENT_REFRESH_S = 5.0
PROBE_TIMEOUT_S = 1.0
# Clients keep their connection to a voter between asks (every CLIENT_REFRESH_S, key directory reads every 10 s):
# under the agents' server keep-alive (agent.api.server, 15 s), so the server never closes one as it is reused.
CLIENT_KEEPALIVE_S = 10.0
REMOVED_GRACE_S = 5.0
VOTERS_FILE = "voters.json"
OVERLAY_RETRY_S = 2.0  # X0_RAFT_TRANSPORT=overlay: ask a member's agent for its overlay address again after this
TARGET_KEY = "x0/raft/target"  # the leader's target voters (JSON list of node ids), for followers and clients


def _same_address(a: str, b: object) -> bool:
    try:
        return isinstance(b, str) and ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


class KvConflict(Exception):
    """CAS failed: `current` is the key's modify index now (0: absent)."""

    def __init__(self, key: str, expected: int, current: int) -> None:
        super().__init__(f"cas {expected} does not match {key!r}: its modify index is {current}")
        self.current = current


class KvFull(Exception):
    """The write would take the store over its size limit."""


class KvForwardError(Exception):
    """A voter answered a forwarded request with an error we relay as is."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


@dataclass(frozen=True)
class KvValue:
    value: bytes
    modify_index: int
    create_index: int
    index: int
    stale: bool
    lag: int | None


def _loop_time(unix: float | None) -> float | None:
    """A Unix time on the running loop's clock, which the engine's deadlines use."""
    if unix is None:
        return None
    return asyncio.get_running_loop().time() + (unix - time.time())


def address_is_local(host: str) -> bool:
    """True when a socket can bind `host` on this host (some interface holds the address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, 0))
        except OSError as exc:
            return exc.errno != errno.EADDRNOTAVAIL
    return True


class ConsensusService:
    """The node's Raft role and store (see the module doc); served by agent.consensus.extension."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self.engine: RaftEngine | None = None
        self.role: Role = "disabled"
        self.detail = "starting"
        self.target: list[str] = []
        self.joining = False
        self.leader_id: str | None = None  # clients: as learned from a voter
        self.client_voters: dict[str, str] = {}  # clients: voter node id -> raft address, as learned
        # Clients: the voter that answered last. Asked first for /cluster and stale reads, so each client keeps one
        # connection open, and clients stay spread over the voters (each first picked one at random).
        self.home_voter: str | None = None
        self._memo: dict[str, tuple[tuple[object, ...], Any]] = {}  # see _per_members
        # X0_RAFT_TRANSPORT=overlay: node id -> overlay address learned (this node's daemon, published keys, the
        # member's own agent). Replaced, never changed in place (a _per_members dependency).
        self._overlay: dict[str, str] = {}
        self._overlay_wanted: set[str] = set()  # looked up and not known: ask their agents
        self._overlay_asked: dict[str, float] = {}
        self._bind_refused: str | None = None  # the last reason logged by _bind_refusal
        self._published_gen = -1
        self._asking: set[asyncio.Task[None]] = set()
        self.client_term = 0
        self.client_commit = 0
        self._client_contact: float | None = None
        self._client_refresh = 0.0
        self._seen: dict[str, float] = {}  # leader: voter address -> monotonic time last connected
        self._change: asyncio.Task[None] | None = None
        self._leaderless_since: float | None = None
        self._removed_checked = 0.0
        self._excluded: dict[str, float] = {}  # leader: node id -> when it was last found lost
        self._excluded_checked = 0.0
        self._published_target: list[str] | None = None
        self._publishing: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._agent: AgentState | None = None
        self._http: httpx.AsyncClient | None = None
        self._metrics_role: str | None = None
        self._last_changes = 0  # engine leader changes already counted in x0_raft_leader_changes_total
        self._last_rebuilds = 0  # engine rebuilds already counted in x0_raft_replica_rebuilds_total
        self._saved_config: tuple[str, ...] = ()  # the voters voters.json holds
        # The drills' side of the mesh-wide lease (agent.consensus.drill_lease), set by the extension.
        self.drill_coordinator: DrillCoordinator | None = None

    # --- lifecycle ------------------------------------------------------------------------------------------

    async def start(self, agent: AgentState) -> None:
        self._agent = agent
        s = self.settings
        if not s.raft_enabled:
            self._set_role("disabled", "Raft is disabled (X0_RAFT_ENABLED=false)")
            return
        if not s.raft_key:
            self._set_role(
                "disabled",
                "Raft not started: no X0_RAFT_SECRET and no X0_API_TOKEN to key its encrypted transport "
                "(pysyncobj messages are pickles: an unauthenticated Raft port would run anyone's code); set one",
            )
            log.error("%s", self.detail)
            return
        verify: ssl.SSLContext | bool = True
        if self.settings.tls_ca is not None:  # agents serving https with the mesh's own CA (X0_TLS_CA)
            verify = ssl.create_default_context(cafile=str(self.settings.tls_ca))
        self._http = httpx.AsyncClient(
            trust_env=False,
            timeout=PROBE_TIMEOUT_S,
            verify=verify,
            limits=httpx.Limits(keepalive_expiry=CLIENT_KEEPALIVE_S),
        )
        self._set_role("client", "waiting for the members file")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="x0-consensus")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._change is not None:
            self._change.cancel()
        for task in list(self._asking):
            task.cancel()
        if self.engine is not None:
            await self.engine.stop()
            self.engine = None
        if self._http is not None:
            await self._http.aclose()

    async def _run(self) -> None:
        while True:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("consensus step failed")
            await asyncio.sleep(STEP_S)

    # --- membership view ------------------------------------------------------------------------------------

    @property
    def members(self) -> Members:
        assert self._agent is not None
        return self._agent.members.members

    def address_of(self, node_id: str) -> str | None:
        m = self.members.by_id.get(node_id)
        if m is None:
            return self.client_voters.get(node_id)
        return self._raft_address(m)

    def _raft_address(self, m: Member, *, want: bool = True) -> str | None:
        """The member's Raft address; None with X0_RAFT_TRANSPORT=overlay while its overlay address is unknown
        (`want`: then ask its agent on the next step)."""
        if self.settings.raft_transport != "overlay":
            return vt.raft_address(m, self.settings.raft_port)
        overlay = m.address or self._overlay.get(m.node_id)
        if overlay is None:
            if want:
                self._overlay_wanted.add(m.node_id)
            return None
        return vt.overlay_raft_address(m, overlay, self.settings.raft_port)

    def _per_members(self, name: str, deps: tuple[object, ...], compute: Callable[[], _T]) -> _T:
        """`compute()` once per members file (and whatever else `deps` names; all are replaced, never changed in
        place). Every step asks these over all members: at 1,000 members, recomputing them took most of a core."""
        hit = self._memo.get(name)
        if hit is not None and len(hit[0]) == len(deps) and all(a is b for a, b in zip(hit[0], deps, strict=True)):
            return hit[1]
        value = compute()
        self._memo[name] = (deps, value)
        return value

    def _node_of_address(self) -> dict[str, str]:
        """Raft address -> node id (members, and the voters a client learned)."""
        members, voters = self.members, self.client_voters

        def build() -> dict[str, str]:
            out = {addr: nid for nid, addr in voters.items()}
            for m in members.members:
                addr = self._raft_address(m, want=False)
                if addr is not None:
                    out[addr] = m.node_id
            return out

        return self._per_members("node_of_address", (members, voters, self._overlay), build)

    def order(self) -> list[str]:
        members = self.members
        return self._per_members("order", (members,), lambda: vt.voter_order(members.mesh, members.members))

    def voter_target_count(self) -> int:
        return vt.voter_count(len(self.members.members) or 1, self.settings.raft_voters)

    def static_target(self) -> list[str]:
        if not self.members.members:
            return [self.node_id]
        return vt.target_voters(self.order(), self.voter_target_count())

    def _self_address(self) -> str:
        m = self.members.by_id.get(self.node_id)
        if m is None:
            return f"127.0.0.1:{self.settings.raft_port}"
        # With the overlay transport, _step starts no engine before this node's overlay address is known.
        return self._raft_address(m, want=False) or vt.raft_address(m, self.settings.raft_port)

    def _address_clash(self) -> str | None:
        """Why Raft cannot start with these members (two share a Raft address), or None."""
        members = self.members

        def find() -> str | None:
            seen: dict[str, str] = {}
            for m in members.members:
                addr = self._raft_address(m, want=False)
                if addr is None:
                    continue
                if addr in seen:
                    return (
                        f"Raft not started: members {seen[addr]} and {m.node_id} share the Raft address {addr}; "
                        "give each member its own raft_address (or address) in the members file"
                    )
                seen[addr] = m.node_id
            return None

        return self._per_members("address_clash", (members, self._overlay), find)

    def _url(self, node_id: str) -> str | None:
        m = self.members.by_id.get(node_id)
        return vt.agent_url(m) if m is not None else None

    # --- the step ---------------------------------------------------------------------------------------------

    async def _step(self) -> None:
        assert self._agent is not None
        members = self.members
        if members.members and self.node_id not in members.by_id:
            if self.engine is not None:
                await self._check_removed(throttle=True)
            if self.engine is None:
                self._set_role("client", f"this node ({self.node_id}) is not in the members file")
            return
        if self.settings.raft_transport == "overlay":
            self._learn_overlay_addresses()
            if self.engine is None and self.node_id not in self._overlay and self.node_id in members.by_id:
                if members.by_id[self.node_id].address is None:
                    self._set_role(
                        "client",
                        "Raft waits for this node's daemon to report its overlay address "
                        "(X0_RAFT_TRANSPORT=overlay)",
                    )
                    return
        clash = self._address_clash()
        if clash is not None and self.engine is None:
            self._set_role("client", clash)
            return
        if self.engine is None:
            if not self.target:
                self.target = self.static_target()
            if self.node_id in self.static_target() or self.node_id in self.target:
                await self._start_engine()
            if self.engine is None:
                if self._bind_refused is None:  # else the role's detail keeps saying why Raft did not start
                    await self._refresh_client()
                return
        engine = self.engine
        st = engine.status
        if self.joining and st.leader is not None:
            self.joining = False
            log.info("joined the Raft group (leader %s)", st.leader)
        if st.role == "leader":
            self._leaderless_since = None
            await self._lead(st)
        elif st.leader is None:
            now = time.monotonic()
            self._leaderless_since = self._leaderless_since or now
            if now - self._leaderless_since > REMOVED_GRACE_S and not self.joining:
                await self._check_removed()
        else:
            self._leaderless_since = None
            self._learn_target_from_leader(st)
        self._publish(st)

    def _learn_overlay_addresses(self) -> None:
        """X0_RAFT_TRANSPORT=overlay: this node's address from its daemon, the others' from the keys they published
        in the store (agent.consensus.key_directory) and, for members looked up without one, from their agents'
        /mesh/status (`_ask_overlay`, in the background)."""
        assert self._agent is not None
        learned: dict[str, str] = {}
        snapshot = self._agent.snapshot
        if snapshot is not None and snapshot.self_info.address:
            learned[self.node_id] = snapshot.self_info.address
        if self._agent.published_keys_gen != self._published_gen:
            self._published_gen = self._agent.published_keys_gen
            for node_id, key in self._agent.published_keys.items():
                addr = address_for_key(key)
                if addr is not None and node_id != self.node_id:
                    learned[node_id] = addr
        self._note_overlay(learned)
        now = time.monotonic()
        due = sorted(
            n
            for n in self._overlay_wanted
            if n in self.members.by_id and now - self._overlay_asked.get(n, -OVERLAY_RETRY_S) >= OVERLAY_RETRY_S
        )
        self._overlay_wanted.difference_update(due)
        for node_id in due:
            self._overlay_asked[node_id] = now
            task = asyncio.get_running_loop().create_task(self._ask_overlay(node_id), name=f"x0-overlay-{node_id}")
            self._asking.add(task)
            task.add_done_callback(self._asking.discard)

    def _note_overlay(self, learned: dict[str, str]) -> None:
        changed = {n: a for n, a in learned.items() if self._overlay.get(n) != a}
        if changed:
            self._overlay = {**self._overlay, **changed}
            log.info("raft over the overlay: %s", ", ".join(f"{n} at {a}" for n, a in sorted(changed.items())))

    async def _ask_overlay(self, node_id: str) -> None:
        """The member's overlay address as its own agent reports it (GET /mesh/status over the underlay), kept
        only when it is the address of the key reported with it: Yggdrasil delivers to that address only the
        holder of that key, so a wrong answer can misdirect Raft traffic but never let anyone into the group
        (it is encrypted with the Raft secret)."""
        m = self.members.by_id.get(node_id)
        if m is None or self._http is None:
            return
        try:
            r = await self._http.get(f"{m.agent_url.rstrip('/')}/mesh/status")
            body = r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError) as exc:
            log.debug("overlay address of %s: %s", node_id, exc)
            return
        key = body.get("key") if isinstance(body, dict) else None
        derived = address_for_key(key) if isinstance(key, str) else None
        if derived is not None and _same_address(derived, body.get("address")):  # type: ignore[union-attr]
            self._note_overlay({node_id: derived})
        else:
            log.debug("overlay address of %s: no key and matching address in its /mesh/status", node_id)

    def _learn_target_from_leader(self, st: RaftStatus) -> None:
        """Followers show the leader's target as replicated in the store (so a client that asks any voter learns
        it has to join), else the static one."""
        assert self.engine is not None
        entry, _ = self.engine.state.read(TARGET_KEY)
        if entry is not None:
            try:
                self.target = [str(n) for n in json.loads(entry.value)]
                return
            except (ValueError, TypeError):
                pass
        if not self.target:
            self.target = self.static_target()

    # --- engine start / stop ----------------------------------------------------------------------------------

    def _raft_dir(self) -> Path | None:
        return self.settings.raft_dir

    def _saved_voters(self) -> list[str] | None:
        d = self._raft_dir()
        if d is None:
            return None
        try:
            data = json.loads((d / VOTERS_FILE).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("voters"), list):
            return None
        if data.get("self") != self._self_address():
            log.warning(
                "raft dir %s belongs to %s, not %s: starting afresh", d, data.get("self"), self._self_address()
            )
            return None
        return [str(v) for v in data["voters"]]

    def _save_voters(self, voters: Sequence[str]) -> None:
        d = self._raft_dir()
        if d is None:
            return
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / (VOTERS_FILE + ".tmp")
        tmp.write_text(json.dumps({"self": self._self_address(), "voters": list(voters)}))
        tmp.replace(d / VOTERS_FILE)

    def _wipe(self) -> None:
        d = self._raft_dir()
        if d is not None and d.exists():
            shutil.rmtree(d, ignore_errors=True)

    async def _start_engine(self) -> None:
        me = self._self_address()
        refusal = self._bind_refusal(me)
        if refusal is not None:
            self._set_role("client", refusal)
            return
        saved = self._saved_voters()
        joining = False
        if saved is not None:
            voters = saved
        else:
            existing = await self._find_group()
            if existing is not None:
                voters = [a for a in existing if a != me]
                joining = True
            elif self.node_id in self.static_target():
                found = {n: self.address_of(n) for n in self.static_target()}
                unknown = [n for n, a in found.items() if a is None]
                if unknown:  # the overlay transport: every node must bootstrap with the same addresses
                    self._set_role("client", f"Raft waits for the overlay addresses of {', '.join(unknown)}")
                    return
                voters = [a for a in found.values() if a is not None]
            else:
                return  # in the leader's target but no group answered: try again next step
            self._wipe()
            self._save_voters([me, *voters])
        others = [v for v in voters if v != me]
        assert self.settings.raft_key is not None
        engine = RaftEngine(
            me,
            others,
            secret=self.settings.raft_key,
            data_dir=self._raft_dir(),
            write_timeout=self.settings.raft_write_timeout,
            on_status=self._publish,
        )
        await engine.start()
        self.engine = engine
        self.joining = joining
        self._saved_config = ()  # this engine's configuration goes to voters.json once it runs
        self._set_role(
            "joining" if joining else "follower",
            "joining: waiting for the leader to add this node" if joining else f"voter; Raft on {me}",
        )

    def _bind_refusal(self, me: str) -> str | None:
        """With X0_RAFT_TRANSPORT=overlay, why Raft cannot bind its overlay address here, or None. A daemon without
        a TUN (IfName none) has an address that no interface holds: pysyncobj would retry the bind forever, and
        every write would answer 503 "cannot bind ... yet; the write may still be applied", which it never could
        be. Logged once per distinct reason."""
        if self.settings.raft_transport != "overlay":
            return None
        host = me.rsplit(":", 1)[0]
        if address_is_local(host):
            self._bind_refused = None
            return None
        reason = (
            f"Raft not started: X0_RAFT_TRANSPORT=overlay, but no interface of this host holds the overlay "
            f"address {host} (the daemon runs without a TUN, IfName none?): give the daemon a TUN, or set "
            "X0_RAFT_TRANSPORT=auto to use the members file's addresses"
        )
        if self._bind_refused != reason:
            self._bind_refused = reason
            log.error("%s", reason)
        return reason

    async def _find_group(self, voters_only: bool = False) -> list[str] | None:
        """Raft addresses of the voters of a group that has a leader now, as another member reports them;
        `voters_only`: as a voter reports them (a client's view is a copy it fetched earlier, maybe from before
        this node became a voter)."""
        found: list[str] | None = None

        async def ask(node_id: str) -> Cluster | None:
            url = self._url(node_id)
            if url is None or self._http is None:
                return None
            try:
                r = await self._http.get(f"{url}/cluster")
                if r.status_code != 200:
                    return None
                return msgspec.json.decode(r.content, type=Cluster)
            except (httpx.HTTPError, msgspec.DecodeError, msgspec.ValidationError):
                return None

        others = [m.node_id for m in self.members.members if m.node_id != self.node_id]
        answers = await asyncio.gather(*(ask(n) for n in others))
        for c in answers:
            if c is None or c.leader_id is None or c.term == 0:
                continue
            if voters_only and c.role not in ("leader", "follower"):
                continue
            voters = [m.raft_address for m in c.members if m.voter and m.raft_address]
            if voters:
                found = voters
                if c.target:
                    self.target = list(c.target)
                break
        return found

    async def _check_removed(self, throttle: bool = False) -> None:
        """A voter with no leader for a while: if some member reports a group with a leader that no longer
        lists this node as a voter, this node was removed: stop and become a client."""
        if self.engine is None:
            return
        now = time.monotonic()
        if throttle and now - self._removed_checked < CLIENT_REFRESH_S:
            return
        self._removed_checked = now
        me = self._self_address()
        # Only a voter's word: stopping wipes this node's log and vote, which a voter still in the group needs.
        group = await self._find_group(voters_only=True)
        if group is None or me in group:
            return
        log.warning("this node is no longer a Raft voter (group: %s): stopping its engine", ", ".join(group))
        engine, self.engine = self.engine, None
        await engine.stop()
        self._wipe()
        if self._agent is not None:  # no replica here any more
            self._agent.metrics.raft.store_bytes.set(0)
            self._agent.metrics.raft.store_keys.set(0)
        self._set_role("client", "removed from the voters; forwarding to them")

    # --- leader: membership -------------------------------------------------------------------------------

    async def _lead(self, st: RaftStatus) -> None:
        assert self.engine is not None
        now = time.monotonic()
        by_addr = self._node_of_address()
        config = [a for a in st.voters]
        for a in config:
            if a in st.connected or a not in self._seen:
                self._seen[a] = now
        for a in list(self._seen):
            if a not in config:
                del self._seen[a]
        lost = {
            by_addr[a]
            for a in config
            if a != self.engine.address and a in by_addr and now - self._seen[a] > self.settings.raft_replace_after
        }
        # A voter dropped for being lost stays out of the target until its agent answers again (else the
        # target would name it again as soon as it left the configuration, and nobody would replace it).
        for n in lost:
            self._excluded[n] = now
        if self._excluded and now - self._excluded_checked > CLIENT_REFRESH_S:
            self._excluded_checked = now
            for n in [n for n in self._excluded if n not in lost]:
                if await self._answers(n):
                    del self._excluded[n]
        order = self.order() if self.members.members else [self.node_id]
        current = [by_addr.get(a, a) for a in config]
        target = vt.sticky_target(order, current, self.voter_target_count(), lost | set(self._excluded))
        self.target = target
        if target != self._published_target and (self._publishing is None or self._publishing.done()):
            self._publishing = asyncio.get_running_loop().create_task(self._publish_target(list(target)))
        if self._change is not None and not self._change.done():
            return
        if self.node_id not in target:
            # A leader does not remove itself: it hands leadership over and the next leader removes it.
            log.warning("raft membership: this leader is not in the target voters: transferring leadership")
            self.engine.transfer_leadership()
            return
        members = self.members.by_id
        if any(n in members and self.address_of(n) is None for n in target):
            return  # overlay addresses still being learned: a voter not matched yet would look like an extra
        wanted = {a for a in (self.address_of(n) for n in target) if a is not None}
        extra = [a for a in config if a not in wanted and a != self.engine.address]
        missing = [n for n in target if self.address_of(n) not in config]
        # Dead voters go first (they do not count toward quorum anyway), then additions, then healthy extras.
        dead = [a for a in extra if a not in st.connected]
        if dead:
            self._spawn_change("remove", dead[0], by_addr.get(dead[0], dead[0]))
            return
        for node_id in missing:
            if await self._is_joining(node_id):
                addr = self.address_of(node_id)
                assert addr is not None
                self._spawn_change("add", addr, node_id)
                return
        if extra and not missing:
            self._spawn_change("remove", extra[0], by_addr.get(extra[0], extra[0]))

    async def _publish_target(self, target: list[str]) -> None:
        try:
            await self.put(TARGET_KEY, json.dumps(target).encode())
            self._published_target = target
        except (RaftUnavailable, KvConflict, KvFull) as exc:
            log.debug("could not publish the voter target: %s", exc)

    def _spawn_change(self, op: str, address: str, node_id: str) -> None:
        assert self.engine is not None
        engine = self.engine

        async def change() -> None:
            try:
                if op == "add":
                    await engine.add_voter(address)
                else:
                    await engine.remove_voter(address)
                log.warning("raft membership: %s voter %s (%s) committed", op, node_id, address)
            except RaftUnavailable as exc:
                log.warning("raft membership: %s voter %s failed: %s", op, node_id, exc)

        log.warning("raft membership: %s voter %s (%s)", op, node_id, address)
        self._change = asyncio.get_running_loop().create_task(change(), name=f"x0-raft-{op}-{node_id}")

    async def _answers(self, node_id: str) -> bool:
        url = self._url(node_id)
        if url is None or self._http is None:
            return False
        try:
            return (await self._http.get(f"{url}/cluster")).status_code == 200
        except httpx.HTTPError:
            return False

    async def _is_joining(self, node_id: str) -> bool:
        url = self._url(node_id)
        if url is None or self._http is None:
            return False
        try:
            r = await self._http.get(f"{url}/cluster")
            return r.status_code == 200 and r.json().get("role") == "joining"
        except (httpx.HTTPError, ValueError):
            return False

    # --- clients ----------------------------------------------------------------------------------------------

    async def _refresh_client(self, force: bool = False) -> None:
        if self.engine is not None:
            # A voter now: a forward that began while its engine was starting must not make it a client again
            # (for a step, every request it got was forwarded to "no voter known", itself excluded).
            return
        now = time.monotonic()
        # Every step while the leader is unknown (the group is forming or electing), else every 5 s.
        period = CLIENT_REFRESH_S if self.leader_id is not None else 0.0
        if not force and now - self._client_refresh < period:
            return
        self._client_refresh = now
        # Any voter knows the leader: ask them in random order so clients spread over the voters instead of all
        # polling the leader (a 500-node mesh: ~100 requests/s over 5 voters at this period).
        candidates = [n for n in self.client_voters if n != self.node_id]
        random.shuffle(candidates)
        if self.home_voter in candidates:
            candidates.remove(self.home_voter)
            candidates.insert(0, self.home_voter)
        candidates += [n for n in self.static_target() if n not in candidates and n != self.node_id]
        for node_id in candidates:
            url = self._url(node_id)
            if url is None or self._http is None:
                continue
            try:
                r = await self._http.get(f"{url}/cluster")
                c = msgspec.json.decode(r.content, type=Cluster) if r.status_code == 200 else None
            except (httpx.HTTPError, msgspec.DecodeError, msgspec.ValidationError):
                c = None
            if c is None or c.role in ("client", "disabled", "joining"):
                continue
            self.client_voters = {m.node_id: m.raft_address or "" for m in c.members if m.voter}
            self.home_voter = node_id
            if c.leader_id != self.leader_id:
                self._count_leader_change()
            self.leader_id = c.leader_id
            self.client_term = c.term
            self.client_commit = c.commit_index
            if c.target:
                self.target = list(c.target)
            if c.leader_id is not None:
                self._client_contact = now
            self._set_role("client", f"forwarding to the voters (leader {c.leader_id or 'unknown'})")
            return
        if self.leader_id is not None:
            self._count_leader_change()
        self.leader_id = None
        self._set_role("client", "no voter answered /cluster")

    def forward_targets(self, stale_read: bool = False) -> list[str]:
        """Agent URLs to forward a client's request to: the leader first, then the other voters. A stale read,
        which any voter answers from its replica, goes to this client's home voter first."""
        ids = [self.leader_id] if self.leader_id else []
        if stale_read and self.home_voter in self.client_voters:
            ids = [self.home_voter, *(n for n in ids if n != self.home_voter)]
        ids += [n for n in self.client_voters if n not in ids]
        ids += [n for n in self.static_target() if n not in ids and n != self.node_id]
        return [u for u in (self._url(n) for n in ids) if u is not None]

    async def forward(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        content: bytes | None = None,
        request_id: str | None = None,
        writer_deadline: float | None = None,
    ) -> httpx.Response:
        """Send a /kv request to a voter (leader first); the first answer that is not a connection failure or a
        503 wins, within the write timeout. Raises RaftUnavailable when none answers.

        A write carries one request id to every voter it tries, so trying the next voter after a timeout cannot
        apply it twice; and once an attempt may have reached a voter, failing in the end says the outcome is
        unknown, whatever the last voter answered. It also carries the time we stop waiting (the writer's own
        `writer_deadline`, Unix time, when earlier): a voter it reaches later refuses it, so an attempt we gave
        up on cannot apply long after our 503."""
        if self._http is None:
            raise RaftUnavailable(self.detail)
        headers = {"X-X0-Forwarded": self.node_id}
        mutating = method in ("PUT", "POST", "DELETE")
        if mutating:
            headers[REQUEST_ID_HEADER] = request_id or uuid.uuid4().hex
            if self.settings.api_token:  # reads need no token: it travels only with writes
                headers["Authorization"] = f"Bearer {self.settings.api_token}"
            ours = time.time() + self.settings.raft_write_timeout
            headers[DEADLINE_HEADER] = f"{min(ours, writer_deadline or ours):.3f}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.raft_write_timeout
        last = self._bind_refused or "no voter known"
        last_503: httpx.Response | None = None
        unknown = False
        stale_read = method == "GET" and (params or {}).get("stale") == "true"
        while True:
            urls = self.forward_targets(stale_read)
            if not urls:
                await self._refresh_client(force=True)
                urls = self.forward_targets(stale_read)
            refused = 0
            for url in urls:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                if "Authorization" in headers and not may_send_token(url, self.settings.allow_clear_underlay):
                    # The voter would refuse it (agent.auth), and the token must not cross the underlay in clear.
                    refused += 1
                    last = (
                        f"{url}: not forwarding the API token in clear over the underlay (give the agents "
                        f"X0_TLS_CERT/X0_TLS_KEY and https agent URLs, overlay addresses in the members file, or "
                        f"{ALLOW_CLEAR_ENV}=true for a mesh on one host)"
                    )
                    continue
                try:
                    r = await self._http.request(
                        method,
                        f"{url}{path}",
                        params=params,
                        content=content,
                        headers=headers,
                        timeout=max(0.05, remaining),
                    )
                except httpx.HTTPError as exc:
                    last = f"{url}: {type(exc).__name__}"
                    # Never connected: not sent. Anything later (a read timeout, a reset): maybe applied.
                    sent = not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
                    unknown = unknown or (mutating and sent)
                    continue
                if r.status_code == 503:
                    last_503 = r
                    unknown = unknown or (mutating and r.headers.get(OUTCOME_HEADER) != "not-applied")
                    continue
                return r
            if urls and refused == len(urls) and not unknown:
                raise RaftUnavailable(last)  # nothing was sent: not applied, and waiting will not change it
            if loop.time() >= deadline:
                if last_503 is not None and not unknown:
                    return last_503
                if last_503 is not None:
                    last = str(self._detail_of(last_503) or "a voter answered 503")
                raise RaftUnavailable(
                    f"no voter answered within {self.settings.raft_write_timeout:g} s ({last})",
                    outcome_unknown=unknown,
                )
            await self._refresh_client(force=True)
            await asyncio.sleep(0.05)

    @staticmethod
    def _detail_of(r: httpx.Response) -> Any:
        try:
            body = r.json()
        except ValueError:
            return None
        return body.get("detail") if isinstance(body, dict) else None

    # --- KV operations (voters: engine; clients: forwarded) -------------------------------------------------

    def _require_engine(self) -> RaftEngine:
        if self.engine is None or self.joining:
            raise RaftUnavailable(self.detail)
        return self.engine

    def is_client(self) -> bool:
        return self.role == "client" or self.joining

    def unavailable_reason(self) -> str | None:
        """Why /kv cannot be served at all on this node (None: it can, locally or by forwarding)."""
        if self.role == "disabled":
            return self.detail
        return None

    async def get(self, key: str, *, stale: bool = False) -> KvValue | None:
        engine = self._require_engine()
        if not stale:
            await engine.barrier()
        entry, index = engine.state.read(key)
        return self._value(entry, index, stale)

    def _value(self, entry: Entry | None, index: int, stale: bool) -> KvValue | None:
        if entry is None:
            return None
        assert self.engine is not None
        st = self.engine.status
        lag = None
        if stale:
            lc = st.leader_commit_index if st.leader_commit_index is not None else st.commit_index
            lag = max(0, int(lc) - st.applied_index)
        return KvValue(entry.value, entry.modify_index, entry.create_index, index, stale, lag)

    async def list(
        self, prefix: str, limit: int, *, stale: bool = False
    ) -> tuple[list[tuple[str, Entry]], int, bool]:
        engine = self._require_engine()
        if not stale:
            await engine.barrier()
        return engine.state.list(prefix, limit)

    async def put(
        self,
        key: str,
        value: bytes,
        cas: int | None = None,
        request_id: str | None = None,
        not_after: float | None = None,
    ) -> tuple[int, int]:
        """`not_after` (Unix time): the writer's deadline plus the clock slack; not handed to Raft later."""
        engine = self._require_engine()
        rid = request_id or uuid.uuid4().hex
        status, a, index = await engine.put(key, value, cas, rid, _loop_time(not_after))
        if status == "conflict":
            raise KvConflict(key, cas if cas is not None else -1, a)
        if status == "full":
            raise KvFull(f"the store holds {a} bytes: this write would exceed its 64 MiB limit")
        return a, index

    async def delete(
        self, key: str, cas: int | None = None, request_id: str | None = None, not_after: float | None = None
    ) -> tuple[bool, int]:
        engine = self._require_engine()
        status, a, index = await engine.delete(key, cas, request_id or uuid.uuid4().hex, _loop_time(not_after))
        if status == "conflict":
            raise KvConflict(key, cas if cas is not None else -1, a)
        return bool(a), index

    async def append_trim(self, prefix: str, key: str, value: bytes, keep: int, create_only: bool = False) -> int:
        """Returns the key's modify index (with `create_only` and the key present: the existing one's)."""
        engine = self._require_engine()
        status, a, _ = await engine.append_trim(prefix, key, value, keep, uuid.uuid4().hex, create_only)
        if status == "full":
            raise KvFull("the store is full")
        return int(a)

    # --- product helpers that work on voters and clients alike -----------------------------------------------

    async def read_value(self, key: str, *, stale: bool = False) -> KvValue | None:
        if not self.is_client():
            return await self.get(key, stale=stale)
        r = await self.forward("GET", f"/kv/{key}", params={"stale": "true"} if stale else None)
        if r.status_code == 404:
            return None
        body = self._forwarded_json(r)
        return KvValue(
            base64.b64decode(body["value"]),
            int(body["modify_index"]),
            int(body["create_index"]),
            int(body["index"]),
            bool(body["stale"]),
            body.get("lag"),
        )

    async def write_value(self, key: str, value: bytes, cas: int | None = None) -> int:
        if not self.is_client():
            return (await self.put(key, value, cas))[0]
        params = {"cas": str(cas)} if cas is not None else None
        r = await self.forward("PUT", f"/kv/{key}", params=params, content=value)
        if r.status_code == 409:
            raise KvConflict(key, cas if cas is not None else -1, _current_from(r))
        return int(self._forwarded_json(r)["modify_index"])

    async def delete_value(self, key: str, cas: int | None = None) -> bool:
        if not self.is_client():
            return (await self.delete(key, cas))[0]
        params = {"cas": str(cas)} if cas is not None else None
        r = await self.forward("DELETE", f"/kv/{key}", params=params)
        if r.status_code == 409:
            raise KvConflict(key, cas if cas is not None else -1, _current_from(r))
        return bool(self._forwarded_json(r)["deleted"])

    async def list_values(self, prefix: str, limit: int) -> list[tuple[str, bytes]]:
        """Keys and values under a prefix (linearizable). Clients fetch each value (used for small sets)."""
        if not self.is_client():
            rows, _, _ = await self.list(prefix, limit)
            return [(k, e.value) for k, e in rows]
        r = await self.forward("GET", "/kv", params={"prefix": prefix, "limit": str(limit)})
        keys = [k["key"] for k in self._forwarded_json(r)["keys"]]
        out: list[tuple[str, bytes]] = []
        for k in keys:
            v = await self.read_value(k, stale=True)
            if v is not None:
                out.append((k, v.value))
        return out

    async def append_value(
        self, prefix: str, key: str, value: bytes, keep: int, create_only: bool = False
    ) -> None:
        """Add a record under `prefix`, keeping the newest `keep`. `create_only`: a record already under `key`
        stays (no error)."""
        if not self.is_client():
            await self.append_trim(prefix, key, value, keep, create_only)
            return
        # Clients: a plain put; the next voter-side append trims.
        try:
            await self.write_value(key, value, cas=0 if create_only else None)
        except KvConflict:
            if not create_only:
                raise

    @staticmethod
    def _forwarded_json(r: httpx.Response) -> dict[str, Any]:
        try:
            body = r.json()
        except ValueError:
            body = {}
        if r.status_code >= 400 or not isinstance(body, dict):
            detail = body.get("detail") if isinstance(body, dict) else None
            if r.status_code == 503:
                unknown = r.headers.get(OUTCOME_HEADER) == "unknown"
                raise RaftUnavailable(str(detail or "a voter answered 503"), outcome_unknown=unknown)
            raise KvForwardError(r.status_code, str(detail or r.text[:200]))
        return body

    # --- status -----------------------------------------------------------------------------------------------

    def _set_role(self, role: Role, detail: str) -> None:
        self.role = role
        self.detail = detail
        if self._agent is not None and self._metrics_role != role:
            self._agent.metrics.raft.set_role(role)
            self._metrics_role = role
            self._agent.notify()

    def _count_leader_change(self) -> None:
        if self._agent is not None:
            self._agent.metrics.raft.leader_changes.inc()

    def _publish(self, st: RaftStatus) -> None:
        if self.engine is None or self._agent is None:
            return
        if self.joining:
            role: Role = "joining"
        else:
            role = st.role  # type: ignore[assignment]
        by_addr = self._node_of_address()
        leader = by_addr.get(st.leader, st.leader) if st.leader else None
        self._set_role(role, f"voter; Raft on {self.engine.address}; leader {leader or 'none'}")
        m = self._agent.metrics.raft
        m.term.set(st.term)
        m.commit_index.set(st.commit_index)
        m.applied_index.set(st.applied_index)
        if st.leader_changes > self._last_changes:
            m.leader_changes.inc(st.leader_changes - self._last_changes)
            self._last_changes = st.leader_changes
        if st.rebuilds > self._last_rebuilds:
            m.rebuilds.inc(st.rebuilds - self._last_rebuilds)
            self._last_rebuilds = st.rebuilds
        if st.ready and not self.joining and st.voters != self._saved_config:
            # A restart starts from the configuration it last had, not the one it first had: after a 3 -> 5
            # resize the restarted voter counts five (pysyncobj replays its log too, but only once running).
            self._saved_config = st.voters
            try:
                self._save_voters(st.voters)
            except OSError as exc:
                log.warning("cannot save the Raft voters to %s: %s", self._raft_dir(), exc)
        m.members.labels(state="voter").set(len(st.voters))
        m.members.labels(state="reachable").set(len(st.connected))
        m.members.labels(state="client").set(max(0, len(self.members.members) - len(st.voters)))
        m.has_quorum.set(1 if st.has_quorum else 0)
        # Read without the store's lock: two ints, each read whole; a scrape may see them one write apart.
        m.store_bytes.set(self.engine.state.size)
        m.store_keys.set(len(self.engine.state.entries))

    def cluster(self) -> Cluster:
        s = self.settings
        members = self.members if self._agent is not None else None
        all_members = list(members.members) if members is not None else []
        target_n = self.voter_target_count() if self._agent is not None else 0
        if self.engine is None:
            voters = set(self.client_voters)
            rows = [
                ClusterMember(
                    node_id=m.node_id,
                    raft_address=self._raft_address(m, want=False),
                    voter=m.node_id in voters,
                    state="self"
                    if m.node_id == self.node_id
                    else "leader"
                    if m.node_id == self.leader_id
                    else ("connected" if m.node_id in voters else "client"),
                )
                for m in all_members
            ]
            contact = None if self._client_contact is None else round(time.monotonic() - self._client_contact, 3)
            return Cluster(
                node_id=self.node_id,
                enabled=s.raft_enabled,
                role=self.role,
                term=self.client_term,
                leader_id=self.leader_id,
                leader_url=self._url(self.leader_id) if self.leader_id else None,
                commit_index=self.client_commit,
                applied_index=0,
                last_contact_s=contact if self.leader_id else None,
                has_quorum=False,
                voters_target=target_n,
                detail=self.detail,
                members=rows,
                target=list(self.target),
            )
        st = self.engine.status
        by_addr = self._node_of_address()
        voter_ids = {by_addr.get(a, a): a for a in st.voters}
        leader = by_addr.get(st.leader, st.leader) if st.leader else None
        rows = []
        seen: set[str] = set()
        for m in all_members:
            addr = self._raft_address(m, want=False) or voter_ids.get(m.node_id)
            voter = m.node_id in voter_ids
            seen.add(m.node_id)
            if m.node_id == self.node_id:
                state = "self"
            elif not voter:
                state = "client"
            elif m.node_id == leader:
                state = "leader"
            else:
                state = "connected" if addr in st.connected else "disconnected"
            rows.append(
                ClusterMember(
                    node_id=m.node_id,
                    raft_address=addr,
                    voter=voter or m.node_id == self.node_id,
                    state=state,  # type: ignore[arg-type]
                    match_index=st.match_index.get(addr) if st.role == "leader" and voter else None,
                )
            )
        for nid, addr in voter_ids.items():  # voters no longer in the members file
            if nid not in seen and addr != self.engine.address:
                rows.append(
                    ClusterMember(
                        node_id=nid,
                        raft_address=addr,
                        voter=True,
                        state="connected" if addr in st.connected else "disconnected",
                        match_index=st.match_index.get(addr) if st.role == "leader" else None,
                    )
                )
        contact = None
        if st.last_contact_mono is not None and leader is not None:
            contact = 0.0 if st.role == "leader" else round(max(0.0, time.monotonic() - st.last_contact_mono), 3)
        return Cluster(
            node_id=self.node_id,
            enabled=s.raft_enabled,
            role=self.role,
            term=st.term,
            leader_id=leader,
            leader_url=self._url(leader) if leader else None,
            commit_index=st.commit_index,
            applied_index=st.applied_index,
            last_contact_s=contact,
            has_quorum=st.has_quorum,
            voters_target=target_n,
            detail=self.detail,
            members=rows,
            target=list(self.target),
        )


def _current_from(r: httpx.Response) -> int:
    try:
        detail = str(r.json().get("detail", ""))
        return int(detail.rsplit(" ", 1)[-1])
    except (ValueError, AttributeError):
        return -1
