"""The SWIM core (agent.mapek.swim.protocol), message by message and on simulated meshes (tests/mapek/swim_sim.py).

No sockets: `Swim` is driven with explicit times; `MeshSim` runs many of them on a simulated network. Bounds here
are correctness bounds with margins (the timing targets are measured by bench/scale_bench.py on real meshes).
"""

from __future__ import annotations

import random

import msgspec
import pytest

from agent.mapek.swim.protocol import (
    ALIVE,
    DEAD,
    OWN_RTT_EVERY_S,
    PASSIVE_MARGIN,
    SUSPECT,
    Ack,
    Gossip,
    Ping,
    PingReq,
    Send,
    Swim,
    SwimConfig,
    Update,
    decode,
    encode,
)
from tests.mapek.swim_sim import MeshSim

CFG = SwimConfig()


def swim(me: str, members: list[str], now: float = 0.0) -> Swim:
    """A member that probes only what the test watches (no rotation), so each step is the test's own."""
    return Swim(me, members, msgspec.structs.replace(CFG, rotation=0), now=now, rng=random.Random(7))


def only(sends: list[Send], kind: type) -> list[Send]:
    return [s for s in sends if isinstance(s.message, kind)]


def until_ping(s: Swim, to: str) -> tuple[float, list[Send]]:
    """Tick `s` at its due times until it pings `to`; (time, that ping)."""
    for _ in range(20):
        t = s.next_due()
        pings = [p for p in only(s.tick(t), Ping) if p.to == to]
        if pings:
            return t, pings
    raise AssertionError("no ping sent")


def unanswered_probe(ids: list[str], target: str) -> tuple[Swim, float]:
    """ids[0], past its start-up grace with every other member alive, has pinged `target` (reachable on the
    underlay) and heard nothing over the mesh; (it, the moment its direct timeout expires)."""
    a = swim(ids[0], ids)
    a.started = -100.0
    for m in ids[1:]:
        a._apply(Update(m, ALIVE, 0), 0.0)
    a.underlay = {target}
    a.set_watched([target], 0.0)
    t, _ = until_ping(a, target)
    return a, t + CFG.probe_timeout_s


def test_messages_round_trip_and_garbage_is_refused() -> None:
    msgs = [
        Ping(1, "a", 0, [Update("b", SUSPECT, 3, "a")]),
        Ack(2, "b", 4, [], about="c", about_inc=1, nack=False, daemon_up=True, api="0.4"),
        PingReq(3, "a", 0, "c"),
        Gossip("a", 1, [Update("a", ALIVE, 1, "", 1234.5)]),
    ]
    for m in msgs:
        assert decode(encode(m)) == m
    for bad in (b"", b"\x00\x01", b"garbage", encode(Update("a", 0, 0))):
        with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)):
            decode(bad)


def test_ping_ack_marks_alive_and_keeps_the_rtt() -> None:
    a, b = swim("a", ["a", "b"]), swim("b", ["a", "b"])
    a.set_watched(["b"], 0.0)
    t, pings = until_ping(a, "b")
    acks = b.receive(t + 0.01, "a", "mesh", pings[0].message)
    assert isinstance(acks[0].message, Ack) and acks[0].to == "a"
    a.receive(t + 0.02, "b", "mesh", acks[0].message)
    assert a.state("b") == "alive" and b.state("a") == "alive"
    (result,) = [r for r in a.take_results() if r.member == "b"]
    assert result.ok and result.rtt_s == pytest.approx(0.02)


def test_no_ack_then_indirect_nack_makes_a_suspect_then_dead() -> None:
    ids = ["a", "b", "c"]
    a, b, c = (swim(i, ids) for i in ids)
    a.started = -100.0  # long past its own start-up grace
    for s in (a, b, c):
        s._apply(Update("a", ALIVE, 0), 0.0)
        s._apply(Update("b", ALIVE, 0), 0.0)
        s._apply(Update("c", ALIVE, 0), 0.0)
    a.set_watched(["c"], 0.0)
    t, _ = until_ping(a, "c")  # lost
    t += CFG.probe_timeout_s
    out = a.tick(t)
    (req,) = only(out, PingReq)
    assert req.to == "b" and req.message.target == "c"
    relay = b.receive(t, "a", "mesh", req.message)  # b pings c for a: lost too
    assert only(relay, Ping)[0].to == "c"
    nack = b.tick(t + 0.8 * CFG.indirect_timeout_s)
    assert only(nack, Ack)[0].message.nack
    a.receive(t + 0.33, "b", "mesh", only(nack, Ack)[0].message)
    # Every helper nacked: nothing left to wait for, suspect now rather than at the indirect timeout.
    assert a.state("c") == "suspect"
    a.tick(t + CFG.indirect_timeout_s)
    assert a.state("c") == "suspect"
    low, _ = a.suspicion_bounds()
    a.tick(t + CFG.indirect_timeout_s + low + 0.01)
    assert a.state("c") == "dead"
    assert [ch.new for ch in a.take_changes() if ch.member == "c"] == ["alive", "suspect", "dead"]


