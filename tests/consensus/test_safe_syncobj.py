"""pysyncobj's log-matching bugs, at the message level, and the engine's rebuild of a diverged replica.

The message-level cases hand append_entries / next_node_idx messages to a SyncObj that never ticks (no socket, no
thread), the way its transport would: each fails on pysyncobj's own SyncObj (see bench/raft_truncation for the
same bugs between real processes)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.journal import MetaStorer
from pysyncobj.syncobj import _RAFT_STATE

from agent.consensus.engine import RaftEngine
from agent.consensus.safe_syncobj import SafeSyncObj
from agent.localmesh.mesh import free_ports
from tests.consensus.engines import elect, start_engines

NO_OP = b"\x01"  # pysyncobj's no-op command type: entries that apply without a consumer


class Follower:
    """A SafeSyncObj (or pysyncobj's SyncObj) fed messages by hand; what it answers is kept in `sent`."""

    def __init__(self, cls: type[SyncObj]) -> None:
        conf = SyncObjConf(autoTick=False, dynamicMembershipChange=True)
        self.obj = cls("127.0.0.1:1", ["127.0.0.1:2", "127.0.0.1:3"], conf)
        self.sent: list[dict[str, Any]] = []
        self.obj._SyncObj__transport.send = lambda node, message: self.sent.append(message) or True
        self.leader = next(n for n in self.obj.otherNodes if n.address == "127.0.0.1:2")

    def receive(self, message: dict[str, Any]) -> None:
        self.obj._SyncObj__onMessageReceived(self.leader, message)
        self.obj._SyncObj__applyLogEntries()

    def append(
        self, prev: int, prev_term: int, entries: list[tuple[bytes, int, int]], commit: int, term: int = 1
    ) -> None:
        self.receive(
            {
                "type": "append_entries",
                "term": term,
                "commit_index": commit,
                "prevLogIdx": prev,
                "prevLogTerm": prev_term,
                "entries": entries,
            }
        )

    def indexes(self) -> list[int]:
        return [e[1] for e in self.obj._SyncObj__raftLog]

    def terms(self) -> list[int]:
        return [e[2] for e in self.obj._SyncObj__raftLog]

    def close(self) -> None:
        self.obj.destroy()


def entries(first: int, last: int, term: int = 1) -> list[tuple[bytes, int, int]]:
    return [(NO_OP + b"%d" % i, i, term) for i in range(first, last + 1)]


@pytest.fixture
def follower() -> Iterator[Follower]:
    f = Follower(SafeSyncObj)
    yield f
    f.close()


def applied_2_to_11(f: Follower) -> None:
    f.append(1, 0, entries(2, 6), commit=1)
    f.append(6, 1, entries(7, 11), commit=11)
    assert f.indexes() == list(range(1, 12)) and f.obj.raftLastApplied == 11


def test_a_resent_entry_does_not_cut_the_log_below_what_was_applied(follower: Follower) -> None:
    applied_2_to_11(follower)
    follower.append(3, 1, entries(4, 4), commit=11)  # the leader resends entry 4 (its nextIndex went back)
    # pysyncobj's own SyncObj keeps [1..4] here, with entries 5..11 applied and gone.
    assert follower.indexes() == list(range(1, 12))
    assert follower.obj.raftCommitIndex == 11
    assert follower.sent[-1] == {"type": "next_node_idx", "next_node_idx": 12, "reset": False, "success": True}
    assert follower.obj.duplicates == 1 and follower.obj.diverged is None


def test_a_new_leader_resending_held_entries_keeps_what_was_applied(follower: Follower) -> None:
    applied_2_to_11(follower)
    # Term 2: this leader has not matched our log yet. Entries 2..11 are applied, so committed: it holds them.
    follower.append(3, 1, entries(4, 4), commit=11, term=2)
    assert follower.indexes() == list(range(1, 12))
    assert follower.sent[-1]["success"] and follower.sent[-1]["next_node_idx"] == 12


def test_unapplied_entries_after_a_real_conflict_are_replaced(follower: Follower) -> None:
    follower.append(1, 0, entries(2, 9), commit=4)
    assert follower.obj.raftLastApplied == 4
    follower.append(
        5, 1, entries(6, 6, term=2), commit=4, term=2
    )  # a new leader's entry 6 differs: Raft cuts there
    assert follower.indexes() == list(range(1, 7)) and follower.terms()[-1] == 2
    assert follower.obj.diverged is None


def test_a_conflict_with_an_applied_entry_is_flagged_and_truncates_nothing(follower: Follower) -> None:
    applied_2_to_11(follower)
    follower.append(5, 1, entries(6, 6, term=2), commit=11, term=2)
    assert follower.obj.diverged == 6
    assert follower.indexes() == list(range(1, 12)) and set(follower.terms()[1:]) == {1}
    # From then on it follows the leader's term (no elections of its own) but takes no entries until rebuilt.
    follower.append(11, 1, entries(12, 12, term=2), commit=12, term=2)
    assert follower.indexes() == list(range(1, 12)) and follower.obj.raftCurrentTerm == 2


def test_a_message_that_checks_nothing_does_not_raise_the_commit_index(follower: Follower) -> None:
    follower.append(1, 0, entries(2, 9), commit=4)
    # A snapshot chunk that is not the last (or `serialized: None`): no entry of our log was compared.
    follower.receive({"type": "append_entries", "term": 1, "commit_index": 9, "serialized": None})
    assert follower.obj.raftCommitIndex == 4 and follower.obj.raftLastApplied == 4


def test_an_early_acknowledgement_does_not_set_the_leaders_next_index_back() -> None:
    leader = Follower(SafeSyncObj)  # made leader by hand: the follower is node 2
    try:
        obj, node = leader.obj, leader.leader
        obj._SyncObj__raftState = _RAFT_STATE.LEADER
        obj._SyncObj__raftNextIndex[node] = 21  # entries up to 20 sent, in several messages
        obj._SyncObj__raftMatchIndex[node] = 4
        leader.receive({"type": "next_node_idx", "next_node_idx": 11, "reset": False, "success": True})
        assert obj._SyncObj__raftMatchIndex[node] == 10
        assert obj._SyncObj__raftNextIndex[node] == 21  # pysyncobj's SyncObj sets 11 and resends 11..20
    finally:
        leader.close()


@pytest.mark.parametrize("case", ["resend", "conflict"])
def test_pysyncobj_itself_has_these_bugs(case: str) -> None:
    # Guards the reason SafeSyncObj exists: if a pysyncobj upgrade fixes them, the workaround can go.
    f = Follower(SyncObj)
    try:
        applied_2_to_11(f)
        if case == "resend":
            f.append(3, 1, entries(4, 4), commit=11)
        else:
            f.append(5, 1, entries(6, 6, term=2), commit=11, term=2)
        assert len(f.indexes()) < 11, f.indexes()
    finally:
        f.close()


async def wait_for(check: Any, what: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: not within {within:g} s")


def diverge(engine: RaftEngine, leader_address: str) -> int:
    """Hand a running follower, on its own thread, an append_entries whose entry contradicts its last applied
    entry: what only an unsound commit could cause."""
    obj = engine._obj
    assert obj is not None
    index = obj.raftLastApplied
    done = []

    def inject() -> None:
        if done:
            return
        done.append(True)
        raft_log = obj._SyncObj__raftLog
        first = raft_log[0][1]
        node = next(n for n in obj.otherNodes if n.address == leader_address)
        prev_term = raft_log[index - 1 - first][2]
        held_term = raft_log[index - first][2]
        obj._SyncObj__onMessageReceived(
            node,
            {
                "type": "append_entries",
                "term": obj.raftCurrentTerm,
                "commit_index": obj.raftCommitIndex,
                "prevLogIdx": index - 1,
                "prevLogTerm": prev_term,
                "entries": [(NO_OP, index, held_term - 1)],
            },
        )

    obj.addOnTickCallback(inject)
    return index


async def test_a_diverged_replica_is_rebuilt_from_the_leader_keeping_its_term_and_vote(tmp_path: Path) -> None:
    engines = await start_engines([f"127.0.0.1:{p}" for p in free_ports(3)], tmp_path)
    try:
        leader = await elect(engines)
        for i in range(20):
            assert (await leader.put(f"k/{i}", b"v%d" % i, None, f"rid-{i}"))[0] == "ok"
        follower = next(e for e in engines if e is not leader)
        await wait_for(lambda: follower.status.applied_index >= leader.status.commit_index, "follower caught up")
        term = follower.status.term
        old_obj = follower._obj
        diverge(follower, leader.address)
        await wait_for(lambda: follower.rebuilds == 1 and follower._obj not in (None, old_obj), "rebuild")
        assert follower.data_dir is not None
        meta = MetaStorer(str(follower.data_dir / "journal.bin") + ".meta").getMeta()
        assert meta.get("currentTerm", 0) >= term, meta  # Raft's vote survives the rebuild
        # The rebuilt replica takes the leader's whole state, and what is written after.
        assert (await leader.put("k/after", b"after", None, "rid-after"))[0] == "ok"
        await wait_for(lambda: follower.state.entries.keys() == leader.state.entries.keys(), "state converged")
        assert follower.state.read("k/7")[0] == leader.state.read("k/7")[0]
        assert follower.status.rebuilds == 1
    finally:
        for e in engines:
            await e.stop()
