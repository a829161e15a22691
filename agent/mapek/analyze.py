"""MAPE-K Analyze: (observation, knowledge) -> findings. Pure: reads both, changes neither.

One finding per (kind, subject); the knowledge turns findings into incidents (open while the finding is present).
- `peer_lost`: a planned (or stand-in) peer has no link up. At start, a planned link that never came up counts
  only after the startup grace. Not for REDIAL_SETTLE_S after our own redial of it succeeded: that redial dropped
  the link, and the daemon dials it again at once.
- `peer_silent`: the link is listed but no traffic passes: our probe of that peer failed (directly and through
  k members) AND the link received no bytes since the previous snapshot (a live daemon passes on an ICMP port
  unreachable even when its agent is gone), or the peer's agent answers on the underlay with its daemon up (so
  the path between the two daemons is what fails). A silent peer whose link the daemon then drops stays one
  `peer_silent` incident. Caveat seen on 0.4: overlay traffic to a direct peer can follow the spanning tree
  through a third node, so a blackholed tree root also makes other links look silent until the daemons drop the
  root's links (4-6 s later).
- `member_unreachable`: the membership layer (SWIM) holds the member suspect or dead: no answer over the mesh,
  directly nor through k other members, here or wherever the suspicion came from (reported once per member: not
  beside a lost/silent peer incident for the same member; not while our own probe answered after the suspicion).
  The detail says who suspects it and whether its agent answers on the underlay. Without SWIM: our own overlay
  probe failed.
- `partition`: members that are not known unreachable are below a majority of the mesh.
- `latency_degraded`: consecutive slow overlay probes, the latest one fresh (stale evidence of a member that is
  fast again, or gone, does not keep it open), or the daemon's link latency (0.5.6+) above threshold.
- `daemon_down`: our own daemon's admin socket fails. We are blind then, so the incidents already open stay open
  instead of being declared resolved.
- `version_mismatch`: a member runs the other daemon API (0.4 vs 0.5 cannot peer); reported, never healed.
"""

from __future__ import annotations

from agent.mapek.knowledge import Finding, Knowledge, MemberState, MemberView, Observation

PEER_KINDS = ("peer_lost", "peer_silent")
# A redial (removePeer + addPeer) reconnects in ~0.2 s on 0.4 (reference yggdrasil.md), but a snapshot taken in
# that gap opened `peer_lost` about a link the redial had just healed, and it resolved only at the next tick: a
# 5 s blackhole repaired 2.33 s after it ended instead of 0.3 s (bench/scale_bench.py short case).
REDIAL_SETTLE_S = 2.0


