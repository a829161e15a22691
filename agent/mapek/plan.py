"""MAPE-K Plan: (findings, knowledge, now) -> actions. Pure: decides, executes nothing.

What it plans, in priority order:
1. `quarantine` a member whose link dropped `flap_threshold` times in the flap window (bookkeeping only: while
   quarantined it gets no forced redials and is not used as a stand-in; the daemon's own retries still run).
2. `redial` a planned peer this node dials, whose link is down past the suspicion window or silent, the moment
   its peering port answers again (execute: removePeer + addPeer on 0.4, an addPeer kick on 0.5), instead of
   waiting for the daemon's retry timer (60 s on 0.4, up to 68 min of backoff on 0.5), or, for a silent link, for
   its TCP retransmission backoff and the daemon's read deadline (a blackhole that ended).
3. `add_peer` a stand-in when this node's live planned links fall below min(k, planned degree). The stand-in
   links are a deterministic function of (planned links, failed members, k), `repair_links`, so both ends of a
   stand-in compute the same pair and only its dialer (lower id, `topology.default_dialer`) dials.
4. `restore`: drop a stand-in once every planned peer of this node is linked again; `remove_peer`: drop a
   stand-in that failed itself.
Every candidate then passes the guards: quarantine, a per-target cooldown (doubling while repeated actions do not
bring the link up), and a global rate limit. A guarded action is returned with `skip` set so its outcome is
recorded as skipped, with the reason; the same skip is recorded at most once per `skip_log_s`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

import msgspec

from agent import topology
from agent.mapek.knowledge import SILENT_STUCK_S, STUCK_QUIET_S, Finding, Knowledge, PlannedAction
from agent.members import peer_uri

# A redial waits for a fresh "port answers" probe: older than this it says nothing about now.
_DIAL_FRESH_S = 3.0
_MAX_COOLDOWN_S = 60.0


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    actions: list[PlannedAction]
    # Stand-ins this node expects the other side to dial, and the lost peers they replace.
    accepting: dict[str, tuple[str, ...]]


def failed_members(kn: Knowledge, now: float) -> dict[str, str]:
    """Members this node cannot use as a link partner right now, with why. Only facts about the member itself
    count (its agent gone, its daemon down, our planned link to it lost/silent past the suspicion window, or it
    is quarantined): an overlay-unreachable member may just sit behind a lost node."""
    th = kn.thresholds
    in_grace = now - kn.started_at < th.startup_grace_s
    planned = set(kn.neighbours())
    failed: dict[str, str] = {}
    for m in kn.others():
        if kn.version_mismatch(m):
            continue
        st = kn.state(m)
        silent = kn.active.get(("peer_silent", m))
        if st.quarantined(now):
            failed[m] = "quarantined (flapping)"
        elif (
            m in planned
            and not st.link_up
            and (st.ever_up or not in_grace)
            and (now - (st.link_down_since if st.link_down_since is not None else kn.started_at) >= th.suspicion_s)
        ):
            failed[m] = "planned link down"
        elif m in planned and silent is not None and now - silent.detected_at >= th.suspicion_s:
            failed[m] = "planned link silent"
        elif st.underlay_fail_since is not None and now - st.underlay_fail_since >= th.suspicion_s:
            failed[m] = "agent does not answer on the underlay"
        elif st.daemon_up is False:
            failed[m] = "its daemon is down"
        elif (
            (v := kn.membership.get(m)) is not None
            and v.state == "dead"
            # While the mesh forms, a member this node has never reached over the overlay is not lost yet: its
            # planned link may still be coming up (a 3-node chain took a stand-in at start for a neighbour whose
            # link came up 0.7 s before SWIM's verdict on probes sent before it).
            and (st.overlay_ok_at is not None or not in_grace)
        ):
            failed[m] = "declared lost by the mesh"
    return failed


def repair_links(
    adjacent: Mapping[str, Collection[str]],
    ids: Iterable[str],
    failed: Iterable[str],
    degree: int,
    excluded: Iterable[str] = (),
) -> list[topology.Link]:
    """Stand-in links that give every live member min(degree, its planned degree) live links again.

    `adjacent`: each member's planned peers (`Members.adjacent`, `topology.adjacency(links)`; no duplicates).
    Deterministic in its inputs, so every node that sees the same failed set plans the same pairs. Members are
    served in id order; each picks, among live non-neighbours not yet linked to it, first one that also lacks
    links (one link then repairs both ends), then one that shared a failed neighbour with it (the link goes
    around the lost node), then the lowest id. `excluded` members (e.g. other daemon version) are never picked.
    Returns (dialer, acceptor) pairs with the lower id dialling.

    It runs on the event loop every tick, so it never walks the whole link list (a 1,000-member full plan has
    499,500 links: that walk blocked the loop ~0.5 s a tick, issue 11 item 1): a member's live degree is only
    counted when its planned degree minus every failed member could fall below its target, and neighbour sets
    are built only for the members the search looks at.
    """
    failed_set, excluded_set = set(failed), set(excluded)
    if not failed_set:
        return []  # every member still has all of its planned links
    alive = sorted(i for i in ids if i not in failed_set)
    sets: dict[str, frozenset[str]] = {}

    def planned(i: str) -> frozenset[str]:
        s = sets.get(i)
        if s is None:
            s = sets[i] = frozenset(adjacent.get(i, ()))
        return s

    target: dict[str, int] = {}
    deg: dict[str, int] = {}  # live links; for a member that can never lack one, any value >= its target
    for i in alive:
        n = len(adjacent.get(i, ()))
        target[i] = min(degree, n)
        deg[i] = n if n - len(failed_set) >= target[i] else len(planned(i) - failed_set)
    added: dict[str, set[str]] = {}
    extra: list[topology.Link] = []
    for i in alive:
        if i in excluded_set or deg[i] >= target[i]:
            continue
        lost_i = planned(i) & failed_set
        mine = added.setdefault(i, set())
        while deg[i] < target[i]:
            # min over the candidates of (does not lack links, shares no lost neighbour, id): `alive` is in id
            # order, so the first candidate of the best class is the answer.
            best: str | None = None
            best_key = (2, 2)
            for c in alive:
                if c == i or c in excluded_set or c in mine or c in planned(i):
                    continue
                lacks = 0 if deg[c] < target[c] else 1
                if lacks > best_key[0] or (lacks == best_key[0] and best_key[1] == 0):
                    continue  # cannot beat the best so far
                around = 0 if lost_i and not planned(c).isdisjoint(lost_i) else 1
                if (lacks, around) < best_key:
                    best, best_key = c, (lacks, around)
                    if best_key == (0, 0):
                        break
            if best is None:
                break
            j = best
            mine.add(j)
            added.setdefault(j, set()).add(i)
            deg[i] += 1
            deg[j] += 1
            extra.append((topology.default_dialer(i, j), j if topology.default_dialer(i, j) == i else i))
    return extra


def plan(findings: Sequence[Finding], kn: Knowledge, now: float) -> Plan:
    th = kn.thresholds
    if kn.daemon_ok is False:
        # Nothing can be done through a daemon that does not answer; the supervisor restarts it.
        return Plan(actions=[], accepting={})
    me = kn.node_id
    members = kn.members
    mismatched = {m for m in kn.others() if kn.version_mismatch(m)}
    failed = failed_members(kn, now)
    candidates: list[PlannedAction] = []

    for m in kn.others():
        st = kn.state(m)
        if m in mismatched or st.quarantined(now) or st.new_flaps() < th.flap_threshold:
            continue
        length = min(th.quarantine_max_s, th.quarantine_base_s * (2**st.quarantine_level))
        candidates.append(
            PlannedAction(
                action="quarantine",
                target=m,
                uri=None,
                reason=f"link dropped {st.new_flaps()} times within {th.flap_window_s:g} s: no forced redials "
                f"and no stand-in use for {length:g} s",
                for_subject=m,
            )
        )
        failed[m] = "quarantined (flapping)"

    for m in members.dials(me):
        st = kn.state(m)
        silent = kn.has_active("peer_silent", m)
        # Stuck: our probes may reach m around the link (through a third node) and resolve `peer_silent`, while the
        # link itself still passes nothing until a daemon drops it (a 5 s blackhole: repaired 2.16 s after it).
        stuck = st.link_up and st.stuck_since is not None
        if m in mismatched or (st.link_up and not silent and not stuck):
            continue
        if not silent and not stuck and (m not in failed or failed[m] != "planned link down"):
            continue
        if st.dial is None or not st.dial.ok or st.dial.at < now - _DIAL_FRESH_S:
            continue  # not answering yet: nothing to gain from dialling
        member = members.by_id.get(m)
        uri = peer_uri(member) if member else None
        if uri is None:
            continue
        if stuck and not silent:
            why = (
                f"{m} answers on its peering port but our link to it received nothing for {STUCK_QUIET_S:g} s (or "
                f"{SILENT_STUCK_S:g} s while our probes of it failed too): stuck in TCP retransmission backoff: "
                "redial now instead of waiting for a daemon to drop it"
            )
        elif silent and st.link_up:
            why = (
                f"{m} answers on its peering port again but our link to it is still silent (stuck in TCP "
                "retransmission backoff): redial now instead of waiting for the daemon to drop it"
            )
        else:
            why = f"{m} answers on its peering port again: redial now instead of the daemon's retry timer"
        candidates.append(PlannedAction(action="redial", target=m, uri=uri, reason=why, for_subject=m))

    repair = repair_links(members.adjacent, members.ids, failed, kn.degree, excluded=mismatched)
    lost_mine = tuple(sorted(n for n in kn.neighbours() if n in failed))
    desired = desired_temporaries(repair, me)
    accepting = {t: lost_mine for t, dials in desired.items() if not dials}
    for t, dials in desired.items():
        if not dials:
            continue
        st = kn.state(t)
        member = members.by_id.get(t)
        uri = peer_uri(member) if member else None
        if st.link_up:
            continue
        temp = kn.temporaries.get(t)
        if temp is not None:
            if st.dial is not None and st.dial.ok and st.dial.at >= now - _DIAL_FRESH_S:
                candidates.append(
                    PlannedAction(
                        action="redial",
                        target=t,
                        uri=temp.uri or uri,
                        reason=f"stand-in link to {t} is down and {t} answers: redial",
                        for_subject=lost_mine[0] if lost_mine else t,
                        standing_in_for=lost_mine,
                    )
                )
            continue
        skip = None
        if uri is None:
            skip = f"{t} has no listen_uri in the members file"
        elif st.underlay is None or not st.underlay.ok:
            skip = f"{t} not confirmed alive on the underlay yet"
        elif st.dial is not None and not st.dial.ok and st.dial.at >= now - _DIAL_FRESH_S:
            skip = f"{t}'s peering port does not answer ({st.dial.error or 'failed'})"
        candidates.append(
            PlannedAction(
                action="add_peer",
                target=t,
                uri=uri,
                reason=f"stand-in for lost {', '.join(lost_mine) or 'peer'}: keep degree "
                f"{min(kn.degree, len(kn.neighbours()))}",
                skip=skip,
                for_subject=lost_mine[0] if lost_mine else t,
                standing_in_for=lost_mine,
            )
        )

    planned_all_up = all(kn.state(n).link_up for n in kn.neighbours() if n not in mismatched)
    hold = th.hold_s if kn.api_version == "0.4" else 0.0
    for t, temp in kn.temporaries.items():
        if not temp.dialer or t in desired:
            continue
        if planned_all_up:
            candidates.append(
                PlannedAction(
                    action="restore",
                    target=t,
                    uri=temp.uri,
                    reason=f"planned peers back ({', '.join(temp.standing_in_for) or 'all'}): drop stand-in {t}",
                    for_subject=temp.standing_in_for[0] if temp.standing_in_for else t,
                    hold_s=hold,
                )
            )
        elif t in failed:
            candidates.append(
                PlannedAction(
                    action="remove_peer",
                    target=t,
                    uri=temp.uri,
                    reason=f"stand-in {t} failed itself ({failed[t]})",
                    for_subject=t,
                    hold_s=hold,
                )
            )

    return Plan(actions=_guard(candidates, kn, now), accepting=accepting)


def _guard(candidates: list[PlannedAction], kn: Knowledge, now: float) -> list[PlannedAction]:
    th = kn.thresholds
    executed = kn.executed_since(now - th.rate_limit_window_s)
    budget = th.rate_limit_actions - len(executed)
    out: list[PlannedAction] = []
    for a in candidates:
        skip = a.skip
        if a.action != "quarantine" and skip is None:
            st = kn.state(a.target)
            cooldown = _cooldown(kn, a.target, now)
            if a.action in ("redial", "add_peer") and st.quarantined(now):
                skip = f"{a.target} is quarantined (flapping)"
            elif cooldown is not None:
                skip = f"cooldown: acted on {a.target} {cooldown[0]:.1f} s ago (waits {cooldown[1]:g} s)"
            elif budget <= 0:
                skip = f"rate limit: {th.rate_limit_actions} actions per {th.rate_limit_window_s:g} s reached"
            else:
                budget -= 1
        if skip is not None:
            last = kn.last_skip.get((a.action, a.target))
            if last is not None and _same_skip(last[0], skip) and now - last[1] < th.skip_log_s:
                continue
            a = msgspec.structs.replace(a, skip=skip)
        out.append(a)
    return out


def _same_skip(a: str, b: str) -> bool:
    # Cooldown reasons carry a changing age: compare up to the first number.
    return a.split(":", 1)[0] == b.split(":", 1)[0]


def _cooldown(kn: Knowledge, target: str, now: float) -> tuple[float, float] | None:
    """(age of the last action, cooldown) when `target` is still cooling down, else None. The cooldown doubles
    with each action since the link to the target was last up, so a peer that never comes back is not hammered."""
    th = kn.thresholds
    st = kn.state(target)
    since_up = st.link_seen_up_at if st.link_seen_up_at is not None else float("-inf")
    recent = [a for a in kn.actions if a.target == target and a.outcome != "skipped" and a.action != "quarantine"]
    if not recent:
        return None
    last = recent[-1]
    tries = sum(1 for a in recent if a.at >= since_up)
    cooldown = min(_MAX_COOLDOWN_S, th.cooldown_s * (2 ** max(0, tries - 1)))
    age = now - last.at
    return (age, cooldown) if age < cooldown else None


def desired_temporaries(repair: Iterable[topology.Link], me: str) -> Mapping[str, bool]:
    """Stand-ins that involve `me`: other member -> whether `me` dials it."""
    return {(b if a == me else a): a == me for a, b in repair if me in (a, b)}
