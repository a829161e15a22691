"""Plan: degree-k stand-ins, restore, forced redials, quarantine, rate limit and cooldown, recorded outcomes."""

from __future__ import annotations

import itertools
import random

import pytest

from agent.mapek.knowledge import MemberView, Thresholds
from agent.mapek.plan import failed_members, repair_links
from agent.topology import adjacency, plan_links

from .sim import T0, SimNode, members

IDS3 = ["node-a", "node-b", "node-c"]
CHAIN = [["node-a", "node-b"], ["node-b", "node-c"]]


# --- repair_links ------------------------------------------------------------------------------------------


def test_repair_chain_middle_lost_links_the_ends_lower_id_dials() -> None:
    assert repair_links(adjacency([("a", "b"), ("b", "c")]), ["a", "b", "c"], {"b"}, 2) == [("a", "c")]


def test_repair_full_mesh_has_no_stand_in_to_add() -> None:
    links = [("a", "b"), ("a", "c"), ("b", "c")]
    assert repair_links(adjacency(links), ["a", "b", "c"], {"c"}, 2) == []


def test_repair_ring_goes_around_the_lost_node() -> None:
    ids = ["a", "b", "c", "d", "e"]
    ring = [("a", "b"), ("b", "c"), ("c", "d"), ("d", "e"), ("a", "e")]
    assert repair_links(adjacency(ring), ids, {"c"}, 2) == [("b", "d")]
    # k=1 only keeps one live link per node: nobody in the ring drops below 1.
    assert repair_links(adjacency(ring), ids, {"c"}, 1) == []


def test_repair_prefers_a_partner_that_also_lacks_links() -> None:
    ids = ["a", "b", "c", "d", "e"]
    chain = [("a", "b"), ("b", "c"), ("c", "d"), ("d", "e")]
    # b lost c; candidates d (lost c too) and e (fine): d is chosen, one link repairs both.
    assert repair_links(adjacency(chain), ids, {"c"}, 2) == [("b", "d")]


def test_repair_is_the_same_from_every_view_and_skips_excluded() -> None:
    ids = ["a", "b", "c", "d"]
    chain = [("a", "b"), ("b", "c"), ("c", "d")]
    one = repair_links(adjacency(chain), ids, {"b"}, 2)
    two = repair_links(adjacency(list(reversed(chain))), list(reversed(ids)), ["b"], 2)
    assert one == two == [("a", "c")]
    assert repair_links(adjacency(chain), ids, {"b"}, 2, excluded={"c"}) == [("a", "d")]


def reference_repair(links, ids, failed, degree, excluded=()):
    """repair_links as it was before it ran per tick on 1,000-member plans (a walk of every link, a scan of every
    candidate): the specification the faster one must keep, pair for pair, so mixed agents agree."""
    failed_set, excluded_set = set(failed), set(excluded)
    alive = sorted(i for i in ids if i not in failed_set)
    adj = {i: set() for i in alive}
    planned_all = {}
    for a, b in links:
        planned_all.setdefault(a, set()).add(b)
        planned_all.setdefault(b, set()).add(a)
        if a in adj and b in adj:
            adj[a].add(b)
            adj[b].add(a)
    target = {i: min(degree, len(planned_all.get(i, ()))) for i in alive}
    deg = {i: len(adj[i]) for i in alive}
    extra = []
    for i in alive:
        if i in excluded_set:
            continue
        lost_i = planned_all.get(i, set()) & failed_set
        while deg[i] < target[i]:
            candidates = [j for j in alive if j != i and j not in adj[i] and j not in excluded_set]
            if not candidates:
                break
            j = min(
                candidates,
                key=lambda c: (0 if deg[c] < target[c] else 1, 0 if planned_all.get(c, set()) & lost_i else 1, c),
            )
            adj[i].add(j)
            adj[j].add(i)
            deg[i] += 1
            deg[j] += 1
            extra.append((min(i, j), max(i, j)))
    return extra