def test_the_probe_waits_for_every_helper_and_the_underlay_before_failing_early() -> None:
    a, t = unanswered_probe(["a", "b", "c", "d"], "d")
    out = a.tick(t)
    reqs = only(out, PingReq)
    assert {r.to for r in reqs} == {"b", "c"}
    (diag,) = [x for x in only(out, Ping) if x.path == "underlay"]
    for i, r in enumerate(reqs):
        a.receive(t + 0.3, r.to, "mesh", Ack(r.message.seq, r.to, 0, nack=True))
        assert a.state("d") == "alive", f"suspected after {i + 1} of 2 nacks"
    assert a.state("d") == "alive"  # both nacked, but the underlay ping has not answered yet
    a.receive(t + 0.31, "d", "underlay", Ack(diag.message.seq, "d", 0, [], daemon_up=True, api="0.4"))
    assert a.state("d") == "suspect"  # before the indirect timeout (t + 0.4)
    mesh_fail = [r for r in a.take_results() if r.member == "d" and r.path == "mesh"]
    assert mesh_fail and not mesh_fail[0].ok


def test_a_prober_that_hears_nothing_from_its_helpers_suspects_nobody() -> None:
    ids = ["a", "b", "c", "d"]
    a = swim("a", ids)
    for m in ids[1:]:
        a._apply(Update(m, ALIVE, 0), 0.0)
    a.set_watched(["b"], 0.0)
    t, _ = until_ping(a, "b")
    a.tick(t + CFG.probe_timeout_s)  # ping-reqs to c and d: no ack, no nack (a is cut off)
    a.tick(t + CFG.probe_timeout_s + CFG.indirect_timeout_s)
    assert a.state("b") == "alive"
    assert a.local_health == 1
    (res,) = [r for r in a.take_results() if r.path == "mesh"]
    assert not res.ok and "may be the one cut off" in (res.error or "")


def test_the_suspect_refutes_in_its_ack_and_everyone_takes_the_new_incarnation() -> None:
    a, b = swim("a", ["a", "b"]), swim("b", ["a", "b"])
    a._apply(Update("b", SUSPECT, 0, "x"), 1.0)
    assert a.state("b") == "suspect"
    a.set_watched(["b"], 1.0)
    t, (ping,) = until_ping(a, "b")
    assert Update("b", SUSPECT, 0, "x") in ping.message.updates  # buddy: the suspicion goes to the suspect
    (ack,) = only(b.receive(t, "a", "mesh", ping.message), Ack)
    assert b.inc == 1 and b.counters.refutations == 1
    a.receive(t + 0.01, "b", "mesh", ack.message)
    assert a.state("b") == "alive" and a.members["b"].inc == 1


def test_precedence_by_incarnation() -> None:
    a = swim("a", ["a", "b"])
    a._apply(Update("b", ALIVE, 2), 0.0)
    a._apply(Update("b", SUSPECT, 1, "c"), 0.0)  # older: ignored
    assert a.state("b") == "alive"
    a._apply(Update("b", SUSPECT, 2, "c"), 0.0)
    assert a.state("b") == "suspect"
    a._apply(Update("b", ALIVE, 2), 0.0)  # same incarnation does not refute
    assert a.state("b") == "suspect"
    a._apply(Update("b", DEAD, 2, "c"), 0.0)
    assert a.state("b") == "dead"
    a._apply(Update("b", SUSPECT, 2, "d"), 0.0)
    assert a.state("b") == "dead"
    a._apply(Update("b", ALIVE, 3), 0.0)  # back, with a new incarnation
    assert a.state("b") == "alive"


