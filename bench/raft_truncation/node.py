"""One pysyncobj node with the agent's engine settings, writing continuously when it leads; its journal records
every applied entry that pysyncobj truncates and whether the entry written back differs. Run by run.sh."""

import logging
import os
import signal
import sys
import time

import pysyncobj.journal as jr
import pysyncobj.syncobj as so
from pysyncobj import SyncObj, SyncObjConf, SyncObjConsumer, replicated

from agent.consensus.safe_syncobj import SafeSyncObj

logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)


class Store(SyncObjConsumer):
    def __init__(self):
        super().__init__()
        self.d = {}

    @replicated
    def put(self, k, v):
        self.d[k] = v
        return len(self.d)


OBJ = [None]
STATS = {"trunc_applied": 0, "readd_same": 0, "readd_diff": 0}


class CheckJournal(jr.FileJournal):
    removed = {}

    def deleteEntriesFrom(self, entryFrom):
        la = OBJ[0].raftLastApplied if OBJ[0] is not None else 0
        for e in list(self)[entryFrom:]:
            if e[1] <= la:
                CheckJournal.removed[e[1]] = (e[0], e[2])
                STATS["trunc_applied"] += 1
        super().deleteEntriesFrom(entryFrom)

    def add(self, command, idx, term):
        old = CheckJournal.removed.pop(idx, None)
        if old is not None:
            if old == (command, term):
                STATS["readd_same"] += 1
            else:
                STATS["readd_diff"] += 1
                print("DIVERGED idx", idx, "old term", old[1], "new term", term, flush=True)
        super().add(command, idx, term)


so.createJournal = lambda f=None: CheckJournal(f) if f else jr.MemoryJournal()
me = int(sys.argv[1])
ports = [int(p) for p in sys.argv[2].split(",")]
d = sys.argv[3]
os.makedirs(d, exist_ok=True)
conf = SyncObjConf(
    password="x",
    bindAddress=f"127.0.0.1:{me}",
    commandsWaitLeader=False,
    appendEntriesUseBatch=False,
    leaderFallbackTimeout=2.0,
    dynamicMembershipChange=True,
    useFork=False,
    journalFile=d + "/journal.bin",
    fullDumpFile=d + "/snapshot.bin",
    connectionRetryTime=1.0,
    bindRetryTime=0.5,
)
st = Store()
o = (SafeSyncObj if os.environ.get("SAFE") else SyncObj)(
    f"127.0.0.1:{me}", [f"127.0.0.1:{p}" for p in ports if p != me], conf, consumers=[st]
)
OBJ[0] = o
SHR = {"max_shrink": 0, "events": 0}
_seen = [0]


def _chk():
    last = o._SyncObj__raftLog[-1][1]
    if last < _seen[0]:
        SHR["events"] += 1
        SHR["max_shrink"] = max(SHR["max_shrink"], _seen[0] - last)
    _seen[0] = max(_seen[0], last) if not o._isLeader() else last


o.addOnTickCallback(_chk)
stop = False
signal.signal(signal.SIGTERM, lambda *a: globals().__setitem__("stop", True))
i = 0
last = 0
payload = b"x" * int(os.environ.get("PAYLOAD", "200"))
while not stop:
    if o._isLeader():
        for _ in range(int(os.environ.get("BURST", "20"))):
            i += 1
            st.put(f"k{i % 1000}", payload, callback=lambda r, e: None)
    if os.environ.get("COMPACT") and time.time() - last > 2:
        last = time.time()
        o.forceLogCompaction()
    time.sleep(0.01)
s = o.getStatus()
print(
    "EXIT",
    me,
    STATS,
    SHR,
    "duplicates",
    getattr(o, "duplicates", None),
    "diverged",
    getattr(o, "diverged", None),
    "pending_removed",
    len(CheckJournal.removed),
    "term",
    s["raft_term"],
    "commit",
    s["commit_idx"],
    "applied",
    s["last_applied"],
    "loglen",
    s["log_len"],
    flush=True,
)
o.destroy_synchronous()