@pytest.mark.parametrize("topo", ["chain", "ring", "expander", "full"])
def test_repair_plans_the_same_pairs_as_the_reference_walk(topo: str) -> None:
    rng = random.Random(f"repair-{topo}")
    for trial in range(60):
        n = rng.randint(2, 40)
        ids = [f"n{i:02d}" for i in range(n)]
        links = plan_links(ids, topo)
        if trial % 3 == 0 and n > 3:  # and some explicit, irregular link lists
            links = [link for link in links if rng.random() < 0.7] or links[:1]
        failed = {i for i in ids if rng.random() < rng.choice((0.1, 0.3, 0.6, 0.9))}
        excluded = {i for i in ids if rng.random() < 0.1}
        degree = rng.randint(1, 4)
        want = reference_repair(links, ids, failed, degree, excluded)
        assert repair_links(adjacency(links), ids, failed, degree, excluded) == want, (topo, trial)


def test_repair_of_a_1000_member_full_plan_with_997_lost() -> None:
    """issue 11's members bench: 499,500 planned links, all but the 3 real members lost."""
    ids = [f"m{i:04d}" for i in range(1000)]
    links = plan_links(ids, "full")
    adj = adjacency(links)
    failed = set(ids[3:])
    # Three live members, each still linked to the other two: nothing to add, at degree 2 or 3.
    assert repair_links(adj, ids, failed, 2) == [] == reference_repair(links, ids, failed, 2)
    assert repair_links(adj, ids, failed, 3) == []
    # Losing one more live member too: the stand-ins are the reference's.
    failed |= {"m0001"}
    assert repair_links(adj, ids, failed, 2) == reference_repair(links, ids, failed, 2)


# --- stand-ins through the whole tick ------------------------------------------------------------------


def test_chain_middle_loss_only_the_lower_id_dials_after_suspicion() -> None:
    mesh = members(IDS3, links=CHAIN)
    a, c = SimNode("node-a", mesh), SimNode("node-c", mesh)
    a.tick(up={"node-b"})
    c.tick(up={"node-b"})
    gone = {"node-b": False}
    # First tick of the loss: lost is reported, but the suspicion window holds the stand-in back.
    ra = a.tick(up=(), overlay={"node-b": False, "node-c": False}, underlay=gone, dt=0.6)
    assert "peer_lost" in ra.kinds("node-b") and "partition" in ra.kinds()
    assert ra.actions("add_peer") == []
    ra = a.tick(up=(), overlay={"node-b": False, "node-c": False}, underlay=gone, dt=1.0)
    for dt in (0.6, 1.0):
        rc = c.tick(up=(), overlay={"node-b": False, "node-a": False}, underlay=gone, dt=dt)
    (add,) = ra.actions("add_peer", executed=True)
    assert add.target == "node-c" and add.uri == "tls://10.9.0.3:12345?key=" + f"{3:064x}"
    assert add.standing_in_for == ("node-b",) and "stand-in for lost node-b" in add.reason
    assert rc.actions() == []  # node-c only accepts
    assert rc.plan.accepting == {"node-a": ("node-b",)}
    assert a.kn.temporaries["node-c"].dialer
    assert a.kn.temporary_members() == {"node-c"} and c.kn.temporary_members() == {"node-a"}
    # The action is filed under the incident it serves.
    act = a.kn.actions[-1]
    inc = next(i for i in a.kn.incidents if i.kind == "peer_lost")
    assert act.incident_id == inc.id and act.id in inc.actions and act.outcome == "ok"


def test_stand_in_waits_for_the_candidate_to_answer_on_the_underlay() -> None:
    mesh = members(IDS3, links=CHAIN)
    a = SimNode("node-a", mesh)
    a.tick(up={"node-b"})
    r = None
    for _ in range(2):
        r = a.tick(up=(), overlay={"node-b": False, "node-c": False}, underlay={"node-b": False, "node-c": False})
    assert r is not None
    # node-c's agent is gone too: it counts as failed, so no stand-in is planned at all.
    assert r.actions("add_peer") == []