def test_confirmations_shorten_the_suspicion() -> None:
    ids = [f"n{i}" for i in range(20)]
    a = swim("n0", ids)
    low, high = a.suspicion_bounds()
    assert high == pytest.approx(low * CFG.suspicion_max_mult)
    a._apply(Update("n5", SUSPECT, 0, "n1"), 10.0)
    assert a.members["n5"].suspect_deadline == pytest.approx(10.0 + high)
    a._apply(Update("n5", SUSPECT, 0, "n2"), 10.5)
    a._apply(Update("n5", SUSPECT, 0, "n3"), 10.6)
    assert a.members["n5"].suspect_deadline == pytest.approx(10.0 + low)


def test_underlay_pings_never_carry_membership() -> None:
    b = swim("b", ["a", "b"])
    b.daemon_up, b.api = False, "0.4"
    ping = Ping(9, "a", 0, [Update("b", DEAD, 0, "a")])
    (ack,) = b.receive(0.0, "a", "underlay", ping)
    assert b.inc == 0  # no refutation over the underlay
    assert ack.path == "underlay" and ack.message.updates == [] and ack.message.daemon_up is False


def test_the_underlay_round_trip_counts_from_the_underlay_ping() -> None:
    # It used to count from the direct ping, so it included the direct timeout: an agent that answered on the
    # underlay in 2 ms was reported "answers on the underlay in 302 ms" (incident details, x0_probe_rtt_seconds).
    a, t = unanswered_probe(["a", "b", "c"], "c")
    (diag,) = [x for x in only(a.tick(t), Ping) if x.path == "underlay"]
    assert diag.to == "c"
    a.receive(t + 0.002, "c", "underlay", Ack(diag.message.seq, "c", 0, [], daemon_up=True, api="0.4"))
    a.tick(t + CFG.indirect_timeout_s)
    (res,) = [r for r in a.take_results() if r.path == "underlay"]
    assert res.ok and res.rtt_s == pytest.approx(0.002)
    assert res.at == pytest.approx(t - CFG.probe_timeout_s)  # still dated by the probe it belongs to


def test_packets_naming_someone_else_are_dropped() -> None:
    a = swim("a", ["a", "b"])
    assert a.receive(0.0, "b", "mesh", Ping(1, "c", 0)) == []
    assert a.receive(0.0, "x", "mesh", Ping(1, "x", 0)) == []


def test_a_drill_announcement_reaches_every_member() -> None:
    sim = MeshSim(20, seed=2)
    sim.run_until(3.0)
    until = 1_000.0
    target = sim.ids[4]
    sim._send(target, sim.nodes[target].announce_drill(until, sim.now))
    sim.run_until(3.5)
    assert all(sim.nodes[i].drilling(0.0).get(target) == until for i in sim.ids)


