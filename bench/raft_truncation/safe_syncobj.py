"""Prototype mitigation: SyncObj subclass fixing follower truncation (Raft 5.3 rule 3/5) and the leader's
nextIndex rewind on out-of-order acks. Relies on pysyncobj 0.3.17 private names (pin it)."""

import logging

import pysyncobj.pickle as ppickle
from pysyncobj import SyncObj

log = logging.getLogger("safe")


class SafeSyncObj(SyncObj):
    def __init__(self, *a, **kw):
        # set before SyncObj.__init__: it excludes the attributes existing then from snapshots
        self._x0_verified = None  # (term, index): our log up to index was matched by this term's leader
        self._x0_diverged = None  # set when an APPLIED entry really conflicts with the leader's log
        self._x0_dups = 0
        super().__init__(*a, **kw)

    def _SyncObj__onMessageReceived(self, node, message):
        t = message.get("type") if isinstance(message, dict) else None
        if (
            t == "next_node_idx"
            and not __import__("os").environ.get("NOLEADERFIX")
            and self._isLeader()
            and message.get("success")
            and not message.get("reset")
        ):
            nxt = self._SyncObj__raftNextIndex
            before = nxt.get(node)
            SyncObj._SyncObj__onMessageReceived(self, node, message)
            if before is not None and nxt.get(node, before) < before:
                nxt[node] = before  # an ack of an earlier pipelined batch must not rewind nextIndex
            return
        if t == "append_entries" and message["term"] >= self.raftCurrentTerm and self._x0_diverged is None:
            message = self._x0_filter(message)
            if message is None:
                return
            SyncObj._SyncObj__onMessageReceived(self, node, message)
            if "prevLogIdx" in message and "transmission" not in message:
                raft_log = self._SyncObj__raftLog
                first, last = raft_log[0][1], raft_log[-1][1]
                p = message["prevLogIdx"]
                if first <= p <= last and raft_log[p - first][2] == message["prevLogTerm"]:
                    self._x0_verified = (message["term"], last)
            return
        SyncObj._SyncObj__onMessageReceived(self, node, message)

    def _x0_filter(self, m):
        if "prevLogIdx" not in m:  # snapshot chunk, or 'serialized': None: nothing of our log was verified
            m = dict(m)
            m["commit_index"] = min(m["commit_index"], self.raftCommitIndex)
            return m
        tr = m.get("transmission")
        if tr in ("start", "process"):
            return m
        raft_log = self._SyncObj__raftLog
        first, last = raft_log[0][1], raft_log[-1][1]

        def term_at(i):
            return raft_log[i - first][2] if first <= i <= last else None

        applied = self.raftLastApplied
        prev, prev_term = m["prevLogIdx"], m["prevLogTerm"]
        if term_at(prev) is None or term_at(prev) != prev_term:
            if term_at(prev) is not None and prev <= applied:
                return self._x0_divergence(prev, applied)
            return m  # the library rejects it (reset): no truncation on that path
        if tr == "finish":
            entries = [ppickle.loads(self._SyncObj__recvTransmission + m["data"])]
        else:
            entries = list(m.get("entries", []))
        n0 = len(entries)
        while entries and term_at(entries[0][1]) == entries[0][2]:  # already held (Log Matching)
            prev, prev_term = entries[0][1], entries[0][2]
            entries.pop(0)
        if entries and entries[0][1] <= last and entries[0][1] <= applied:
            return self._x0_divergence(entries[0][1], applied)  # a genuine conflict with an applied entry
        if not entries and prev < last and self._x0_verified == (m["term"], last):
            prev, prev_term = last, raft_log[-1][2]  # stale/duplicate batch of this leader: keep our log
        if prev == m["prevLogIdx"] and len(entries) == n0 and tr is None:
            return m
        self._x0_dups += 1
        if tr == "finish":
            self._SyncObj__recvTransmission = ""
        m = {k: v for k, v in m.items() if k not in ("transmission", "data")}
        m.update(prevLogIdx=prev, prevLogTerm=prev_term, entries=entries)
        return m

    def _x0_divergence(self, idx, applied):
        log.critical(
            "applied entry %d conflicts with the leader (last applied %d): replica must be rebuilt", idx, applied
        )
        self._x0_diverged = idx
        return None
