"""Analyze: each incident kind from hand-made observations, and what must NOT be reported."""

from __future__ import annotations

from agent.mapek.analyze import analyze
from agent.mapek.knowledge import Knowledge, LinkSample, Observation, Probe

from .sim import SimNode, members

FULL3 = ["node-a", "node-b", "node-c"]
CHAIN = [["node-a", "node-b"], ["node-b", "node-c"]]


def test_healthy_full_mesh_has_no_findings() -> None:
    node = SimNode("node-a", members(FULL3))
    for _ in range(3):
        r = node.tick(up={"node-b", "node-c"})
        assert r.findings == []
    assert node.kn.members_reachable() == 3


def test_lost_planned_peer_is_reported_on_the_first_tick_with_onset() -> None:
    node = SimNode("node-a", members(FULL3))
    node.tick(up={"node-b", "node-c"})
    last_up = node.now
    r = node.tick(up={"node-c"}, overlay={"node-b": False}, underlay={"node-b": False})
    lost = [f for f in r.findings if f.kind == "peer_lost"]
    assert [f.subject for f in lost] == ["node-b"]
    assert lost[0].onset == last_up
    assert "does not answer on the underlay" in lost[0].detail
    # Lost peer is not reported a second time as unreachable.
    assert "member_unreachable" not in r.kinds("node-b")
    ((inc, ttd),) = [(i, t) for i, t in r.reconciled.opened if i.kind == "peer_lost"]
    assert ttd == 1.0 and inc.subject == "node-b" and inc.resolved_at is None


def test_unplanned_member_without_link_is_not_lost() -> None:
    node = SimNode("node-a", members(FULL3, links=CHAIN))
    r = node.tick(up={"node-b"})
    assert r.findings == []


def test_silent_peer_needs_failed_probe_and_no_traffic() -> None:
    node = SimNode("node-a", members(FULL3))
    node.tick(up={"node-b", "node-c"})
    # Probe failed but bytes still arrive and its agent does not answer on the underlay either: the daemon link
    # works, the agent is gone or stuck -> not silent.
    r = node.tick(up={"node-b", "node-c"}, overlay={"node-c": False}, underlay={"node-c": False})
    assert "peer_silent" not in r.kinds()
    assert r.kinds("node-c") == {"member_unreachable"}
    node.tick(up={"node-b", "node-c"})
    # Its agent answers on the underlay with its daemon up while nothing passes over the mesh: the path between
    # the two daemons fails (a blackhole), even if the last snapshot still saw bytes from before the fault.
    r = node.tick(up={"node-b", "node-c"}, overlay={"node-c": False})
    assert r.kinds("node-c") == {"peer_silent"}
    node.tick(up={"node-b", "node-c"})
    # Probe failed and the link received nothing while it was in flight -> silent.
    r = node.tick(up={"node-b", "node-c"}, overlay={"node-c": False}, quiet={"node-c"})
    assert r.kinds("node-c") == {"peer_silent"}
    assert "listed but carries no traffic" in r.findings[0].detail


def test_a_probe_sent_before_the_link_came_up_does_not_make_it_silent() -> None:
    """node-a's daemon was down (a kill-daemon drill); a probe of node-c sent then timed out after the daemon and
    the link were back. It says nothing about the new link; a probe sent on it does."""
    kn = Knowledge("node-a", members(FULL3))
    t = kn.started_at + 100.0

    def links(n: int) -> dict[str, LinkSample]:
        return {m: LinkSample(member=m, up=True, bytes_recvd=n) for m in ("node-b", "node-c")}

    kn.observe(Observation(at=t, daemon_ok=True, links=links(10), links_before=None))
    stale = Probe(member="node-c", path="overlay", ok=False, at=t - 2.0, error="no ack within 3.50 s")
    obs = Observation(at=t + 0.5, daemon_ok=True, links=links(10), links_before=links(10), probes=[stale])
    kn.observe(obs)
    assert "peer_silent" not in {f.kind for f in analyze(obs, kn)}
    fresh = Probe(member="node-c", path="overlay", ok=False, at=t + 0.6, error="no ack within 0.70 s")
    obs = Observation(at=t + 1.5, daemon_ok=True, links=links(10), links_before=links(10), probes=[fresh])
    kn.observe(obs)
    assert {(f.kind, f.subject) for f in analyze(obs, kn)} >= {("peer_silent", "node-c")}


def test_a_link_redialled_between_two_listings_is_a_new_link() -> None:
    """node-c was cut off; node-b's agent redialled the stuck link after the fault (removePeer + addPeer, ~0.2 s),
    so node-c's daemon listed the link up both before and after. A probe node-c sent on the old link (timeout
    stretched to 3.5 s by its local health) failed once the new link was up; the new link's byte counter was
    below the old one's. That made node-c call a working link silent 1.7 s after the fault (a blackhole of
    node-b right after one of node-c, on a 3-node netns mesh)."""
    kn = Knowledge("node-c", members(FULL3))
    t = kn.started_at + 100.0

    def links(b: tuple[int, float]) -> dict[str, LinkSample]:
        return {
            "node-a": LinkSample(member="node-a", up=True, bytes_recvd=90_000, uptime_s=t - kn.started_at),
            "node-b": LinkSample(member="node-b", up=True, bytes_recvd=b[0], uptime_s=b[1]),
        }

    old = links((80_000, 95.0))
    kn.observe(Observation(at=t, daemon_ok=True, links=old, links_before=None))
    new = links((900, 0.6))
    stale = Probe(member="node-b", path="overlay", ok=False, at=t - 3.0, error="no ack within 3.50 s")
    obs = Observation(at=t + 0.5, daemon_ok=True, links=new, links_before=old, probes=[stale])
    kn.observe(obs)
    assert kn.state("node-b").link_up_since == t + 0.5 - 0.6
    assert kn.state("node-b").traffic_at == t + 0.5
    assert "peer_silent" not in {f.kind for f in analyze(obs, kn)}
    # A probe sent on the new link that fails while the link receives nothing is silence again.
    fresh = Probe(member="node-b", path="overlay", ok=False, at=t + 0.6, error="no ack within 0.70 s")
    obs = Observation(at=t + 1.5, daemon_ok=True, links=links((900, 1.6)), links_before=new, probes=[fresh])
    kn.observe(obs)
    assert {(f.kind, f.subject) for f in analyze(obs, kn)} >= {("peer_silent", "node-b")}


