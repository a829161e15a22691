"""MAPE-K Monitor: one `Observation` per tick, without an admin call or an HTTP request of its own.

- Links: from the agent's shared daemon snapshot (agent.monitor takes it once per X0_MONITOR_INTERVAL for the API,
  the metrics and MAPE-K alike: one getPeers per interval per node, not three). `links_before` is the previous
  snapshot's, so received bytes between the two say whether a link carries anything (`peer_silent` needs none).
  When a probe failed of a member the snapshot still lists, the tick asks for a snapshot taken now (one admin call,
  only while such a failure is news): a listing older than the failure cannot tell a dead peer from a silent one.
- Probes and membership: from SWIM over UDP (agent.mapek.swim): the finished probes since the last tick (`overlay`
  = the mesh path, `underlay` = the diagnostic ping beside the indirect probes, with the member's own word on its
  daemon) and every member's state, incarnation and drill announcement.
- `dial`: a TCP connect to the peering port of members this node dials (planned peers and stand-ins) whose link
  is down or silent: can our daemon dial it right now? That is the trigger for a forced redial. Between ticks
  the loop re-checks those ports every 0.25 s (`ports_answering`), so a redial follows the peer's return at once.
  At most DIAL_IN_FLIGHT probes are open at a time and a re-check round takes at most WATCH_ROUND ports (in
  rotation): a 1,000-member full plan has ~1,000 down links, and opening every probe in one step of the event loop
  held it 0.1-0.2 s a time, several times a second (issue 11 item 1: /health p99 350 ms). The connects run in a
  worker thread (agent.mapek.ports), and a port failing for long is checked less often (DIAL_STEADY_S).
Who is probed, how often, and what it costs per node is SWIM's business: the watched set (`watch_set`: planned
neighbours and stand-ins) every probe interval plus one other member in rotation.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from agent.mapek.knowledge import Knowledge, LinkSample, MemberView, Observation, Probe
from agent.mapek.ports import PortProber
from agent.mapek.swim.protocol import ProbeResult
from agent.yggdrasil.models import DaemonSnapshot, PeerLink

# Dial probes open at once (sockets, and connect calls made in one step of the event loop).
DIAL_IN_FLIGHT = 64
# Waiting ports re-checked per `ports_answering` round; beyond it the rest wait for the next rounds (and every
# tick probes all of them anyway).
WATCH_ROUND = 64
# A peering port that has not answered for DIAL_STEADY_S is re-checked less often: every 1/DIAL_BACKOFF_DIV of the
# time it has been failing, at most every DIAL_BACKOFF_MAX_S. A fault of up to 30 s keeps the 0.25 s re-check (the
# repair target is for those); a member gone for minutes, or the ~1,000 that a full plan of a large members file
# lists but nobody runs, costs a connect every few seconds instead of four a second each.
DIAL_STEADY_S = 30.0
DIAL_BACKOFF_DIV = 20.0
DIAL_BACKOFF_MAX_S = 5.0
# How long a tick waits for the snapshot it asked for: an admin call takes ~1 ms, but the agent's monitor may be
# inside a pass (members file check, a slow daemon); past this the tick goes on with what it has.
FRESH_WAIT_S = 0.3


@functools.lru_cache(maxsize=8192)
def host_port(listen_uri: str) -> tuple[str, int] | None:
    """(host, port) a peer URI dials, or None when it names none. Cached: every tick asks it of every dial
    target, and urlsplit of 1,000 URIs was a seventh of a 1,000-member agent's event loop."""
    try:
        parts = urlsplit(listen_uri)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    return (host, port) if host and port else None