def test_restore_planned_topology_drops_the_stand_in_with_a_hold_on_04() -> None:
    mesh = members(IDS3, links=CHAIN)
    a = SimNode("node-a", mesh)
    a.tick(up={"node-b"})
    for _ in range(2):
        a.tick(up=(), overlay={"node-b": False, "node-c": False}, underlay={"node-b": False})
    r = a.tick(up={"node-c"}, overlay={"node-b": False}, underlay={"node-b": False})
    assert r.actions() == [] and "node-c" in a.kn.temporaries
    # node-b's agent is back and its port answers: the planned link is redialled at once.
    r = a.tick(up={"node-c"}, overlay={"node-b": False}, dial={"node-b": True})
    (redial,) = r.actions("redial", executed=True)
    assert redial.target == "node-b" and "answers on its peering port again" in redial.reason
    assert r.actions("restore") == []  # planned link not up yet
    r = a.tick(up={"node-b", "node-c"})
    (restore,) = r.actions("restore", executed=True)
    assert restore.target == "node-c" and restore.hold_s == pytest.approx(4.5)
    assert "node-c" not in a.kn.temporaries
    r = a.tick(up={"node-b"})
    assert r.actions() == [] and r.findings == []


def test_restore_on_05_needs_no_hold() -> None:
    mesh = members(IDS3, links=CHAIN)
    a = SimNode("node-a", mesh, api="0.5")
    a.tick(up={"node-b"})
    for _ in range(2):
        a.tick(up=(), overlay={"node-b": False, "node-c": False}, underlay={"node-b": False})
    (restore,) = a.tick(up={"node-b", "node-c"}).actions("restore")
    assert restore.hold_s == 0.0


def test_forced_redial_only_when_the_port_answers_and_only_by_the_dialer() -> None:
    mesh = members(IDS3)  # full mesh: a dials b and c, b dials c
    a, c = SimNode("node-a", mesh), SimNode("node-c", mesh)
    a.tick(up={"node-b", "node-c"})
    c.tick(up={"node-a", "node-b"})
    for _ in range(3):  # node-c partitioned: its port refuses
        ra = a.tick(up={"node-b"}, overlay={"node-c": False}, dial={"node-c": False})
        assert ra.actions("redial") == []
    ra = a.tick(up={"node-b"}, overlay={"node-c": False}, dial={"node-c": True})
    (redial,) = ra.actions("redial", executed=True)
    assert redial.target == "node-c"
    # node-c accepts from a: it never redials a.
    for _ in range(3):
        rc = c.tick(up={"node-b"}, overlay={"node-a": False}, dial={"node-a": True})
        assert rc.actions("redial") == []


def test_a_link_that_received_nothing_while_its_peer_answers_around_it_is_redialled() -> None:
    """After a 5 s blackhole node-a's probes reached node-b through node-c at once, so `peer_silent` resolved, but
    the link stayed in TCP retransmission backoff until a daemon dropped it: repaired 2.16 s after the fault (SLO
    2 s). A link that received nothing for 4.5 s (a live 0.4 link gets a keepalive every 4 s) was stuck: the
    dialer redials it once the port answers, even if bytes pass again by then (the far end may still receive
    nothing and drop it), and only then."""
    mesh = members(IDS3)  # full mesh: a dials b and c
    a, b = SimNode("node-a", mesh), SimNode("node-b", mesh)
    for _ in range(6):
        a.tick(up={"node-b", "node-c"})
        b.tick(up={"node-a", "node-c"})
    redials = []
    for k in range(1, 8):  # 1-5: blackholed (port refuses); 6-7: over, node-b answers around the link
        over = k > 5
        r = a.tick(
            up={"node-b", "node-c"},
            quiet={"node-b"} if k < 7 else (),
            overlay={} if over else {"node-b": False},
            dial={"node-b": over},
        )
        redials += [(k, act) for act in r.actions("redial", executed=True)]
        rb = b.tick(up={"node-a", "node-c"}, quiet={"node-a"}, dial={"node-a": True})
        assert rb.actions("redial") == [], "node-b accepts node-a's link: it never redials it"
    assert [k for k, _ in redials] == [6], redials
    assert "received nothing for 4.5 s" in redials[0][1].reason