def analyze(obs: Observation, kn: Knowledge) -> list[Finding]:
    now = obs.at
    th = kn.thresholds
    if not obs.daemon_ok:
        if kn.daemon_ok_at is None and now - kn.started_at < th.startup_grace_s:
            return []  # the daemon is still starting with the agent: not an incident yet
        findings = [
            Finding(
                kind="daemon_down",
                subject="yggdrasil",
                detail=obs.daemon_error or "daemon admin socket does not answer",
                onset=kn.daemon_ok_at,
            )
        ]
        findings += [
            Finding(kind=i.kind, subject=i.subject, detail=i.detail, onset=None)
            for i in kn.active_incidents()
            if i.kind != "daemon_down"
        ]
        return findings

    findings: list[Finding] = []
    in_grace = now - kn.started_at < th.startup_grace_s
    overlay_now = {p.member: p for p in obs.probes if p.path == "overlay"}
    watched = set(kn.neighbours()) | set(kn.temporaries) | set(kn.accepting)
    mine = obs.api_version or kn.api_version
    for m in kn.others():
        st = kn.state(m)
        theirs = kn.member_version(m)
        if mine and theirs and theirs != mine:
            findings.append(
                Finding(
                    kind="version_mismatch",
                    subject=m,
                    detail=f"{m} runs Yggdrasil {theirs}, this node {mine}: they cannot peer (not healed)",
                )
            )
            continue
        peer_finding = False
        link = obs.links.get(m)
        if m in watched:
            if link is None or not link.up:
                if st.ever_up or not in_grace:
                    peer_finding = True
                    if kn.has_active("peer_silent", m):
                        findings.append(
                            Finding(
                                kind="peer_silent",
                                subject=m,
                                detail=f"link to {m} went silent and the daemon dropped it",
                                onset=st.traffic_at,
                            )
                        )
                    elif st.ever_up and kn.redialled(m, since=now - REDIAL_SETTLE_S):
                        pass  # our redial's own gap: peer_finding still holds back member_unreachable
                    else:
                        what = "link down" if st.ever_up else "planned link never came up"
                        findings.append(
                            Finding(
                                kind="peer_lost",
                                subject=m,
                                detail=f"{what} ({_underlay(st)})",
                                onset=st.link_seen_up_at,
                            )
                        )
            else:
                probe = overlay_now.get(m)
                # The link carries nothing (no bytes since the previous snapshot), or its far end is alive on the
                # underlay (agent and daemon answer there) while nothing passes over the mesh: either way the
                # link, not the member, is what fails.
                alive_beside = (
                    st.underlay is not None
                    and st.underlay.ok
                    and st.underlay.daemon_up is not False
                    and probe is not None
                    and st.underlay.at >= probe.at
                )
                silent_now = (
                    probe is not None
                    and not probe.ok
                    # A probe sent before this link (re)formed says nothing about it: one that timed out while our
                    # daemon was down (timeouts stretched by local health) called the fresh link silent, and the
                    # redial that followed dropped it again (scale-bench node-loss: repair 3.4 s at 20 nodes).
                    and (st.link_up_since is None or probe.at >= st.link_up_since)
                    and (not _traffic(obs, m) or alive_beside)
                    and (
                        st.overlay_ok_at is not None or not in_grace
                    )  # a link still forming at start is not silent
                )
                # No probe finished this tick: silent while the latest one we have failed too.
                last_failed = st.overlay is None or not st.overlay.ok
                still_silent = probe is None and kn.has_active("peer_silent", m) and last_failed
                if silent_now or still_silent:
                    peer_finding = True
                    reason = probe.error if probe is not None and probe.error else "no answer"
                    findings.append(
                        Finding(
                            kind="peer_silent",
                            subject=m,
                            detail=f"link to {m} listed but carries no traffic (overlay probe: {reason})",
                            onset=max(filter(None, (st.traffic_at, st.overlay_ok_at)), default=None),
                        )
                    )
            if link is not None and link.up and link.latency_ms is not None:
                if link.latency_ms / 1000.0 > th.latency_degraded_s:
                    findings.append(
                        Finding(
                            kind="latency_degraded",
                            subject=m,
                            detail=f"daemon link latency {link.latency_ms:.0f} ms "
                            f"> {th.latency_degraded_s * 1000:.0f} ms",
                        )
                    )
                    continue
        view = kn.membership.get(m) if kn.has_membership else None
        if peer_finding:
            pass
        elif view is not None:
            answered_since = view.last_ack is not None and view.last_ack > view.since
            if view.state in ("suspect", "dead") and not answered_since:
                findings.append(
                    Finding(
                        kind="member_unreachable",
                        subject=m,
                        detail=f"{_membership(view, kn.node_id)}; {_underlay(st)}",
                        onset=view.last_ack if view.last_ack is not None else view.since,
                    )
                )
                continue
        elif st.overlay is not None and not st.overlay.ok:
            if st.overlay_ok_at is not None or not in_grace:
                findings.append(
                    Finding(
                        kind="member_unreachable",
                        subject=m,
                        detail=f"no answer over the overlay ({st.overlay.error or 'failed'}); {_underlay(st)}",
                        onset=st.overlay_ok_at,
                    )
                )
                continue
        if (
            not peer_finding
            and st.slow_probes >= th.latency_probes
            and st.overlay is not None
            and st.overlay.ok
            and st.overlay.rtt_s is not None
            and now - st.overlay.at <= th.latency_fresh_s
        ):
            findings.append(
                Finding(
                    kind="latency_degraded",
                    subject=m,
                    detail=f"overlay round trip {st.overlay.rtt_s * 1000:.0f} ms "
                    f"> {th.latency_degraded_s * 1000:.0f} ms for {st.slow_probes} probes",
                )
            )

    total = len(kn.members.ids)
    if total >= 2:
        unreachable = kn.members_unreachable()
        majority = total // 2 + 1
        if total - len(unreachable) < majority and (kn.majority_ok_at is not None or not in_grace):
            findings.append(
                Finding(
                    kind="partition",
                    subject="mesh",
                    detail=f"{total - len(unreachable)}/{total} members reachable, majority is {majority}; "
                    f"unreachable over the overlay: {', '.join(sorted(unreachable))}"
                    + (" (nothing reaches this node over the mesh: it is the one cut off)" if kn.cut_off else ""),
                    onset=kn.majority_ok_at,
                )
            )
    return findings


def _traffic(obs: Observation, member: str) -> bool:
    """Did the link to `member` receive bytes while the probes were in flight?"""
    if obs.links_before is None:
        return False
    before, after = obs.links_before.get(member), obs.links.get(member)
    if before is None or after is None or before.bytes_recvd is None or after.bytes_recvd is None:
        # A link that was not there before the probes is new: it carried a handshake.
        return before is None and after is not None and after.up
    return after.received_since(before)


def _membership(view: MemberView, me: str) -> str:
    who = "this node" if view.by == me else (view.by or "a member")
    if view.state == "dead":
        return f"declared lost by the mesh ({who}; incarnation {view.incarnation})"
    return f"suspected by {who}: no answer directly nor through other members (incarnation {view.incarnation})"


def _underlay(st: MemberState) -> str:
    probe = st.underlay
    if probe is None:
        return "underlay not probed yet"
    if probe.ok:
        rtt = f" in {probe.rtt_s * 1000:.0f} ms" if probe.rtt_s is not None else ""
        daemon = "" if probe.daemon_up is not False else ", but its daemon is down"
        return f"its agent answers on the underlay{rtt}{daemon}"
    return f"its agent does not answer on the underlay either ({probe.error or 'failed'})"
