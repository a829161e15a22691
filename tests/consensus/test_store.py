"""The replicated state machine's logic, applied directly (no sockets): CAS, limits, dedup, trimming."""

from __future__ import annotations

import pickle

from agent.consensus.store import MAX_STORE_BYTES, KvState


def test_put_cas_and_delete_indices() -> None:
    s = KvState()
    assert s.apply_put("a", b"1", None) == ("ok", 1, 1)
    assert s.apply_put("a", b"2", 0) == ("conflict", 1, 1)  # cas=0: only if absent
    assert s.apply_put("a", b"2", 5) == ("conflict", 1, 1)
    assert s.apply_put("a", b"2", 1) == ("ok", 2, 2)
    entry, _ = s.read("a")
    assert entry is not None and entry.value == b"2" and entry.create_index == 1 and entry.modify_index == 2
    assert s.apply_delete("a", 1) == ("conflict", 2, 2)
    assert s.apply_delete("a", 2) == ("ok", True, 3)
    assert s.apply_delete("a", None) == ("ok", False, 3)
    assert s.stats() == (0, 0, 3)


def test_store_size_limit_refuses_without_changing_anything() -> None:
    s = KvState()
    chunk = b"x" * (64 * 1024)
    n = MAX_STORE_BYTES // (len(chunk) + 8)
    for i in range(n):
        assert s.apply_put(f"k{i:06d}", chunk, None)[0] == "ok"
    before = s.stats()
    assert s.apply_put("one-too-many", chunk, None)[0] == "full"
    assert s.stats() == before
    assert s.apply_put("k000000", b"small", None)[0] == "ok"  # shrinking is always fine


def test_a_retried_request_id_returns_its_first_result() -> None:
    s = KvState()
    first = s._once("rid-1", lambda: s.apply_put("k", b"v", 0))
    again = s._once("rid-1", lambda: s.apply_put("k", b"v", 0))
    assert first == again == ("ok", 1, 1)
    assert s._once("rid-2", lambda: s.apply_put("k", b"v", 0))[0] == "conflict"


def test_append_trim_keeps_the_newest() -> None:
    s = KvState()
    for i in range(5):
        s.apply_append_trim("h/", f"h/{i:03d}", b"r", 3)
    rows, _, truncated = s.list("h/", 10)
    assert [k for k, _ in rows] == ["h/002", "h/003", "h/004"] and not truncated


def test_a_create_only_append_keeps_the_record_already_filed() -> None:
    """x0dash files a drill's record with its report; the agent's own record of the same drill, written
    create-only (a 7th op field), leaves it; a journal's older 6-field append still overwrites as it did."""
    s = KvState()
    filed = s.apply_batch([("append", "h/", "h/1-drl", b"x0dash report", 3, "r1")], _doApply=True)
    assert filed[0][0] == "ok"
    agent = s.apply_batch([("append", "h/", "h/1-drl", b"agent", 3, "r2", True)], _doApply=True)
    assert agent[0] == ("conflict", filed[0][1], s.index) and s.read("h/1-drl")[0].value == b"x0dash report"
    fresh = s.apply_batch([("append", "h/", "h/2-drl", b"agent", 3, "r3", True)], _doApply=True)
    assert fresh[0][0] == "ok" and s.read("h/2-drl")[0].value == b"agent"
    old_format = s.apply_batch([("append", "h/", "h/2-drl", b"x0dash", 3, "r4")], _doApply=True)
    assert old_format[0][0] == "ok" and s.read("h/2-drl")[0].value == b"x0dash"


def test_snapshot_roundtrip_keeps_state_and_a_working_lock() -> None:
    s = KvState()
    s.apply_put("a", b"1", None)
    data = pickle.loads(pickle.dumps(s._serialize()))
    t = KvState()
    t._deserialize(data)
    assert t.read("a")[0] is not None and t.apply_put("b", b"2", None)[0] == "ok"
