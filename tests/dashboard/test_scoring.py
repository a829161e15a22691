"""Drill scoring from the agents' own timestamps (pure)."""

from __future__ import annotations

import msgspec
from pytest import approx

from dashboard.drills.report import from_json, to_json, to_markdown
from dashboard.drills.scoring import (
    SLO,
    ActionSeen,
    FaultWindow,
    IncidentSeen,
    SteadyHold,
    SteadyState,
    relevant,
    returned_to,
    score,
    wary_detectors,
)
from dashboard.models import MeshView, NodeState, NodeView

T0 = 1000.0


def steady(links_up: int = 3, nodes_up: int = 3, reach: int = 3) -> SteadyState:
    return SteadyState(
        taken_at=T0,
        nodes_up=nodes_up,
        nodes_total=3,
        links_up=links_up,
        links_planned=3,
        links_not_up=[],
        nodes_not_up=[],
        reachability={n: [reach, 3] for n in ("node-a", "node-b", "node-c")},
    )


def fault(ended: float | None = T0 + 5.0, aborted: bool = False) -> FaultWindow:
    return FaultWindow(
        kind="blackhole",
        method="agent drill blackhole",
        target="node-b",
        duration_s=5,
        started_at=T0,
        ended_at=ended,
        clock="agent",
        drill_id="d1",
        aborted=aborted,
    )


def inc(
    observer: str,
    detected: float,
    resolved: float | None,
    *,
    subject: str = "node-b",
    kind: str = "peer_silent",
    iid: str | None = None,
) -> IncidentSeen:
    return IncidentSeen(
        observer=observer,
        id=iid or f"{observer}-{kind}-{detected}",
        kind=kind,
        subject=subject,
        detected_at=detected,
        resolved_at=resolved,
    )


DEFAULT_SLO = SLO()


def run(incidents, *, after=None, f=None, slo=DEFAULT_SLO, actions=()):
    return score(
        source="test",
        fault=f or fault(),
        aliases={"node-b", "key-b"},
        observers=["node-a", "node-c"],
        incidents=incidents,
        actions=list(actions),
        before=steady(),
        after=steady() if after is None else after,
        steady_confirmed_at=T0 + 7,
        slo=slo,
        created_at=T0 + 8,
    )


def test_pass_with_times_from_records() -> None:
    r = run(
        [
            inc("node-a", T0 + 1.2, T0 + 6.0),
            inc("node-c", T0 + 0.8, T0 + 6.5),
            inc("node-a", T0 + 1.5, T0 + 6.9, kind="member_unreachable"),
        ]
    )
    a, c = r.observers
    assert (a.detect_s, a.repair_s) == (approx(1.2), approx(1.9))
    assert (a.detected_by, a.incidents) == ("peer_silent", 2)
    assert (c.detect_s, c.repair_s) == (approx(0.8), approx(1.5))
    assert r.passed and r.failures == []
    assert r.recovered_at == T0 + 6.9 and r.recovery_s == approx(1.9)
    whats = [e.what for e in r.timeline]
    assert whats[0].startswith("fault injected") and whats[-1].startswith("full recovery")


def test_slo_failures_are_named() -> None:
    r = run([inc("node-a", T0 + 3.0, T0 + 6.0), inc("node-c", T0 + 0.5, T0 + 9.0)])
    assert not r.passed
    assert any("node-a detected after 3.00 s" in f for f in r.failures)
    assert any("node-c repaired 4.00 s after" in f for f in r.failures)
    assert run(
        [inc("node-a", T0 + 3.0, T0 + 6.0), inc("node-c", T0 + 0.5, T0 + 9.0)], slo=SLO(detect_s=5, repair_s=5)
    ).passed


def test_observer_that_never_detected_and_unresolved_incident_fail() -> None:
    r = run([inc("node-a", T0 + 1.0, None)])
    assert not r.passed
    assert "node-c never detected the fault" in r.failures
    assert any("node-a: incidents about node-b not resolved" in f for f in r.failures)
    assert r.recovered_at is None


