"""The leader drills' store workload, judged from recorded histories (pure: no mesh needed)."""

from __future__ import annotations

import pytest

from dashboard.drills.engine import DrillEngine, DrillPlan, DrillRefused
from dashboard.drills.workload import LeaderSeen, Op, new_leader_times, unavailability, verdict
from dashboard.models import MeshView, NodeView
from dashboard.widgets.node_table import raft_cell


def w(key: str, value: int, start: float, end: float, ok: bool = True, outcome: str = "") -> Op:
    return Op(kind="write", observer="a", key=key, value=value, start=start, end=end, ok=ok,
              status=200 if ok else 503, outcome=outcome)  # fmt: skip


def r(key: str, value: int | None, start: float, end: float) -> Op:
    return Op(kind="read", observer="b", key=key, value=value, start=start, end=end, ok=True, status=200)


def test_a_clean_history_is_consistent() -> None:
    ops = [w("k", 1, 0, 1), r("k", 1, 1.5, 2), w("k", 2, 2, 3, ok=False), w("k", 3, 4, 5), r("k", 3, 6, 7)]
    v = verdict(ops, {"k": 3})
    assert v.consistent and v.writes_acked == 2 and v.writes_failed == 1 and v.reads_ok == 2


def test_an_unacknowledged_write_may_show_up_at_the_end() -> None:
    ops = [w("k", 1, 0, 1), w("k", 2, 1, 3, ok=False)]
    assert verdict(ops, {"k": 2}).consistent  # the lost acknowledgement case
    assert not verdict(ops, {"k": 7}).consistent  # a value nobody wrote


def test_a_lost_acknowledged_write_is_inconsistent() -> None:
    ops = [w("k", 1, 0, 1), w("k", 2, 1, 2)]
    v = verdict(ops, {"k": 1})
    assert not v.consistent and v.lost_writes == ["k=2 (final 1)"]
    assert not verdict(ops, {"k": None}).consistent


def test_a_read_older_than_a_write_acknowledged_before_it_began_is_stale() -> None:
    ops = [w("k", 1, 0, 1), w("k", 2, 1, 2), r("k", 1, 3, 4)]
    v = verdict(ops, {"k": 2})
    assert not v.consistent and len(v.stale_reads) == 1 and "after 2 was acknowledged" in v.stale_reads[0]
    # Overlapping with the write (began before it was acknowledged): either value is fine.
    assert verdict([w("k", 1, 0, 1), w("k", 2, 1, 3), r("k", 1, 2, 4)], {"k": 2}).consistent


def test_a_write_answered_unknown_may_apply_after_later_writes() -> None:
    """A 20-node blackhole drill called this INCONSISTENT: four readers read 3 after 13 and 14 were acknowledged.
    Write 3 had been answered 503 `unknown` (forwarded to the blackholed leader, it reached the Raft log late):
    linearizable, since it may take effect any time after it began; reported, not failed."""
    ops = [
        w("k", 1, 0, 1),
        w("k", 2, 1, 2),
        w("k", 3, 2, 4, ok=False, outcome="unknown"),
        *[w("k", n, n + 1, n + 1.5) for n in range(4, 14)],
        r("k", 3, 16, 16.5),
        w("k", 14, 17, 18),
    ]
    v = verdict(ops, {"k": 14})
    assert v.consistent and v.stale_reads == [], v.summary()
    assert len(v.late_writes) == 1 and "read k=3 at +16.00 after 13 was acknowledged" in v.late_writes[0]
    assert "answered 503 unknown" in v.late_writes[0] and "applied later" in v.summary()
    # A write that got no answer at all (timeout) may apply later too.
    timed_out = Op(kind="write", observer="a", key="k", value=3, start=2, end=5, ok=False, error="ReadTimeout")
    assert verdict([*ops[:2], timed_out, *ops[3:]], {"k": 14}).consistent


def test_a_write_answered_not_applied_must_never_show() -> None:
    ops = [w("k", 1, 0, 1), w("k", 2, 1, 2, ok=False, outcome="not-applied"), w("k", 3, 2, 3), r("k", 2, 4, 5)]
    v = verdict(ops, {"k": 3})
    assert not v.consistent and v.late_writes == [] and "read k=2" in v.stale_reads[0]
    assert not verdict(ops[:2], {"k": 2}).consistent  # nor be the final value


def test_unavailability_window_and_new_leader_times() -> None:
    ops = [w("k", 1, 0, 0.1), w("k", 2, 0.9, 1.05), w("k", 3, 1.1, 3.0, ok=False), w("k", 4, 3.1, 3.2)]
    assert unavailability(ops, fault_at=1.0) == (1.05, 3.2)
    seen = [
        LeaderSeen(observer="a", at=0.5, leader="x"),
        LeaderSeen(observer="a", at=1.5, leader=None),
        LeaderSeen(observer="a", at=2.0, leader="y"),
        LeaderSeen(observer="b", at=2.5, leader="x"),
    ]
    assert new_leader_times(seen, old="x", fault_at=1.0) == {"a": 1.0, "b": None}


def _view(*nodes: NodeView) -> MeshView:
    return MeshView(source="test", source_ok=True, source_detail="", taken_at=0.0, polled_at=0.0,
                    poll_duration_s=0.1, nodes=nodes, links=())  # fmt: skip


def _node(node_id: str, role: str | None, leader: str | None = None) -> NodeView:
    return NodeView(id=node_id, state="up", detail="", agent_url=f"http://{node_id}", raft_role=role,
                    raft_term=3, raft_leader_id=leader, raft_lag=0 if role else None)  # fmt: skip


def test_leader_loss_targets_the_node_every_agent_names() -> None:
    view = _view(_node("a", "follower", "b"), _node("b", "leader", "b"), _node("c", "client", "b"))
    plan = DrillEngine.resolve_leader(DrillPlan(kind="leader-loss", target="leader"), view)
    assert plan.target == "b"
    split = _view(_node("a", "follower", "c"), _node("b", "leader", "b"))
    with pytest.raises(DrillRefused, match="no single Raft leader"):
        DrillEngine.resolve_leader(DrillPlan(kind="leader-loss", target="leader"), split)
    with pytest.raises(DrillRefused):
        DrillEngine.resolve_leader(DrillPlan(kind="leader-loss", target="x"), _view(_node("a", None)))


def test_raft_cell_marks_the_leader() -> None:
    assert raft_cell(_node("b", "leader", "b")).plain == "★ leader t3"
    lagging = NodeView(
        id="a", state="up", detail="", agent_url=None, raft_role="follower", raft_term=3, raft_lag=4
    )
    assert raft_cell(lagging).plain == "follower t3 lag 4"
    assert raft_cell(_node("c", "client")).plain == "client"
