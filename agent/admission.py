"""Peer admission: the daemon admits exactly the members' keys, and the agent reports the ones it refused.

- Enforcing (`YGGDRASIL_CONFIG`, the agent supervises the daemon): `AllowedPublicKeys` in the daemon's config is
  kept equal to the other members' known keys (agent.yggdrasil.admission.admitted_keys), written before the first
  start, so a daemon never runs open while keys are known. The daemon reads it only at start (no admin call sets
  it, and SIGHUP kills 0.4.7): the file follows every change of the members' keys, but the daemon is restarted
  (its links drop for about a second, then peering re-adds them) only when a planned neighbour's key is not
  admitted by the running daemon, or the daemon runs open while keys are known (`restart_needed`), so a joining
  node restarts its few neighbours' daemons, not the mesh's; a key that left is dropped at the daemon's next start.
  Restarts take turns (`restart_time`: 2 s slots on the wall clock, no two planned neighbours in one): a Nomad mesh
  learns every key at once, and its daemons all closing together dropped every link and Raft's leader.
- Enforcing for a daemon another process starts (`X0_ADMISSION_FILE`, Nomad's yggdrasil task): the same list in
  that file, merged by the task's start script at every daemon start; the restart is asked of the script through
  `<file>.restart`, and `<file>.running` says what the running daemon admits. A Nomad members file has no keys:
  the members' keys are the ones they published in the replicated store (agent.consensus.key_directory).
- Reporting (supervised: the daemon log the supervisor writes; otherwise `X0_DAEMON_LOG`, e.g. Nomad's
  `alloc/logs/yggdrasil.stdout.0`): the log is followed from its end, each refusal counted in
  `x0_peer_admission_refused_total`, listed in GET /mesh/peers `refused` (key, its overlay address, where it
  dialled from, attempts, first and last time) and logged once per key per minute.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from agent.yggdrasil import admission as pure
from agent.yggdrasil.address import address_for_key
from agent.yggdrasil.daemon_config import write_config, write_json_file

if TYPE_CHECKING:
    from agent.state import AgentState

log = logging.getLogger("x0.admission")

POLL_S = 1.0
# Bytes read from the log per poll at most: a daemon flooded by a scanner must not stall the agent.
READ_CAP = 1 << 20
WARN_EVERY_S = 60.0
# /mesh/peers lists keys refused within this window.
SHOW_FOR_S = 3600.0


class LogFollower:
    """New complete lines of a file, from its end when first opened; starts over when the file is replaced or
    truncated (a restarted Nomad task, logrotate): another inode, a shorter file, or other first bytes (a new
    file can get the old one's inode number)."""

    HEAD = 128

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ino: int | None = None
        self._head = b""
        self._offset = 0
        self._partial = b""

    def read_lines(self) -> list[str]:
        try:
            st = os.stat(self.path)
            if st.st_size == self._offset and st.st_ino == self._ino:
                return []
            with open(self.path, "rb") as fh:
                head = fh.read(self.HEAD)
                if self._ino is None:  # first sight: history before the agent started is not news
                    self._ino, self._head, self._offset = st.st_ino, head, st.st_size
                    return []
                known = self._head[: len(head)]
                if st.st_ino != self._ino or st.st_size < self._offset or head[: len(known)] != known:
                    self._ino, self._offset, self._partial = st.st_ino, 0, b""
                self._head = head
                fh.seek(self._offset)
                data = fh.read(READ_CAP)
        except OSError:
            if self._ino is None:
                self._ino = -1  # not there yet: when it appears, all of it is new
            return []
        self._offset += len(data)
        chunks = (self._partial + data).split(b"\n")
        self._partial = chunks.pop()[-4096:]  # an unfinished line; bounded if the writer never ends it
        return [c.decode("utf-8", "replace") for c in chunks]


class PeerAdmission:
    def __init__(
        self,
        agent: AgentState,
        *,
        log_path: Path | None,
        config_path: Path | None,
        keys_file: Path | None = None,
    ) -> None:
        self.agent = agent
        self.config_path = config_path  # None: not enforcing through the daemon's config (it is not ours)
        # A daemon another process starts (Nomad's sidecar task): its start script merges this file into the
        # config's AllowedPublicKeys, copies it to `<file>.running` as it starts the daemon, and restarts the
        # daemon when `<file>.restart` appears (nomad/mesh.nomad.hcl, docs/contracts.md §1).
        self.keys_file = keys_file if config_path is None else None
        self.follower = LogFollower(log_path) if log_path is not None else None
        self.refusals = pure.RefusalLog()
        self.admitted: tuple[str, ...] | None = None  # what the daemon's config admits; None: everyone
        self._detail = "not started"
        self._keys_gen: tuple[int, int] = (-1, -1)
        self._warned: dict[str, float] = {}
        self._running: tuple[str, ...] = ()  # what the running daemon admits (read from its config at its start)
        self._epoch: object = 0
        self._restart_asked: object = None  # the daemon start a restart was asked of (sidecar)
        self._restart_due: float | None = None  # Unix time of this node's turn to restart (pure.restart_time)
        self._colours: tuple[object, dict[str, int]] = (None, {})  # per members file

    @property
    def detail(self) -> str:
        """What the daemon admits, for /mesh/peers: the config's list, and the running daemon's while it waits
        for its turn to restart."""
        if self._restart_due is None:
            return self._detail
        at = time.strftime("%H:%M:%S", time.localtime(self._restart_due))
        return (
            f"{self._detail}; the running daemon does not admit them yet: it restarts at {at} "
            "(restarts take turns so that no two neighbours restart together)"
        )

    # --- enforcing ---------------------------------------------------------------------------------------------

    def _want(self) -> tuple[tuple[str, ...] | None, str]:
        members, me = self.agent.members.members, self.agent.settings.node_id
        published = self.agent.published_keys
        want = pure.admitted_keys(members, me, published)
        if want is None:
            return None, "open: no other member's public key is known, so every key is admitted"
        detail = f"admits the {len(want)} other members' keys"
        missing = pure.keyless(members, me, published)
        if missing:
            names = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            detail += f"; members without a known key cannot dial in: {names}"
        return want, detail

    def sync_config(self) -> bool:
        """Make the daemon's AllowedPublicKeys the members' keys (its config, or the keys file a sidecar's start
        script merges). True when the file changed."""
        self._keys_gen = (self.agent.members.generation, self.agent.published_keys_gen)
        if self.keys_file is not None:
            return self._sync_keys_file()
        if self.config_path is None:
            self._detail = (
                "not enforced here: the daemon's config is not the agent's (set YGGDRASIL_CONFIG, or "
                "X0_ADMISSION_FILE for a daemon whose start script merges it)"
            )
            return False
        want, detail = self._want()
        try:
            config = json.loads(self.config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            self._detail = f"cannot read {self.config_path}: {exc}"
            return False
        if not isinstance(config, dict):
            self._detail = f"{self.config_path} is not a JSON object"
            return False
        self._detail = detail
        if pure.configured_keys(config) == (want or ()):
            self._set_admitted(want)
            return False
        config[pure.CONFIG_KEY] = list(want or ())
        try:
            write_config(config, self.config_path)
        except OSError as exc:
            self._detail = f"cannot write {self.config_path}: {exc}"
            return False
        self._set_admitted(want)
        log.info("daemon config %s: %s", self.config_path, self.detail)
        return True

    def _sync_keys_file(self) -> bool:
        assert self.keys_file is not None
        want, detail = self._want()
        self._detail = detail + f" (through {self.keys_file})"
        try:
            have = pure.configured_keys({pure.CONFIG_KEY: json.loads(self.keys_file.read_text(encoding="utf-8"))})
        except (OSError, ValueError):
            have = None
        if have == (want or ()):
            self._set_admitted(want)
            return False
        try:
            write_json_file(list(want or ()), self.keys_file)
        except OSError as exc:
            self._detail = f"cannot write {self.keys_file}: {exc}"
            return False
        self._set_admitted(want)
        log.info("admission keys file %s: %s", self.keys_file, self.detail)
        return True

    def _set_admitted(self, keys: tuple[str, ...] | None) -> None:
        self.admitted = keys
        self.agent.metrics.admission_keys.set(len(keys or ()))

    def _note_daemon_start(self) -> bool:
        """The daemon read its config when it (re)started: remember what it admits. True when a sidecar's script
        started a new daemon since the last look."""
        if self.keys_file is not None:
            running = self.keys_file.with_name(self.keys_file.name + ".running")
            try:
                st = running.stat()
                epoch: object = (st.st_ino, st.st_mtime_ns)
                if epoch != self._epoch:
                    restarted = self._epoch not in (0, None)  # not the first sight: the script restarted it
                    self._epoch = epoch
                    self._running = pure.configured_keys(
                        {pure.CONFIG_KEY: json.loads(running.read_text(encoding="utf-8"))}
                    )
                    return restarted
            except (OSError, ValueError, AttributeError):
                self._epoch, self._running = None, ()
            return False
        supervisor = self.agent.supervisor
        if supervisor is None or self.config_path is None or supervisor.epoch == self._epoch:
            return False
        self._epoch = supervisor.epoch
        try:
            self._running = pure.configured_keys(json.loads(self.config_path.read_text(encoding="utf-8")))
        except (OSError, ValueError, AttributeError):
            self._running = ()
        return False

    def _ask_sidecar_restart(self, why: str) -> None:
        """Ask the sidecar's start script to restart the daemon, once per daemon start."""
        assert self.keys_file is not None
        if self._epoch is None or self._restart_asked == self._epoch:
            return  # no daemon started by the script yet, or already asked of this one
        request = self.keys_file.with_name(self.keys_file.name + ".restart")
        try:
            request.write_text(why + "\n", encoding="utf-8")
        except OSError as exc:
            self._detail += f"; cannot ask for a daemon restart ({request}: {exc})"
            return
        self._restart_asked = self._epoch
        log.warning("asked the daemon's start script for a restart (%s): %s", request, why)

    async def _follow_members(self) -> None:
        epoch = self._epoch
        if await asyncio.to_thread(self._note_daemon_start):
            self.agent.note_daemon_restarted()  # on the event loop: it wakes the agent's waiters
        keys_changed = (self.agent.members.generation, self.agent.published_keys_gen) != self._keys_gen
        if not keys_changed and self._epoch == epoch and self._restart_due is None:
            return
        if keys_changed:
            await asyncio.to_thread(self.sync_config)
        members, me = self.agent.members.members, self.agent.settings.node_id
        if not pure.restart_needed(members, me, self._running, self.agent.published_keys):
            self._restart_due = None
            return
        now = time.time()
        if self._restart_due is None:
            if self._colours[0] is not members:
                self._colours = (members, pure.restart_colours(members))
            self._restart_due = pure.restart_time(self._colours[1], me, now)
            if self._restart_due > now:
                log.info(
                    "daemon restart for admission in %.1f s: its turn (no two neighbours restart together)",
                    self._restart_due - now,
                )
        if now < self._restart_due:
            return
        self._restart_due = None
        if self._running:
            why = "a planned neighbour's public key is not admitted yet (AllowedPublicKeys)"
        else:
            why = "the daemon admits every key and the members' keys are now known (AllowedPublicKeys)"
        if self.keys_file is not None:
            await asyncio.to_thread(self._ask_sidecar_restart, why)
            return
        supervisor = self.agent.supervisor
        if supervisor is not None and self.config_path is not None and supervisor.epoch == self._epoch:
            await supervisor.restart(why)

    # --- reporting ---------------------------------------------------------------------------------------------

    def _read_log(self) -> list[pure.Refusal]:
        if self.follower is None:
            return []
        return [r for r in map(pure.parse_refusal, self.follower.read_lines()) if r is not None]

    def _report(self, refusals: list[pure.Refusal]) -> None:
        now = time.time()
        for peer in self.refusals.extend(refusals, now):
            self.agent.metrics.admission_refused.inc()
            if now - self._warned.get(peer.key, 0.0) >= WARN_EVERY_S:
                self._warned[peer.key] = now
                log.warning(
                    "refused a peer that is not a member: key %s (address %s) from %s, %d attempt(s) so far",
                    peer.key,
                    address_for_key(peer.key) or "?",
                    peer.remote or "an unknown address",
                    peer.attempts,
                )
        if len(self._warned) > 4 * pure.MAX_REFUSED_KEYS:
            self._warned = {k: t for k, t in self._warned.items() if now - t < WARN_EVERY_S}
        if refusals:
            self.agent.notify()

    def recent(self) -> list[pure.RefusedPeer]:
        return self.refusals.recent(time.time() - SHOW_FOR_S)

    async def run(self) -> None:
        while True:
            try:
                await self._follow_members()
                refusals = await asyncio.to_thread(self._read_log)
                self._report(refusals)
            except Exception:  # one bad poll must not end admission reporting for the agent's lifetime
                log.exception("peer admission poll failed")
            wait = POLL_S
            if self._restart_due is not None:  # wake on the turn itself, not up to a poll into it
                wait = min(wait, max(0.01, self._restart_due - time.time()))
            await asyncio.sleep(wait)
