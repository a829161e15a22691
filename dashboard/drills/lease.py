"""The mesh-wide drill lease (contracts §3, §7) from x0dash's side.

An agent drill (`POST /drills`: blackhole, partition, kill-daemon) takes the lease itself. A fault the source
makes (a local node stopped, a Nomad allocation stopped or restarted, a Nomad node drained) is invisible to the
agents, so x0dash takes the lease for it (`POST /drills/lease`) and gives it back when the drill ends: another
x0dash, a headless run or a plain `POST /drills` is then refused while it runs, and sees who holds it.

Preflight refuses a drill while someone else holds a live lease. A mesh without a lease (Raft off, no leader, an
older agent, no API token) does not block drills: the drill goes on and its steps say it runs without one.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from dashboard import wire
from dashboard.agent_client import AgentClient, AgentError

LEASE_SLACK_S = (
    60.0  # beyond duration + recovery timeout: a holder that dies blocks the mesh at most this long more
)


class Taken(msgspec.Struct, frozen=True, kw_only=True):
    lease: wire.DrillLease
    url: str  # the agent that granted it (any node can release it; this one answered)


def describe(lease: wire.DrillLease, now: float) -> str:
    return (
        f"{lease.kind} on {lease.node_id} by {lease.holder} "
        f"(mesh-wide drill lease, expires in {max(0.0, lease.expires_at - now):.0f} s)"
    )


async def current(client: AgentClient, urls: Sequence[str]) -> wire.DrillLease | None:
    """The live lease as the first agent that answers says it (None: no lease, or nobody can tell)."""
    for url in urls:
        try:
            return await client.drill_lease(url)
        except AgentError:
            continue
    return None


async def take(
    client: AgentClient, urls: Sequence[str], *, holder: str, kind: str, node_id: str, ttl_s: float
) -> tuple[Taken | None, str]:
    """Take the lease for a fault the source makes. Returns it (or None) and what to tell the operator; raises
    LeaseHeld when someone else holds it."""
    if not client.token:
        return (
            None,
            "no mesh-wide drill lease taken: no API token for this mesh (other x0dash cannot see this drill)",
        )
    why: list[str] = []
    for url in urls:
        try:
            lease = await client.take_lease(url, holder=holder, kind=kind, node_id=node_id, ttl_s=ttl_s)
        except AgentError as exc:
            if exc.kind == "conflict":
                raise LeaseHeld(exc.detail) from exc
            why.append(exc.detail)
            if exc.kind in ("auth", "not_found"):
                break  # the same on every agent: a wrong token, or agents without a lease (older x0-agent)
            continue
        return Taken(
            lease=lease, url=url
        ), f"mesh-wide drill lease {lease.lease_id} taken, for {ttl_s:.0f} s at most"
    return None, "no mesh-wide drill lease taken (" + "; ".join(why[:3]) + "): other x0dash cannot see this drill"


async def release(client: AgentClient, taken: Taken, urls: Sequence[str]) -> str:
    """Give the lease back (any agent will do); what to tell the operator."""
    last = ""
    for url in [taken.url, *(u for u in urls if u != taken.url)]:
        try:
            await client.release_lease(url, taken.lease.lease_id)
        except AgentError as exc:
            if exc.kind == "not_found":
                return "mesh-wide drill lease already gone (expired or taken over)"
            last = exc.detail
            continue
        return "mesh-wide drill lease released"
    return f"mesh-wide drill lease not released ({last}); it expires by itself"


def as_drill(held: wire.DrillLease) -> wire.Drill:
    """A lease held for a fault a source made (no agent drill behind it), as a running drill to show."""
    return wire.Drill(
        id=held.lease_id,
        kind=held.kind,  # type: ignore[arg-type]  # a source's kind (node-loss, restart-alloc, drain)
        node_id=held.node_id,
        duration_s=0.0,  # not known: the lease only bounds it
        started_at=held.acquired_at,
        ends_at=held.expires_at,
        reverted_at=None,
        state="active",
        detail=f"made by its source, held by {held.holder}",
    )


def elsewhere(held: wire.DrillLease | None, me: str, now: float) -> wire.Drill | None:
    """The lease as a drill started elsewhere, when it stands for a source-made fault of another holder."""
    if held is None or held.drill_id is not None or held.holder == me or held.expires_at <= now:
        return None  # none; an agent drill (GET /drills shows it); ours; or expired
    return as_drill(held)


class LeaseHeld(Exception):
    """Someone else holds the mesh-wide drill lease (the agent's 409 detail names the holder)."""