def test_unrelated_and_earlier_incidents_do_not_count() -> None:
    r = run(
        [
            inc("node-a", T0 - 30, T0 - 20),
            inc("node-a", T0 + 0.2, T0 + 6, subject="node-c"),
            inc("node-a", T0 + 1.0, T0 + 6),
            inc("node-c", T0 + 1.0, T0 + 6, subject="key-b"),
        ]
    )
    assert r.observers[0].incidents == 1 and r.observers[0].detect_s == 1.0
    assert r.observers[1].detect_s == 1.0  # matched by the target's key


def test_healed_during_fault_counts_as_repaired_in_time() -> None:
    r = run([inc("node-a", T0 + 1, T0 + 3), inc("node-c", T0 + 1, T0 + 3)])
    assert r.observers[0].repair_s == -2.0 and r.observers[0].repair_ok
    assert "healed before the fault ended" in r.observers[0].note
    assert r.recovered_at == T0 + 5.0  # not whole while the fault is on


def test_not_back_to_steady_state_fails() -> None:
    r = run([inc("node-a", T0 + 1, T0 + 6), inc("node-c", T0 + 1, T0 + 6)], after=steady(links_up=2))
    assert not r.passed and not r.recovered
    assert any("did not return to its steady state" in f for f in r.failures)
    assert returned_to(steady(links_up=2), steady(links_up=2))  # not blamed for what was already broken
    assert not returned_to(steady(), steady(reach=2))


def test_never_reverted_and_aborted() -> None:
    r = run([inc("node-a", T0 + 1, None), inc("node-c", T0 + 1, None)], f=fault(ended=None))
    assert "the fault was never reverted" in r.failures
    r = run([inc("node-a", T0 + 1, T0 + 3), inc("node-c", T0 + 1, T0 + 3)], f=fault(ended=T0 + 2, aborted=True))
    assert "aborted by the operator" in r.failures


def test_a_partition_of_the_mesh_counts_as_detection() -> None:
    # A partition incident names the mesh, not the target: it is still the observer noticing the fault.
    r = run(
        [
            inc("node-a", T0 + 0.3, T0 + 5.8, subject="mesh", kind="partition"),
            inc("node-a", T0 + 1.1, T0 + 6.0),
            inc("node-c", T0 + 0.4, T0 + 6.2, subject="mesh", kind="partition"),
        ]
    )
    a, c = r.observers
    assert (a.detected_by, a.detect_s, a.incidents) == ("partition", approx(0.3), 2)
    assert (c.detected_by, c.detect_s, c.repair_s) == ("partition", approx(0.4), approx(1.2))
    assert r.passed


def test_clock_skew_between_hosts_is_allowed_up_to_half_a_second() -> None:
    # node-c's clock runs 0.4 s behind the target's: its detection looks earlier than the fault, and counts.
    r = run([inc("node-a", T0 + 1.0, T0 + 6.0), inc("node-c", T0 - 0.4, T0 + 5.6)])
    assert r.observers[1].detect_s == approx(-0.4) and r.observers[1].detected_at == T0 - 0.4
    assert r.passed
    # 0.6 s before the fault is beyond the bound: an incident from before the drill, not a detection of it.
    r = run([inc("node-a", T0 + 1.0, T0 + 6.0), inc("node-c", T0 - 0.6, T0 + 5.6)])
    assert r.observers[1].detect_s is None and "node-c never detected the fault" in r.failures
    # The same allowance applies to heal actions.
    early = ActionSeen(observer="node-a", id="x", at=T0 - 0.4, action="redial", target="node-b", outcome="ok")
    stale = ActionSeen(observer="node-a", id="y", at=T0 - 0.6, action="redial", target="node-b", outcome="ok")
    r = run([inc("node-a", T0 + 1.0, T0 + 6.0), inc("node-c", T0 + 1, T0 + 6)], actions=[early, stale])
    assert [a.id for a in r.actions] == ["x"] and r.observers[0].actions == 1