def merge_links(links: Iterable[PeerLink], member_of: Callable[[PeerLink], str | None]) -> dict[str, LinkSample]:
    """Links by member: up if any is up; received bytes summed over the up ones (0.4 holds one link per pair
    after our planning, 0.5 may list a down link beside an up one), the uptime of the youngest up one."""
    out: dict[str, LinkSample] = {}
    for link in links:
        member = member_of(link)
        if member is None:
            continue
        prev = out.get(member)
        up = link.up or (prev is not None and prev.up)
        total = None
        for part in (prev.bytes_recvd if prev and prev.up else None, link.bytes_recvd if link.up else None):
            if part is not None:
                total = (total or 0) + part
        uptime = link.uptime_s if link.up else None
        if prev is not None and prev.uptime_s is not None:
            uptime = prev.uptime_s if uptime is None else min(uptime, prev.uptime_s)
        latency = link.latency_ms if link.up else None
        if prev is not None and prev.latency_ms is not None:
            latency = prev.latency_ms if latency is None else min(latency, prev.latency_ms)
        out[member] = LinkSample(
            member=member,
            up=up,
            bytes_recvd=total,
            latency_ms=latency,
            uptime_s=uptime,
            inbound=link.inbound if link.up else (prev.inbound if prev else None),
        )
    return out


def watch_set(kn: Knowledge) -> list[str]:
    """Members SWIM probes every interval: planned neighbours (at most topology.WATCH_MAX of them, or the expander
    neighbours instead), stand-ins we dial and stand-ins that dial us."""
    return list(dict.fromkeys([*kn.members.watched(kn.node_id), *kn.temporaries, *kn.accepting]))


def dial_targets(kn: Knowledge, now: float | None = None) -> list[str]:
    """Members whose peering port we check: planned peers we dial and our stand-ins, while their link is down,
    silent or stuck (receiving nothing: a link is stuck in TCP retransmission backoff after a blackhole, and only a
    redial revives it at once). With `now`, a port failing for longer than DIAL_STEADY_S is left out until its next
    backed-off check is due."""
    mine = list(kn.members.dials(kn.node_id)) + [t for t, temp in kn.temporaries.items() if temp.dialer]
    out = []
    for m in dict.fromkeys(mine):
        st = kn.state(m)
        if st.link_up and not kn.has_active("peer_silent", m) and st.stuck_since is None:
            continue
        if now is not None and st.dial is not None and st.dial_fail_since is not None:
            failing = now - st.dial_fail_since
            if failing > DIAL_STEADY_S and now - st.dial.at < min(DIAL_BACKOFF_MAX_S, failing / DIAL_BACKOFF_DIV):
                continue
        out.append(m)
    return out


def probe_from(result: ProbeResult) -> Probe:
    return Probe(
        member=result.member,
        path="overlay" if result.path == "mesh" else "underlay",
        ok=result.ok,
        at=result.at,
        rtt_s=result.rtt_s,
        error=result.error,
        daemon_up=result.daemon_up,
        api_version=result.api,
    )


def _listed_after_failing(
    snap: DaemonSnapshot, probes: Sequence[Probe], member_of: Callable[[PeerLink], str | None]
) -> bool:
    """Did an overlay probe that failed since the last tick go to a member the snapshot lists a link to? (The
    snapshot is older than that news: the failure was only learned now.)"""
    failed = {p.member for p in probes if p.path == "overlay" and not p.ok}
    if not failed:
        return False
    return any(link.up and member_of(link) in failed for link in snap.peers)


@dataclass(frozen=True, slots=True)
class DaemonRead:
    """The agent's latest snapshot, and whether it still describes a live daemon."""

    snapshot: DaemonSnapshot | None
    ok: bool
    error: str | None = None


class Membership(Protocol):
    """What MAPE-K needs from the membership layer (agent.mapek.swim.transport.SwimTransport implements it)."""

    def take_results(self) -> list[ProbeResult]: ...

    def view(self) -> dict[str, MemberView]: ...

    def cut_off(self) -> bool: ...


