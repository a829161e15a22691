"""Filing a finished drill's report in the mesh-wide drill history (contracts §3 `POST /drills/history`, §7), so
every other x0dash, and the history view on any node, sees it with its report.

The record is the drill as the agents describe one (`DrillRecord`: id, kind, target, times, state) plus who ran
it and the whole report. For a drill an agent made (blackhole, partition, kill-daemon) the id and start are the
agent's, so the record lands on the same store key as the one the agent files when its drill ends and replaces
it; x0dash waits until the agent's own record is there first, so the agent's (report-less) one cannot land last.

Filing never replaces the local report: that is saved before, and a refused or failed filing is told to the
operator with the reason (`Filed.detail`), never dropped.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec

from agent.consensus.store import MAX_VALUE_BYTES
from dashboard import wire
from dashboard.agent_client import AgentClient, AgentError
from dashboard.drills.report import report_basename, summary_line
from dashboard.drills.scoring import DrillReport

ID_MAX = 64  # DrillRecord.id: 1..64 of [A-Za-z0-9_.-]
RETRY_FOR_S = 30.0  # how long a mesh without a leader (right after a partition) may take to accept the record
RETRY_EVERY_S = 1.0
# 503s that no retry cures (contracts §3): the mesh keeps no replicated history.
_FINAL_503 = ("Raft is disabled",)


class Filed(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    detail: str  # what the operator reads: where it was filed, or why not
    via: str | None = None  # the node that took it
    trimmed: str = ""  # what was left out to fit the store's value limit


def holder() -> str:
    """Who ran the drill, as the drill lease names holders (contracts §3: "x0dash@host:pid")."""
    return f"x0dash@{socket.gethostname()}:{os.getpid()}"[:128]


def record_id(report: DrillReport) -> str:
    """The drill's id in the history: the agent's drill id, or (a fault the source made) the report's name, which
    is also what the history view calls the saved report, so the two merge."""
    return (report.fault.drill_id or report_basename(report))[:ID_MAX]


def drill_record(report: DrillReport, who: str) -> wire.DrillRecord:
    f = report.fault
    state = "aborted" if f.aborted else ("reverted" if f.ended_at is not None else "failed")
    verdict = "PASS" if report.passed else "FAIL"
    return wire.DrillRecord(
        id=record_id(report),
        kind=report.kind,
        node_id=report.target,
        duration_s=f.duration_s,
        started_at=f.started_at,
        ends_at=f.started_at + f.duration_s,
        reverted_at=f.ended_at,
        state=state,
        detail=f"{verdict}: {summary_line(report)}"[:1000],
        holder=who,
        source="x0dash",
        targets=[report.target],
        report=msgspec.to_builtins(report),
    )


def fit(record: wire.DrillRecord, limit: int = MAX_VALUE_BYTES) -> tuple[wire.DrillRecord, str]:
    """The record within the store's value limit, and what was left out to fit ("" when nothing). A mesh of
    hundreds of observers makes a report larger than one value: the timeline and heal actions go first (the
    per-observer scores stay), then the report itself (the summary stays in `detail`)."""
    if len(msgspec.json.encode(record)) <= limit or record.report is None:
        return record, ""
    report: dict[str, Any] = dict(record.report)
    report["timeline"], report["actions"] = [], []
    slim = msgspec.structs.replace(record, report=report)
    if len(msgspec.json.encode(slim)) <= limit:
        return slim, "the report's timeline and heal actions (too large for one store value; saved here in full)"
    return (
        msgspec.structs.replace(record, report=None),
        "the report itself (too large for one store value even without its timeline; saved here in full)",
    )


def _retryable(exc: AgentError) -> bool:
    if exc.kind in ("refused", "timeout", "protocol"):
        return True
    if exc.status is not None and exc.status >= 500:
        return not any(s in exc.detail for s in _FINAL_503)
    return False


async def file_report(
    client: AgentClient,
    nodes: Sequence[tuple[str, str]],
    report: DrillReport,
    *,
    who: str | None = None,
    retry_for_s: float = RETRY_FOR_S,
    retry_every_s: float = RETRY_EVERY_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Filed:
    """POST the report's record to the first node (id, agent URL) that takes it. Nodes that cannot answer now
    (down, no Raft leader yet) are retried for `retry_for_s`; a refusal (no or wrong token, a bad record, an agent
    without a mesh-wide history) ends it at once. Never raises for the agents' answers."""
    if not nodes:
        return Filed(ok=False, detail="no agent to file it with (the source lists none with an address)")
    record, trimmed = fit(drill_record(report, who or holder()))
    if report.fault.drill_id is not None:
        await _agent_record_in(client, nodes, record.id, report.fault.started_at, retry_for_s / 2, clock, sleep)
    deadline = clock() + retry_for_s
    last: dict[str, str] = {}
    while True:
        for node_id, url in nodes:
            try:
                await client.file_drill(url, record)
            except AgentError as exc:
                last[node_id] = exc.detail
                if not _retryable(exc):
                    by = f"refused by {node_id}: " if exc.status is not None else ""  # else ours: no token
                    return Filed(ok=False, detail=by + exc.detail, trimmed=trimmed)
                continue
            where = f"filed in the mesh history via {node_id}" + (f", without {trimmed}" if trimmed else "")
            return Filed(ok=True, via=node_id, detail=where, trimmed=trimmed)
        if clock() >= deadline:
            why = "; ".join(f"{n}: {d}" for n, d in last.items())
            return Filed(ok=False, detail=f"no agent took it within {retry_for_s:g} s ({why})", trimmed=trimmed)
        await sleep(retry_every_s)


async def _agent_record_in(
    client: AgentClient,
    nodes: Sequence[tuple[str, str]],
    drill_id: str,
    started_at: float,
    within_s: float,
    clock: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]],
) -> None:
    """Wait (at most `within_s`) for the record the agent files itself when its drill ends, so ours,
    on the same key, lands after it and is the one kept. Gives up quietly: then ours is filed anyway."""
    until = clock() + within_s
    while True:
        for _, url in nodes:
            try:
                history = await client.drill_history(url, since=started_at - 1)
            except AgentError:
                continue
            if any(r.id == drill_id for r in history):
                return
            break  # any node answers for the whole mesh: ask again after a pause
        if clock() >= until:
            return
        await sleep(RETRY_EVERY_S)


def filing_nodes(nodes: Sequence[Any], target: str) -> list[tuple[str, str]]:
    """Where to file, best first: nodes that are up and not the drill's target, then the rest with an agent."""
    with_agent = [n for n in nodes if n.agent_url]
    ranked = sorted(with_agent, key=lambda n: (n.state != "up", n.id == target, n.id))
    return [(n.id, n.agent_url) for n in ranked]
