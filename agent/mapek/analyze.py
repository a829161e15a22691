"""MAPE-K Analyze: (observation, knowledge) -> findings. Pure: reads both, changes neither.

One finding per (kind, subject); the knowledge turns findings into incidents (open while the finding is present).
- `peer_lost`: a planned (or stand-in) peer has no link up. At start, a planned link that never came up counts
  only after the startup grace.
- `peer_silent`: the link is listed but no traffic passes: the overlay probe to that peer failed AND the link's
  received bytes did not grow while the probe was in flight (a live daemon answers a probe's SYN even when its
  agent is slow). A silent peer whose link the daemon then drops stays one `peer_silent` incident. Caveat seen on
  0.4: overlay traffic to a direct peer can follow the spanning tree through a third node, so a blackholed tree
  root also makes other links look silent until the daemons drop the root's links (4-6 s later).
- `member_unreachable`: a member's agent does not answer over the overlay (reported once per member: not beside
  a lost/silent peer incident for the same member). The detail says whether it answers on the underlay.
- `partition`: members that are not known unreachable are below a majority of the mesh.
- `latency_degraded`: consecutive slow overlay probes, or the daemon's link latency (0.5.6+) above threshold.
- `daemon_down`: our own daemon's admin socket fails. We are blind then, so the incidents already open stay open
  instead of being declared resolved.
- `version_mismatch`: a member runs the other daemon API (0.4 vs 0.5 cannot peer); reported, never healed.
"""

from __future__ import annotations

from agent.mapek.knowledge import Finding, Knowledge, MemberState, Observation

PEER_KINDS = ("peer_lost", "peer_silent")


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
                silent_now = probe is not None and not probe.ok and not _traffic(obs, m)
                still_silent = probe is None and kn.has_active("peer_silent", m)
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
        if st.overlay is not None and not st.overlay.ok and not peer_finding:
            if st.overlay_ok_at is not None or not in_grace:
                findings.append(
                    Finding(
                        kind="member_unreachable",
                        subject=m,
                        detail=f"no answer over the overlay ({st.overlay.error or 'failed'}); {_underlay(st)}",
                        onset=st.overlay_ok_at,
                    )
                )
        elif st.slow_probes >= th.latency_probes and st.overlay is not None and st.overlay.rtt_s is not None:
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
                    f"unreachable over the overlay: {', '.join(sorted(unreachable))}",
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
    return after.bytes_recvd > before.bytes_recvd


def _underlay(st: MemberState) -> str:
    probe = st.underlay
    if probe is None:
        return "underlay not probed yet"
    if probe.ok:
        rtt = f" in {probe.rtt_s * 1000:.0f} ms" if probe.rtt_s is not None else ""
        daemon = "" if probe.daemon_up is not False else ", but its daemon is down"
        return f"its agent answers on the underlay{rtt}{daemon}"
    return f"its agent does not answer on the underlay either ({probe.error or 'failed'})"