class MapekMonitor:
    def __init__(
        self,
        read: Callable[[], DaemonRead],
        member_of: Callable[[PeerLink], str | None],
        membership: Membership | None,
        timeout: float,
        fresh: Callable[[float, float], Awaitable[DaemonSnapshot | None]] | None = None,
    ) -> None:
        self.read = read
        self.fresh = fresh  # AgentState.fresh_snapshot: a snapshot taken after a given time, now
        self.member_of = member_of
        self.membership = membership
        self.timeout = timeout
        self._snap_at: float | None = None
        self._links: dict[str, LinkSample] | None = None
        self._before: dict[str, LinkSample] | None = None
        self._watch_from = 0  # rotation of `ports_answering` over the waiting ports
        self.dial_peak = 0  # most port checks open at once, and how many were made (for tests and debugging)
        self.dial_checks = 0

    async def aclose(self) -> None:
        return None  # it holds nothing open: the snapshot is the agent's, the dial probes close their sockets

    async def observe(self, kn: Knowledge, *, react: bool = False) -> Observation:
        """One observation. Only the dial probes touch the network (and only for down or silent links)."""
        read = self.read()
        at = time.time()
        probes: list[Probe] = []
        view: dict[str, MemberView] | None = None
        cut_off = False
        if self.membership is not None:
            probes = [probe_from(r) for r in self.membership.take_results()]
            view = self.membership.view()
            cut_off = self.membership.cut_off()
        if not read.ok or read.snapshot is None:
            return Observation(
                at=at, daemon_ok=False, daemon_error=read.error, probes=probes, membership=view, cut_off=cut_off
            )
        snap = read.snapshot
        if self.fresh is not None and _listed_after_failing(snap, probes, self.member_of):
            # The daemon lists a link whose probe just failed, but that listing predates the failure: a peer
            # whose daemon died a moment ago is still listed until the daemon reads the reset (0.4.7 listed one
            # ~0.1 s after the kill, the agent's snapshot is up to X0_MONITOR_INTERVAL old). Judged on it, a lost
            # peer looks silent and stays `peer_silent` (a whole-suite pass failed
            # test_kill_daemon_drill_detected_and_healed so). One snapshot taken now settles it.
            snap = await self.fresh(at, FRESH_WAIT_S) or snap
        if snap.taken_at != self._snap_at:
            self._snap_at = snap.taken_at
            self._before = self._links
            self._links = merge_links(snap.peers, self.member_of)
        assert self._links is not None
        probes += await self.dial_probes(kn)
        return Observation(
            at=at,
            daemon_ok=True,
            api_version=snap.api_version,
            links=self._links,
            links_before=self._before,
            probes=probes,
            membership=view,
            cut_off=cut_off,
        )

    async def dial_probes(self, kn: Knowledge, only: Sequence[str] | None = None) -> list[Probe]:
        targets = dial_targets(kn, time.time()) if only is None else list(only)
        out: list[Probe | None] = []
        jobs: list[tuple[int, str, tuple[str, int]]] = []
        for m in targets:
            member = kn.members.by_id.get(m)
            if member is None or not member.listen_uri:
                continue
            address = host_port(member.listen_uri)
            if address is None:
                error = f"no host:port in {member.listen_uri}"
                out.append(Probe(member=m, path="dial", ok=False, at=time.time(), error=error))
                continue
            jobs.append((len(out), m, address))
            out.append(None)
        if jobs:
            prober = PortProber(self.timeout, DIAL_IN_FLIGHT)
            checks = await asyncio.to_thread(prober.check, [address for _, _, address in jobs])
            self.dial_peak = max(self.dial_peak, prober.peak)
            self.dial_checks += len(jobs)
            for (k, m, _), c in zip(jobs, checks, strict=True):
                out[k] = Probe(member=m, path="dial", ok=c.ok, at=c.at, rtt_s=c.rtt_s, error=c.error)
        return [p for p in out if p is not None]

    async def ports_answering(self, kn: Knowledge) -> list[str]:
        """Dial targets whose last recorded port probe failed and whose port answers now (at most WATCH_ROUND of
        them per call, in rotation)."""
        targets = dial_targets(kn, time.time())
        waiting = [m for m in targets if (st := kn.state(m)).dial is not None and not st.dial.ok]
        if len(waiting) > WATCH_ROUND:
            start = self._watch_from % len(waiting)
            self._watch_from = start + WATCH_ROUND
            waiting = (waiting[start:] + waiting[:start])[:WATCH_ROUND]
        return [p.member for p in await self.dial_probes(kn, waiting) if p.ok]