def test_a_node_the_source_never_brought_back_fails_the_drill() -> None:
    gone = FaultWindow(
        kind="node-loss",
        method="source: stop allocation",
        target="node-b",
        duration_s=5,
        started_at=T0,
        ended_at=T0 + 5,
        clock="dashboard",
        source_brings_back=True,
        back_at=None,
    )
    r = run([inc("node-a", T0 + 0.2, T0 + 6), inc("node-c", T0 + 0.2, T0 + 6)], f=gone)
    assert not r.passed and not r.recovered  # even though the mesh view looks whole again
    assert "node-b never came back on a running allocation with a healthy agent" in r.failures
    back = msgspec.structs.replace(gone, back_at=T0 + 5, ended_at=T0 + 5, back_what="allocation running")
    r = run([inc("node-a", T0 + 0.2, T0 + 6), inc("node-c", T0 + 0.2, T0 + 6)], f=back)
    assert r.passed and r.recovered
    whats = [e.what for e in r.timeline]
    assert "fault over, back: allocation running" in whats and "fault reverted" not in whats


def test_no_observer_left_fails_instead_of_passing_vacuously() -> None:
    r = score(
        source="test",
        fault=fault(),
        aliases={"node-b"},
        observers=[],
        incidents=[inc("node-a", T0 + 1, T0 + 6)],
        actions=[],
        before=steady(nodes_up=1),
        after=steady(nodes_up=1),
        steady_confirmed_at=T0 + 7,
        slo=DEFAULT_SLO,
        created_at=T0 + 8,
    )
    assert r.observers == [] and r.recovered_at is None and not r.passed
    assert r.failures == ["no observer: every other node was down before the drill"]


def test_report_round_trip_and_markdown() -> None:
    act = ActionSeen(observer="node-a", id="a1", at=T0 + 1.5, action="redial", target="node-b", outcome="ok")
    r = run([inc("node-a", T0 + 1.2, T0 + 6.0), inc("node-c", T0 + 0.8, T0 + 6.5)], actions=[act])
    assert from_json(to_json(r)) == r
    md = to_markdown(r)
    assert md.startswith("# Drill blackhole on node-b: PASS")
    assert "| node-a | peer_silent | 1.20 s | +1.00 s | 1 | 1 | ok |" in md
    assert "heal action by node-a: redial node-b ok" in md


def test_mesh_wide_first_detection_and_full_awareness_with_their_slos() -> None:
    r = run([inc("node-a", T0 + 1.6, T0 + 6.0), inc("node-c", T0 + 0.4, T0 + 6.0)])
    assert (r.first_detect_s, r.full_awareness_s) == (approx(0.4), approx(1.6))
    assert r.passed
    late = run([inc("node-a", T0 + 1.6, T0 + 6.0), inc("node-c", T0 + 1.2, T0 + 6.0)])
    assert not late.passed and "first detection after 1.20 s (SLO 1 s)" in late.failures
    slow = run([inc("node-a", T0 + 2.5, T0 + 6.0), inc("node-c", T0 + 0.4, T0 + 6.0)])
    assert "full awareness after 2.50 s (SLO 2 s)" in slow.failures
    never = run([inc("node-c", T0 + 0.4, T0 + 6.0)])
    assert never.full_awareness_s is None and "node-a never detected the fault" in never.failures
    md = to_markdown(r)
    assert "mesh-wide: first detection 0.40 s, full awareness 1.60 s" in md


def test_an_observer_cut_off_itself_is_named_not_failed() -> None:
    cut = inc("node-a", T0 + 0.9, T0 + 5.5, subject="mesh", kind="partition")
    r = run([cut, inc("node-c", T0 + 0.4, T0 + 6.0)])
    # node-a's partition incident counts as its detection (it saw the mesh break); a node with nothing at all but
    # a record of being cut off is a blind observer: named, not failed.
    assert r.passed and r.no_path == []
    blind = score(
        source="test",
        fault=fault(),
        aliases={"node-b"},
        observers=["node-a", "node-c"],
        incidents=[inc("node-c", T0 + 0.4, T0 + 6.0)],
        actions=[],
        before=SteadyState(
            taken_at=T0,
            nodes_up=3,
            nodes_total=3,
            links_up=3,
            links_planned=3,
            links_not_up=[],
            nodes_not_up=[],
            reachability={"node-a": [1, 3], "node-b": [3, 3], "node-c": [3, 3]},
        ),
        after=steady(),
        steady_confirmed_at=T0 + 7,
        slo=DEFAULT_SLO,
        created_at=T0 + 8,
    )
    assert [(n.observer, n.reason) for n in blind.no_path] == [
        ("node-a", "reached only 1/3 members before the fault")
    ]
    assert blind.passed and blind.full_awareness_s == approx(0.4)
    assert "no path (reached only 1/3 members before the fault)" in to_markdown(blind)