def test_silent_peer_dropped_by_daemon_stays_one_incident() -> None:
    node = SimNode("node-a", members(FULL3))
    node.tick(up={"node-b", "node-c"})
    node.tick(up={"node-b", "node-c"}, overlay={"node-c": False}, quiet={"node-c"})
    node.tick(up={"node-b", "node-c"}, overlay={"node-c": False}, quiet={"node-c"})
    # ~5 s later the daemon notices and drops the link.
    r = node.tick(up={"node-b"}, overlay={"node-c": False})
    assert r.kinds("node-c") == {"peer_silent"}
    assert "dropped" in r.findings[0].detail
    assert [i.kind for i in node.kn.incidents] == ["peer_silent"]


def test_member_unreachable_names_the_underlay_state() -> None:
    node = SimNode("node-a", members(FULL3, links=CHAIN))
    node.tick(up={"node-b"})
    r = node.tick(up={"node-b"}, overlay={"node-c": False})
    (f,) = r.findings
    assert (f.kind, f.subject) == ("member_unreachable", "node-c")
    assert "answers on the underlay" in f.detail


def test_partition_below_majority_only() -> None:
    ids = [f"node-{c}" for c in "abcde"]
    node = SimNode("node-a", members(ids))
    node.tick(up=set(ids[1:]))
    r = node.tick(up={"node-b", "node-c", "node-d"}, overlay={"node-e": False, "node-d": False})
    assert "partition" not in r.kinds()  # 3/5 reachable is a majority
    r = node.tick(up={"node-b"}, overlay={"node-e": False, "node-d": False, "node-c": False})
    (part,) = [f for f in r.findings if f.kind == "partition"]
    assert part.subject == "mesh" and "2/5" in part.detail and "node-c, node-d, node-e" in part.detail
    r = node.tick(up=set(ids[1:]))
    assert "partition" not in r.kinds()
    assert any(i.kind == "partition" for i, _ in r.reconciled.resolved)


def test_latency_degraded_after_consecutive_slow_probes() -> None:
    node = SimNode("node-a", members(FULL3))
    for _ in range(2):
        r = node.tick(up={"node-b", "node-c"}, overlay={"node-b": 0.4})
        assert "latency_degraded" not in r.kinds()
    r = node.tick(up={"node-b", "node-c"}, overlay={"node-b": 0.4})
    assert r.kinds("node-b") == {"latency_degraded"}
    # Daemon-reported latency (0.5.6+) is used directly.
    r = node.tick(up={"node-b", "node-c"}, latency_ms={"node-c": 900.0})
    assert r.kinds("node-c") == {"latency_degraded"}
    assert "latency_degraded" not in r.kinds("node-b")


def test_daemon_down_keeps_open_incidents_and_plans_nothing() -> None:
    node = SimNode("node-a", members(FULL3))
    node.tick(up={"node-b", "node-c"})
    node.tick(up={"node-c"}, overlay={"node-b": False})
    r = node.tick(up=(), daemon_ok=False, overlay={"node-b": False, "node-c": False})
    assert r.kinds() == {"daemon_down", "peer_lost"}
    assert r.reconciled.resolved == []
    assert r.plan.actions == []
    r = node.tick(up={"node-b", "node-c"})
    assert {i.kind for i, _ in r.reconciled.resolved} == {"daemon_down", "peer_lost"}


def test_version_mismatch_is_reported_not_lost_not_healed() -> None:
    mesh = members(FULL3, links=CHAIN, versions={"node-b": "0.5"})
    node = SimNode("node-a", mesh)
    for _ in range(3):
        r = node.tick(up=(), overlay={"node-b": False, "node-c": False}, dial={"node-b": True})
    assert r.kinds("node-b") == {"version_mismatch"}
    assert not [a for a in r.plan.actions if a.target == "node-b"]
    # Learned from the member's /health as well, when the members file does not say.
    node = SimNode("node-a", members(FULL3))
    r = node.tick(up={"node-b"}, health={"node-c": {"api_version": "0.5"}})
    assert r.kinds("node-c") == {"version_mismatch"}


def test_startup_grace_hides_links_that_never_came_up() -> None:
    node = SimNode("node-a", members(FULL3), started=1_000_000.0)
    r = node.tick(up={"node-b"}, overlay={"node-c": False})
    assert r.findings == []
    for _ in range(10):
        r = node.tick(up={"node-b"}, overlay={"node-c": False})
    assert r.kinds("node-c") == {"peer_lost"}
    assert "never came up" in r.findings[0].detail


def test_daemon_starting_with_the_agent_is_not_an_incident() -> None:
    node = SimNode("node-a", members(FULL3), started=1_000_000.0)
    r = node.tick(up=(), daemon_ok=False)
    assert r.findings == []
    r = node.tick(up={"node-b", "node-c"})
    assert r.findings == []
    r = node.tick(up=(), daemon_ok=False)
    assert r.kinds() == {"daemon_down"}
