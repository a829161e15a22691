"""MAPE-K Monitor: one `Observation` per tick, from the daemon and from probes of other members' agents.

Per tick:
1. `getPeers` (links per member, received bytes), then the probes in parallel, then `getPeers` again: bytes that
   arrived while the probes were in flight prove a link carries traffic (`peer_silent` needs their absence).
2. Probes, each bounded by `probe_timeout_s` (0.5 s: a blackholed peer is noticed within the 2 s target):
   - `overlay`: GET <overlay_url>/health through Yggdrasil; any HTTP answer (200 or 503) means the member's agent
     is reachable over the mesh. A fresh connection per probe, so a dead path cannot hide behind a pooled one.
   - `underlay`: GET <agent_url>/health directly: is the member (agent, and its daemon per its /health) alive?
   - `dial`: a TCP connect to the member's peering port, for planned peers this node dials (and its stand-ins)
     whose link is down: can our daemon dial it right now? That is the "answers again" trigger for a redial.
   Who is probed (SWIM-style, so the cost grows with degree, not mesh size): planned neighbours and stand-ins
   every tick, plus `probe_fanout` other members in rotation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from urllib.parse import urlsplit

import httpx
import msgspec

from agent.mapek.knowledge import Knowledge, LinkSample, Observation, Probe, ProbePath
from agent.yggdrasil.client import AdminClient
from agent.yggdrasil.errors import AdminError
from agent.yggdrasil.models import PeerLink


class _HealthBody(msgspec.Struct):
    class _Ygg(msgspec.Struct):
        reachable: bool | None = None
        api_version: str | None = None

    yggdrasil: _Ygg | None = None


_health = msgspec.json.Decoder(_HealthBody)


def merge_links(links: Iterable[PeerLink], member_of: Callable[[PeerLink], str | None]) -> dict[str, LinkSample]:
    """Links by member: up if any is up; received bytes summed over the up ones (0.4 holds one link per pair
    after our planning, 0.5 may list a down link beside an up one)."""
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
        latency = link.latency_ms if link.up else None
        if prev is not None and prev.latency_ms is not None:
            latency = prev.latency_ms if latency is None else min(latency, prev.latency_ms)
        out[member] = LinkSample(
            member=member,
            up=up,
            bytes_recvd=total,
            latency_ms=latency,
            inbound=link.inbound if link.up else (prev.inbound if prev else None),
        )
    return out


def probe_set(kn: Knowledge, rotation: int, fanout: int) -> tuple[list[str], int]:
    """Members to probe this tick and the next rotation offset."""
    # The set once, not once per member: with a large members file that was O(members x neighbours) a tick.
    watched = set(kn.neighbours()) | set(kn.temporaries) | set(kn.accepting)
    always = [m for m in kn.others() if m in watched]
    rest = [m for m in kn.others() if m not in always]
    if not rest or fanout <= 0:
        return always, rotation
    take = min(fanout, len(rest))
    start = rotation % len(rest)
    picked = [rest[(start + i) % len(rest)] for i in range(take)]
    return always + picked, (start + take) % len(rest)


def dial_targets(kn: Knowledge) -> list[str]:
    """Members whose peering port we check: planned peers we dial and our stand-ins, while their link is down."""
    mine = list(kn.members.dials(kn.node_id)) + [t for t, temp in kn.temporaries.items() if temp.dialer]
    return [m for m in dict.fromkeys(mine) if not kn.state(m).link_up]


# HTTP probes in flight at once (also the probe client's connection limit).
PROBE_CONCURRENCY = 64


class MapekMonitor:
    def __init__(
        self,
        admin: AdminClient,
        member_of: Callable[[PeerLink], str | None],
        timeout: float,
        fanout: int,
    ) -> None:
        self.admin = admin
        self.member_of = member_of
        self.timeout = timeout
        self.fanout = fanout
        self._rotation = 0
        self._slots = asyncio.Semaphore(PROBE_CONCURRENCY)
        # httpx logs every request at INFO: several probes a second would drown the agent's own log.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        # No keep-alive: each probe opens its own connection, exactly what a dead path must fail.
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_keepalive_connections=0, max_connections=PROBE_CONCURRENCY),
            follow_redirects=False,
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def observe(self, kn: Knowledge, *, react: bool = False) -> Observation:
        """One observation. `react`: a reaction tick (a peering port just answered): only the daemon and the
        peering ports are read, so the redial is not held up by slow overlay probes; the last probe results
        stand for the rest."""
        try:
            before_raw = await self.admin.get_peers()
        except AdminError as exc:
            return Observation(at=time.time(), daemon_ok=False, daemon_error=f"{type(exc).__name__}: {exc}")
        before = merge_links(before_raw, self.member_of)
        targets, self._rotation = ([], self._rotation) if react else probe_set(kn, self._rotation, self.fanout)
        members = kn.members
        jobs = []
        for m in targets:
            member = members.by_id.get(m)
            if member is None:
                continue
            if member.overlay_url:
                jobs.append(self._http_probe(m, "overlay", member.overlay_url))
            jobs.append(self._http_probe(m, "underlay", member.agent_url))
        for m in dial_targets(kn):
            member = members.by_id.get(m)
            if member is not None and member.listen_uri:
                jobs.append(self._dial_probe(m, member.listen_uri))
        probes: Sequence[Probe] = await asyncio.gather(*jobs) if jobs else []
        try:
            after_raw = await self.admin.get_peers()
        except AdminError as exc:
            return Observation(
                at=time.time(), daemon_ok=False, daemon_error=f"{type(exc).__name__}: {exc}", probes=list(probes)
            )
        return Observation(
            at=time.time(),
            daemon_ok=True,
            api_version=self.admin.api_version,
            links=merge_links(after_raw, self.member_of),
            links_before=before,
            probes=list(probes),
        )

    async def _http_probe(self, member: str, path: ProbePath, base_url: str) -> Probe:
        # Wait here, not in httpx's pool: its queue costs O(waiting x connections) per request (issue 11 item 1:
        # a 1,000-member full plan queued ~2,000 probes a tick and took the event loop).
        async with self._slots:
            return await self._http_probe_now(member, path, base_url)

    async def _http_probe_now(self, member: str, path: ProbePath, base_url: str) -> Probe:
        url = base_url.rstrip("/") + "/health"
        started = time.perf_counter()
        at = time.time()
        try:
            resp = await self._http.get(url)
        except httpx.TimeoutException:
            return Probe(member=member, path=path, ok=False, at=at, error=f"no answer within {self.timeout:g} s")
        except httpx.HTTPError as exc:
            return Probe(member=member, path=path, ok=False, at=at, error=_short(exc))
        rtt = time.perf_counter() - started
        daemon_up = api_version = None
        try:
            body = _health.decode(resp.content)
            if body.yggdrasil is not None:
                daemon_up, api_version = body.yggdrasil.reachable, body.yggdrasil.api_version
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass  # an answer is an answer; its body is a bonus
        return Probe(
            member=member, path=path, ok=True, at=at, rtt_s=rtt, daemon_up=daemon_up, api_version=api_version
        )

    async def links_dropped(self, kn: Knowledge) -> list[str]:
        """Members the knowledge has a link up to, whose link the daemon no longer lists as up."""
        known_up = [m for m in kn.others() if kn.state(m).link_up]
        if not known_up:
            return []
        try:
            now = merge_links(await self.admin.get_peers(), self.member_of)
        except AdminError:
            return []  # the next tick reports the daemon
        return [m for m in known_up if not (m in now and now[m].up)]

    async def ports_answering(self, kn: Knowledge) -> list[str]:
        """Dial targets whose last recorded port probe failed and whose port answers now."""
        waiting = [m for m in dial_targets(kn) if (st := kn.state(m)).dial is not None and not st.dial.ok]
        uris = {m: kn.members.by_id[m].listen_uri for m in waiting if m in kn.members.by_id}
        jobs = [self._dial_probe(m, uri) for m, uri in uris.items() if uri]
        return [p.member for p in await asyncio.gather(*jobs) if p.ok] if jobs else []

    async def _dial_probe(self, member: str, listen_uri: str) -> Probe:
        at = time.time()
        try:
            parts = urlsplit(listen_uri)
            host, port = parts.hostname, parts.port
        except ValueError:
            host = port = None
        if not host or not port:
            return Probe(member=member, path="dial", ok=False, at=at, error=f"no host:port in {listen_uri}")
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                _, writer = await asyncio.open_connection(host, port)
        except TimeoutError:
            return Probe(member=member, path="dial", ok=False, at=at, error=f"no answer within {self.timeout:g} s")
        except OSError as exc:
            return Probe(member=member, path="dial", ok=False, at=at, error=exc.strerror or str(exc))
        rtt = time.perf_counter() - started
        writer.close()
        return Probe(member=member, path="dial", ok=True, at=at, rtt_s=rtt)


def _short(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."