def test_guards_that_held_repairs_back_are_named() -> None:
    held = ActionSeen(
        observer="node-a",
        id="a2",
        at=T0 + 5.5,
        action="redial",
        target="node-b",
        outcome="skipped",
        reason="node-b is quarantined (flapping)",
    )
    cool = ActionSeen(
        observer="node-c",
        id="c1",
        at=T0 + 5.6,
        action="redial",
        target="node-b",
        outcome="skipped",
        reason="cooldown: acted on node-b 0.4 s ago (waits 2 s)",
    )
    r = run([inc("node-a", T0 + 0.5, T0 + 12.0), inc("node-c", T0 + 0.5, T0 + 6.0)], actions=[held, cool])
    assert [(g.observer, g.guard) for g in r.guards] == [("node-a", "quarantine"), ("node-c", "cooldown")]
    assert any(
        f.startswith("node-a repaired 7.00 s after the fault ended") and "held back by quarantine on node-b" in f
        for f in r.failures
    )
    assert "Guards that held back heal actions:" in to_markdown(r)


def test_recovery_must_hold_and_a_relapse_restarts_the_wait() -> None:
    """CI of stop 18: the drill ended on the first whole poll; node-c reopened an incident about node-b 0.2 s
    later, and the report's repair time disagreed with the agent's record."""
    hold = SteadyHold(2.0)
    assert [hold.poll(t, True) for t in (10.0, 10.5, 11.0, 11.5)] == [False] * 4
    assert not hold.poll(12.0, False)  # an incident reopened: the wait starts again
    assert hold.since is None
    assert [hold.poll(t, True) for t in (12.5, 13.0, 14.0, 14.5)] == [False, False, False, True]
    assert hold.since == 12.5  # the report's steady time is when the mesh became whole for good
    assert SteadyHold(0.0).poll(3.0, True)  # --settle 0: the first whole poll ends the drill, as before


def test_wary_detectors_are_the_up_nodes_with_stretched_timeouts() -> None:
    """A drill waits for these before its fault (CALM_WAIT_S): node-c, cut off seconds before, probed with 3.5 s
    timeouts and never noticed a 3 s blackhole of node-b on its own."""

    def node(id_: str, health: int | None, state: NodeState = "up") -> NodeView:
        return NodeView(id=id_, state=state, detail="", agent_url=None, local_health=health)

    view = MeshView(
        source="test",
        source_ok=True,
        source_detail="",
        taken_at=0.0,
        polled_at=0.0,
        poll_duration_s=0.1,
        nodes=(node("node-a", 0), node("node-b", None), node("node-c", 3), node("node-d", 2, "down")),
        links=(),
    )
    assert wary_detectors(view) == ["node-c (local health 3)"]


def test_a_reopened_incident_is_a_new_occurrence_when_the_old_one_predates_the_drill() -> None:
    """node-c's peer_silent about node-b resolved 0.2 s before the fault (inside the 0.5 s skew allowance) and was
    reopened under its old id 2.1 s into it: the drill kept the old detected_at, judged it older than the fault and
    reported node-c repaired 1.1 s too early."""
    since = T0 - 0.5
    before = IncidentSeen.fold(None, "node-c", "i2", "peer_silent", "node-b", T0 - 7.3, T0 - 0.2, "", since)
    reopened = IncidentSeen.fold(before, "node-c", "i2", "peer_silent", "node-b", T0 + 2.1, None, "", since)
    assert reopened.detected_at == T0 + 2.1
    window = fault(ended=T0 + 3.0)
    assert not relevant(before, {"node-b"}, window, 0.5) and relevant(reopened, {"node-b"}, window, 0.5)
    # Within the drill, a reopen keeps the earliest detection (the flapping incident's first one).
    again = IncidentSeen.fold(reopened, "node-c", "i2", "peer_silent", "node-b", T0 + 5.0, None, "", since)
    assert again.detected_at == T0 + 2.1