@pytest.mark.parametrize("n", [3, 20])
def test_a_blackholed_member_is_known_everywhere_within_two_seconds_and_back_at_once(n: int) -> None:
    sim = MeshSim(n, seed=11)
    sim.run_until(12.0)
    assert all(s.state(m) == "alive" for s in sim.nodes.values() for m in s.members)
    target = sim.ids[n // 2]
    sim.blackhole(target)
    sim.run_until(22.0)
    aware = sim.awareness(target, 12.0)
    assert None not in aware.values(), aware
    assert max(v for v in aware.values() if v is not None) < 2.0
    assert all(sim.nodes[o].state(target) == "dead" for o in aware)
    sim.restore(target)
    sim.run_until(25.0)
    back = sim.recovered(target, 22.0)
    assert None not in back.values(), back
    assert max(v for v in back.values() if v is not None) < 1.0
    # nobody else was suspected because of it, and the member kept its view
    assert not [d for d in sim.downs if d[2] != target]


def test_slow_members_and_lossy_links_are_not_declared_dead() -> None:
    sim = MeshSim(20, seed=5, loss=0.02)
    sim.run_until(12.0)
    sim.slow(sim.ids[3], 0.25)  # 500 ms more round trip, both ways
    sim.run_until(40.0)
    assert sim.dead_declared == []


def test_per_member_traffic_stays_flat_from_20_to_100_members() -> None:
    rates = {}
    for n in (20, 100):
        sim = MeshSim(n, seed=3)
        sim.run_until(10.0)
        sim.reset_traffic()
        sim.run_until(20.0)
        rates[n] = sum(t.messages for t in sim.sent.values()) / n / 10.0
    assert rates[100] < 1.25 * rates[20], rates


def test_startup_costs_each_member_the_same_few_messages_at_20_and_100_members() -> None:
    """Every member first hears of every other at startup: that is no news of its own (the membership is static),
    so it rides the pings and acks instead of each first word costing fanout gossip messages (O(N) per member)."""
    sent = {}
    for n in (20, 100):
        sim = MeshSim(n, seed=3)
        sim.run_until(3.0)
        sent[n] = sum(t.messages for t in sim.sent.values()) / n
    assert sent[100] < 1.25 * sent[20], sent
    sim.run_until(20.0)
    assert all(s.state(m) == "alive" for s in sim.nodes.values() for m in s.members)


def test_news_is_pushed_at_once_and_goes_ahead_of_first_words() -> None:
    ids = ["a", *(f"m{i:02d}" for i in range(60))]
    a = swim("a", ids)
    for i in range(40):
        out = a.receive(0.5, f"m{i:02d}", "mesh", Ping(i, f"m{i:02d}", 0))
        assert only(out, Gossip) == [], "a first word made a gossip message"
    assert a.state("m05") == "alive" and a.pending_news == 0
    out = a.receive(0.6, "m50", "mesh", Gossip("m50", 0, [Update("m51", SUSPECT, 0, "m50")]))
    gossip = only(out, Gossip)
    assert len(gossip) == CFG.gossip_fanout
    for g in gossip:
        assert g.message.updates[0] == Update("m51", SUSPECT, 0, "m50"), g.message.updates


def _pair(seed: int = 7) -> dict[str, Swim]:
    a, b = swim("a", ["a", "b"]), swim("b", ["a", "b"])
    a.rng, b.rng = random.Random(seed), random.Random(seed + 1)
    a.set_watched(["b"], 0.0)
    b.set_watched(["a"], 0.0)
    return {"a": a, "b": b}


def _pair_run(
    nodes: dict[str, Swim], until: float, *, dead: str | None = None, dead_at: float = 0.0, latency: float = 0.005
) -> dict[str, list[float]]:
    """Drive two members watching each other until `until`, delivering mesh datagrams after `latency`; `dead`
    sends and hears nothing from `dead_at` on. Returns the times each sent a ping."""
    inflight: list[tuple[float, str, str, object]] = []  # (deliver at, to, from, message)
    pings: dict[str, list[float]] = {k: [] for k in nodes}
    now = 0.0

    def gone(k: str, at: float) -> bool:
        return k == dead and at >= dead_at

    def send(src: str, sends: list[Send], at: float) -> None:
        for s in sends:
            if s.path != "mesh" or gone(src, at):
                continue
            if isinstance(s.message, Ping):
                pings[src].append(at)
            inflight.append((at + latency, s.to, src, s.message))

    while now < until:
        due = {k: n.next_due() for k, n in nodes.items() if not gone(k, now)}
        now = min([*due.values(), *(d for d, *_ in inflight)])
        for k, t in due.items():
            if t <= now:
                send(k, nodes[k].tick(now), now)
        for item in [i for i in inflight if i[0] <= now]:
            inflight.remove(item)
            _, to, src, msg = item
            if not gone(to, now):
                send(to, nodes[to].receive(now, src, "mesh", msg), now)  # type: ignore[arg-type]
    return pings


def test_each_watched_link_is_probed_once_per_interval_by_whichever_end_leads() -> None:
    """Both ends watch the link; a ping received from the other end counts as our probe of it (an ok result) and
    defers ours. Before, both ends probed every interval: twice the pings, and they were most of the daemons' idle
    CPU at 20 nodes (bench/scale_bench.py)."""
    nodes = _pair()
    pings = _pair_run(nodes, 20.0)
    intervals = 20.0 / CFG.probe_interval_s
    total = len(pings["a"]) + len(pings["b"])
    assert intervals * 0.9 <= total <= intervals * 1.1, pings  # was ~2 x intervals
    for me, other in (("a", "b"), ("b", "a")):
        results = [r for r in nodes[me].take_results() if r.member == other]
        assert len(results) >= intervals * 0.9 and all(r.ok for r in results)
        assert nodes[me].state(other) == "alive"


def test_when_the_leading_end_goes_quiet_the_other_probes_within_a_little_more_than_an_interval() -> None:
    pings = _pair_run(_pair(), 10.0)
    leader = max(pings, key=lambda k: len(pings[k]))
    follower = "b" if leader == "a" else "a"
    assert len(pings[follower]) <= 2  # it only pinged until the leader's pings came first
    nodes = _pair()  # the same run again (same seeds), the leader gone at 10 s
    pings = _pair_run(nodes, 12.0, dead=leader, dead_at=10.0)
    last = max(t for t in pings[leader] if t < 10.0)
    first = min(t for t in pings[follower] if t > last)
    assert first - last <= CFG.probe_interval_s * (1 + 2 * PASSIVE_MARGIN) + 0.01
    failed = [r for r in nodes[follower].take_results() if r.member == leader and not r.ok]
    assert failed and failed[0].at == first


def test_local_health_heals_while_the_other_end_leads_the_probing() -> None:
    """node-c was cut off (local health 4, timeouts x5); its neighbours then led every probe of its links, so it
    sent none of its own and, before, stayed at 4 for good (measured on a netns mesh: 3 for 20 s and more)."""
    nodes = _pair()
    _pair_run(nodes, 5.0)
    pings = _pair_run(nodes, 10.0)
    leader = max(pings, key=lambda k: len(pings[k]))
    follower = "b" if leader == "a" else "a"
    nodes[follower].local_health = CFG.max_local_health
    pings = _pair_run(nodes, 15.0)
    assert nodes[follower].local_health == 0
    assert len(pings[follower]) <= 2  # healed by the leader's pings, not by probing on its own


def test_the_end_that_lets_the_other_lead_still_measures_its_own_round_trip() -> None:
    """x0_member_rtt_seconds (the Node dashboard's latency panel) is this node's own round trip: a node whose
    neighbours led every probe had none for them, and the panel showed nothing for it (tests/observability,
    pass 1 of this stop). The quiet end pings on its own once its last round trip is OWN_RTT_EVERY_S old (the
    ends may swap roles then); the link is still probed about once per interval."""
    nodes = _pair()
    until = 95.0
    pings = _pair_run(nodes, until)
    intervals = until / CFG.probe_interval_s
    total = len(pings["a"]) + len(pings["b"])
    assert intervals * 0.9 <= total <= intervals * 1.1 + 2 * until / OWN_RTT_EVERY_S, (len(pings["a"]), total)
    for me, other in (("a", "b"), ("b", "a")):
        entry = nodes[me].members[other]
        assert entry.srtt_s is not None and entry.srtt_at is not None
        assert until - entry.srtt_at <= OWN_RTT_EVERY_S + CFG.probe_interval_s * 2, (me, entry.srtt_at)


def _kinds(sends: list[Send]) -> list[tuple[str, str]]:
    return [(type(s.message).__name__, s.to) for s in sends]


def test_the_quiet_end_asks_helpers_at_once_when_the_leading_ends_ping_is_overdue() -> None:
    """3-node short blackholes: the quiet end of a link to the blackholed leader found out 0.44-0.48 s after its
    last ping, plus the 0.3 s direct timeout, plus 0.4 s of indirect probes: first detection 1.05-1.14 s in 5 of
    12 runs (target 1 s). Its ping being overdue is already a missed round, so the helpers are asked with it."""
    a = swim("a", ["a", "b", "c"])
    a.set_watched(["b"], 0.0)
    for t, src in ((0.05, "b"), (0.05, "c")):
        a.receive(t, src, "mesh", Ping(1, src, 0))  # both alive
    now, last_ping = 0.05, 0.05
    sent: list[tuple[float, list[tuple[str, str]]]] = []
    while now < 3.0:
        now = a.next_due()
        if now < 1.0:  # b leads: a ping of its arrives before each of our ticks, and defers our probe
            last_ping = now - 0.01
            a.receive(last_ping, "b", "mesh", Ping(2, "b", 0))
        sends = a.tick(now)
        out = _kinds(sends)
        if now < 1.0:  # b answers while it is there (a's own round trips, every OWN_RTT_EVERY_S)
            for snd in sends:
                if isinstance(snd.message, Ping) and snd.to == "b":
                    a.receive(now + 0.005, "b", "mesh", Ack(snd.message.seq, "b", 0))
        elif any(k == "Ping" and to == "b" for k, to in out):
            sent.append((now, out))
    first_at, first = sent[0]
    assert last_ping < 1.0 < first_at <= last_ping + CFG.probe_interval_s * (1 + 2 * PASSIVE_MARGIN) + 1e-6
    assert ("PingReq", "c") in first, first  # asked beside the ping, not after the direct timeout
    # The probe fails at the indirect stage's own timeout, from the ping on.
    failed = [r for r in a.take_results() if r.member == "b" and not r.ok]
    assert failed and failed[0].at == first_at
    # A probe on our own schedule (not overdue) still waits for the direct timeout before asking anyone.
    later = [out for at, out in sent[1:]]
    assert later and all(("PingReq", "c") not in out for out in later), later