def test_a_link_silent_for_our_probes_too_is_stuck_after_2s_of_nothing() -> None:
    """bench/scale_bench.py short case, a 5 s blackhole of node-c: the link from node-b received nothing for 4-5 s
    as the 1 s snapshots saw it, so the 4.5 s rule never fired before the far end's retransmissions got through;
    node-b's probes then reached node-c around the link, and the daemons dropped and redialled it themselves:
    repaired 2.23 s after the fault (SLO 2 s). With `peer_silent` open, 2 s of nothing marks the link stuck."""
    mesh = members(IDS3)  # full mesh: a dials b and c
    a = SimNode("node-a", mesh)
    for _ in range(6):
        a.tick(up={"node-b", "node-c"})
    redials = []
    for k in range(1, 7):  # 1-4: blackholed, nothing received; 5-6: over, bytes again, node-b answers around it
        over = k > 4
        r = a.tick(
            up={"node-b", "node-c"},
            quiet=() if over else {"node-b"},
            overlay={} if over else {"node-b": False},
            dial={"node-b": over},
        )
        redials += [(k, act) for act in r.actions("redial", executed=True)]
        if k == 5:
            assert a.kn.state("node-b").traffic_at == a.now  # bytes again: the 4.5 s rule can no longer fire
    assert [k for k, _ in redials] == [5], redials


def test_the_gap_of_our_own_redial_is_not_a_lost_peer_unless_the_link_stays_down() -> None:
    """scale_bench short case: node-b redialled node-c 0.14 s after a 5 s blackhole ended, a snapshot in the
    redial's gap opened `peer_lost`, and it resolved a tick later: repaired 2.33 s after the fault."""
    mesh = members(IDS3)  # full mesh: a dials b and c
    a = SimNode("node-a", mesh)
    for _ in range(6):
        a.tick(up={"node-b", "node-c"})
    for _ in range(4):  # blackholed
        a.tick(up={"node-b", "node-c"}, quiet={"node-b"}, overlay={"node-b": False}, dial={"node-b": False})
    (redial,) = a.tick(up={"node-b", "node-c"}, dial={"node-b": True}).actions("redial", executed=True)
    assert redial.target == "node-b"
    a.tick(up={"node-c"}, dial={"node-b": True}, dt=0.3)  # the redial's gap
    assert not a.kn.has_active("peer_lost", "node-b")
    a.tick(up={"node-b", "node-c"}, dt=0.7)
    assert not [i for i in a.kn.incidents if i.subject == "node-b" and i.resolved_at is None]
    # A redial whose link does not come back: lost once the settle time is over.
    redialled_at = None
    for _ in range(7):  # quiet 4.5 s while node-b answers around the link: stuck, redialled
        r = a.tick(up={"node-b", "node-c"}, quiet={"node-b"}, dial={"node-b": True})
        if r.actions("redial", executed=True):
            redialled_at = a.now
    assert redialled_at == a.now, "the stuck link was redialled at the last tick"
    for _ in range(3):
        r = a.tick(up={"node-c"}, dial={"node-b": False}, dt=0.5)
        assert "peer_lost" not in [f.kind for f in r.findings], (a.now - redialled_at, r.findings)
    r = a.tick(up={"node-c"}, dial={"node-b": False}, dt=0.6)
    assert "peer_lost" in [f.kind for f in r.findings if f.subject == "node-b"], r.findings


