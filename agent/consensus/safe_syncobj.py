"""pysyncobj's SyncObj with Raft's log-matching rules restored (pysyncobj 0.3.17, pinned: private names).

pysyncobj 0.3.17 can truncate log entries a follower already applied (seen on a 20-node formation; reproduced by
bench/raft_truncation/, read from its source):
- The leader advances `nextIndex` as it sends, so several append_entries are in flight, and the acknowledgement
  of an earlier one sets `nextIndex` back: the leader resends entries the follower holds.
- The follower deletes everything after `prevLogIdx` whenever its log is longer, without looking for a conflict
  (Raft: delete only from the first entry whose term differs). Entries of 64 KiB or more travel one per message,
  so a resend shrinks the log below entries the follower acknowledged and applied: if the leader died then, a
  candidate missing a committed entry could win.
- Snapshot chunks (and `serialized: None` messages) raise the follower's commit index to its own last entry,
  over entries no leader has checked.

Here: an acknowledgement never moves `nextIndex` back; a follower drops the entries it already holds (same index
and term) and truncates only at a real conflict, never below what it applied; messages that check nothing of the
log cannot raise the commit index. A real conflict with an applied entry cannot happen while commits are sound;
if it does, the replica stops taking entries and flags `diverged` so the engine rebuilds it from the leader.
"""

from __future__ import annotations

import logging
from typing import Any

import pysyncobj.pickle as ppickle
from pysyncobj import SyncObj

log = logging.getLogger("x0.consensus")

Message = dict[str, Any]
Entry = tuple[bytes, int, int]  # command, index, term


class SafeSyncObj(SyncObj):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Set before SyncObj.__init__, which excludes the attributes existing then from its snapshots.
        # (term, index): this term's leader matched our log up to index; only then is a stale batch harmless.
        self._x0_verified: tuple[int, int] | None = None
        self.diverged: int | None = None  # index of an applied entry the leader's log contradicts
        self.duplicates = 0  # append_entries that resent entries this replica held (each once truncated them)
        super().__init__(*args, **kwargs)

    # pysyncobj dispatches every message through this name (bound when its transport is made).
    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "next_node_idx" and message.get("success") and not message.get("reset") and self._isLeader():
            next_index = self._SyncObj__raftNextIndex
            before = next_index.get(node)
            SyncObj._SyncObj__onMessageReceived(self, node, message)
            if before is not None and next_index.get(node, before) < before:
                next_index[node] = before  # the ack of an earlier batch: the later ones are in flight
            return
        if kind == "append_entries" and message["term"] >= self.raftCurrentTerm:
            filtered = self._filter(message)
            SyncObj._SyncObj__onMessageReceived(self, node, filtered)
            if "prevLogIdx" in filtered and "transmission" not in filtered:
                self._note_verified(filtered)
            return
        SyncObj._SyncObj__onMessageReceived(self, node, message)

    def _log(self) -> Any:
        return self._SyncObj__raftLog

    def _term_at(self, index: int) -> int | None:
        raft_log = self._log()
        first, last = raft_log[0][1], raft_log[-1][1]
        return int(raft_log[index - first][2]) if first <= index <= last else None

    def _note_verified(self, message: Message) -> None:
        """After pysyncobj accepted a message whose prev entry matched: our whole log is now this leader's."""
        prev = message["prevLogIdx"]
        if self._term_at(prev) == message["prevLogTerm"]:
            self._x0_verified = (message["term"], int(self._log()[-1][1]))

    def _heartbeat_only(self, message: Message) -> Message:
        """What pysyncobj still needs from a message whose entries it must not see: the leader and its term (so no
        election starts), and a commit index no higher than ours."""
        return {"type": "append_entries", "term": message["term"], "commit_index": self.raftCommitIndex}

    def _filter(self, message: Message) -> Message:
        if self.diverged is not None:
            return self._heartbeat_only(message)
        if "prevLogIdx" not in message:  # a snapshot chunk, or `serialized: None`: nothing of our log was checked
            capped = dict(message)
            capped["commit_index"] = min(message["commit_index"], self.raftCommitIndex)
            return capped
        transmission = message.get("transmission")
        if transmission in ("start", "process"):
            return message
        last = int(self._log()[-1][1])
        applied = int(self.raftLastApplied)
        prev, prev_term = message["prevLogIdx"], message["prevLogTerm"]
        held = self._term_at(prev)
        if held != prev_term:
            if held is not None and prev <= applied:
                return self._diverge(prev, applied, message)
            return message  # pysyncobj rejects it and asks for earlier entries: it truncates nothing then
        if transmission == "finish":
            entries: list[Entry] = [ppickle.loads(self._SyncObj__recvTransmission + message["data"])]
        else:
            entries = list(message.get("entries", []))
        sent = len(entries)
        while entries and self._term_at(entries[0][1]) == entries[0][2]:  # held already (log matching)
            prev, prev_term = entries[0][1], entries[0][2]
            entries.pop(0)
        if entries and entries[0][1] <= min(last, applied):
            return self._diverge(entries[0][1], applied, message)  # a real conflict with an applied entry
        if not entries and prev < last:
            # Everything sent is held and our log goes further: pysyncobj would cut it back to `prev`.
            if self._x0_verified == (message["term"], last):
                prev = last  # a stale batch of the leader that already matched all of it
            elif prev < applied:
                prev = min(applied, last)  # applied means committed: the leader holds those entries too
            prev_term = self._term_at(prev)
        if prev == message["prevLogIdx"] and len(entries) == sent and transmission is None:
            return message
        self.duplicates += 1
        if transmission == "finish":
            self._SyncObj__recvTransmission = ""
        rewritten = {k: v for k, v in message.items() if k not in ("transmission", "data")}
        rewritten.update(prevLogIdx=prev, prevLogTerm=prev_term, entries=entries)
        return rewritten

    def _diverge(self, index: int, applied: int, message: Message) -> Message:
        log.critical(
            "raft: applied entry %d conflicts with the leader's log (last applied %d): this replica stops taking "
            "entries and is rebuilt from the leader",
            index,
            applied,
        )
        self.diverged = index
        return self._heartbeat_only(message)