def test_a_quiet_silent_link_whose_port_answers_is_not_stuck_after_2s() -> None:
    """A far agent that is slow or still starting: the link is quiet and `peer_silent` opens, but the kernel
    answers the peering port. Only the 4.5 s rule applies to it: the path is not cut."""
    mesh = members(IDS3)
    a = SimNode("node-a", mesh)
    for _ in range(6):
        a.tick(up={"node-b", "node-c"})
    for _ in range(4):
        a.tick(up={"node-b", "node-c"}, quiet={"node-b"}, overlay={"node-b": False}, dial={"node-b": True})
    assert a.kn.has_active("peer_silent", "node-b")
    assert a.kn.state("node-b").stuck_since is None


def test_a_port_check_from_before_the_link_formed_does_not_make_it_stuck() -> None:
    """A 20-node start: node-b's port refused while its daemon was starting, then the link came up quiet and
    silent (its agent busy) and was marked stuck on that stale refusal, and redialled once the port answered."""
    mesh = members(IDS3)
    a = SimNode("node-a", mesh)
    a.tick(up={"node-c"}, dial={"node-b": False})
    a.tick(up={"node-c"}, dial={"node-b": False})
    for _ in range(4):
        a.tick(up={"node-b", "node-c"}, quiet={"node-b"}, overlay={"node-b": False})
    assert a.kn.state("node-b").dial_fail_since is not None  # no check since: the refusal is still on record
    assert a.kn.state("node-b").stuck_since is None


def test_a_quiet_link_that_receives_again_in_time_is_not_redialled() -> None:
    mesh = members(IDS3)
    a = SimNode("node-a", mesh)
    for _ in range(6):
        a.tick(up={"node-b", "node-c"})
    for _ in range(3):  # 4 s of nothing on the link (a keepalive's worth), then bytes again
        for quiet in (True, True, True, True, False):
            r = a.tick(up={"node-b", "node-c"}, quiet={"node-b"} if quiet else (), dial={"node-b": True})
            assert r.actions("redial") == []
    assert a.kn.state("node-b").stuck_since is None


def test_failed_redial_backs_off() -> None:
    mesh = members(IDS3)
    a = SimNode("node-a", mesh)
    a.tick(up={"node-b", "node-c"})
    a.outcome = lambda act: "failed"
    times = []
    for _ in range(16):
        r = a.tick(up={"node-b"}, overlay={"node-c": False}, dial={"node-c": True})
        times += [a.now for act in r.actions("redial", executed=True)]
    gaps = [round(y - x) for x, y in itertools.pairwise(times)]
    assert gaps[:3] == [2, 4, 8]
    assert all(act.outcome in ("ok", "failed", "skipped") and act.reason for act in a.kn.actions)


def test_flapping_link_is_quarantined_with_backoff_and_merged_into_one_incident() -> None:
    mesh = members(IDS3)
    th = Thresholds(flap_threshold=3, flap_window_s=60, quarantine_base_s=15, quarantine_max_s=240)
    a = SimNode("node-a", mesh, thresholds=th)
    quarantines = []
    for _ in range(30):  # 2 s up, 2 s down
        for up in (True, True, False, False):
            r = a.tick(up={"node-b", "node-c"} if up else {"node-b"}, dial={} if up else {"node-c": True})
            quarantines += [(a.now, q) for q in r.actions("quarantine")]
    assert len(quarantines) >= 2
    first, second = quarantines[0], quarantines[1]
    assert "15 s" in first[1].reason and "30 s" in second[1].reason
    assert second[0] - first[0] >= 15
    lost = [i for i in a.kn.incidents if i.kind == "peer_lost"]
    assert len(lost) == 1 and lost[0].count >= 25
    # While quarantined, no forced redials happened.
    for t, _ in quarantines:
        until = t + 15
        redials = [x for x in a.kn.actions if x.action == "redial" and x.outcome != "skipped"]
        assert not [x for x in redials if t < x.at < until]


def test_global_rate_limit_and_skip_reasons() -> None:
    ids = [f"node-{c}" for c in "abcdefghij"]
    th = Thresholds(rate_limit_actions=3, rate_limit_window_s=10)
    a = SimNode("node-a", members(ids), thresholds=th)
    a.tick(up=set(ids[1:]))
    down = {m: False for m in ids[1:]}
    a.tick(up=(), overlay=down, dial=dict.fromkeys(ids[1:], False))
    executed_at = []
    for _ in range(25):
        r = a.tick(up=(), overlay=down, dial=dict.fromkeys(ids[1:], True))
        executed_at += [a.now for _ in r.actions(executed=True)]
    # At most 3 executed actions in any 10 s window.
    for t in executed_at:
        assert sum(1 for u in executed_at if t <= u < t + 10) <= 3
    skipped = [x for x in a.kn.actions if x.outcome == "skipped"]
    assert skipped and all(x.reason for x in skipped)
    assert any(x.reason.startswith("rate limit") for x in skipped)
    # The same skip is not recorded every tick.
    per_target = [x for x in skipped if x.target == "node-j" and x.reason.startswith("rate limit")]
    assert len(per_target) <= 3


def test_incident_resolves_and_reopens_within_the_merge_window() -> None:
    mesh = members(IDS3)
    a = SimNode("node-a", mesh, thresholds=Thresholds(merge_window_s=30))
    a.tick(up={"node-b", "node-c"})
    a.tick(up={"node-b"})
    r = a.tick(up={"node-b", "node-c"})
    ((inc, ttr),) = r.reconciled.resolved
    assert inc.resolved_at == a.now and ttr == 1.0
    r = a.tick(up={"node-b"}, dt=10)
    assert inc.count == 2 and inc.resolved_at is None and inc.detected_at == a.now
    a.tick(up={"node-b", "node-c"})
    a.tick(up={"node-b"}, dt=40)
    assert len([i for i in a.kn.incidents if i.kind == "peer_lost"]) == 2
    assert a.kn.incidents_since(a.now) == [a.kn.incidents[-1]]


def test_outages_after_a_stable_link_are_not_flapping() -> None:
    mesh = members(IDS3)
    a = SimNode("node-a", mesh)
    for _ in range(5):  # a drill every 15 s: 12 s up, 3 s down
        for _ in range(12):
            a.tick(up={"node-b", "node-c"})
        for _ in range(3):
            r = a.tick(up={"node-b"}, dial={"node-c": True})
            assert r.actions("quarantine") == []
    assert not [x for x in a.kn.actions if x.action == "quarantine"]
    assert len([x for x in a.kn.actions if x.action == "redial" and x.outcome == "ok"]) == 5


def test_a_member_declared_dead_before_this_node_ever_reached_it_is_not_lost_while_the_mesh_forms() -> None:
    # A suite run: node-a's SWIM probed node-b over the overlay before their link was up, declared it dead 0.7 s
    # after the link came up, and node-a dialled node-c as a stand-in for a neighbour it had never reached.
    a = SimNode("node-a", members(IDS3, links=CHAIN), started=T0)
    a.tick(up={"node-b"}, overlay={"node-b": False, "node-c": False}, dt=0.5)
    a.kn.membership = {"node-b": MemberView(state="dead", since=a.now, by="node-a")}
    a.kn.has_membership = True
    assert "node-b" not in failed_members(a.kn, a.now)
    grace_over = a.kn.started_at + a.kn.thresholds.startup_grace_s + 0.1
    assert failed_members(a.kn, grace_over)["node-b"] == "declared lost by the mesh"
    # Once it was reached over the mesh, the verdict counts at once, grace or not.
    a.kn.state("node-b").overlay_ok_at = a.now - 0.2
    assert failed_members(a.kn, a.now)["node-b"] == "declared lost by the mesh"
