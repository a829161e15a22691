"""A node's MAPE-K knowledge driven tick by tick with hand-written observations (no sockets).

`SimNode.tick()` runs the real Monitor -> Analyze -> Plan -> (recorded) Execute sequence of the loop, with the
daemon and the probes replaced by the facts the test states.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from agent.mapek.analyze import analyze
from agent.mapek.knowledge import (
    Finding,
    Knowledge,
    LinkSample,
    Observation,
    PlannedAction,
    Probe,
    Reconciled,
    Thresholds,
)
from agent.mapek.plan import Plan, plan
from agent.mapek.schemas import Outcome
from agent.members import Members, parse_members

T0 = 1_000_000.0


def members(
    ids: Iterable[str],
    links: list[list[str]] | None = None,
    versions: Mapping[str, str] | None = None,
) -> Members:
    versions = versions or {}
    doc = {
        "mesh": "sim",
        "members": [
            {
                "node_id": i,
                "agent_url": f"http://10.9.0.{n + 1}:8080",
                "listen_uri": f"tls://10.9.0.{n + 1}:12345",
                "public_key": f"{n + 1:064x}",
                "api_version": versions.get(i),
            }
            for n, i in enumerate(ids)
        ],
    }
    if links is not None:
        doc["links"] = links
    return parse_members(json.dumps(doc).encode())


@dataclass
class TickResult:
    findings: list[Finding]
    reconciled: Reconciled
    plan: Plan

    def kinds(self, subject: str | None = None) -> set[str]:
        return {f.kind for f in self.findings if subject is None or f.subject == subject}

    def actions(self, action: str | None = None, executed: bool | None = None) -> list[PlannedAction]:
        return [
            a
            for a in self.plan.actions
            if (action is None or a.action == action) and (executed is None or (a.skip is None) == executed)
        ]


class SimNode:
    def __init__(
        self,
        me: str,
        mesh: Members,
        degree: int = 2,
        thresholds: Thresholds | None = None,
        api: str = "0.4",
        started: float | None = None,
    ) -> None:
        self.now = T0
        self.kn = Knowledge(
            me, mesh, thresholds or Thresholds(), degree, started_at=T0 - 100 if started is None else started
        )
        self.api = api
        self.bytes: dict[str, int] = {}
        # Outcome execute reports for an executed action (default: the daemon accepted it).
        self.outcome: Callable[[PlannedAction], Outcome] = lambda a: "ok"

    def tick(
        self,
        up: Iterable[str],
        *,
        overlay: Mapping[str, bool | float] | None = None,
        underlay: Mapping[str, bool] | None = None,
        dial: Mapping[str, bool] | None = None,
        quiet: Iterable[str] = (),
        daemon_ok: bool = True,
        health: Mapping[str, Mapping[str, object]] | None = None,
        latency_ms: Mapping[str, float] | None = None,
        dt: float = 1.0,
    ) -> TickResult:
        """One tick. `up`: members with a link up. `overlay`: probe result per member (True/False, or an RTT
        in seconds for a slow success); members not named answer fast. `quiet`: up links that receive no bytes
        during the probes. `dial`: peering-port probe per member."""
        self.now += dt
        now = self.now
        up = set(up)
        overlay = dict(overlay or {})
        underlay = dict(underlay or {})
        latency_ms = latency_ms or {}
        before = {m: LinkSample(member=m, up=True, bytes_recvd=self.bytes.setdefault(m, 1000)) for m in up}
        for m in up:
            if m not in quiet:
                self.bytes[m] += 100
        after = {
            m: LinkSample(member=m, up=True, bytes_recvd=self.bytes[m], latency_ms=latency_ms.get(m)) for m in up
        }
        probes: list[Probe] = []
        for m in self.kn.others():
            result = overlay.get(m, True)
            ok = result is not False
            rtt = result if isinstance(result, float) else 0.005
            probes.append(
                Probe(
                    member=m,
                    path="overlay",
                    ok=ok,
                    at=now,
                    rtt_s=rtt if ok else None,
                    error=None if ok else "timeout",
                )
            )
            u_ok = underlay.get(m, True)
            h = (health or {}).get(m, {})
            probes.append(
                Probe(
                    member=m,
                    path="underlay",
                    ok=u_ok,
                    at=now,
                    rtt_s=0.002 if u_ok else None,
                    error=None if u_ok else "connection refused",
                    daemon_up=h.get("daemon_up", True) if u_ok else None,  # type: ignore[arg-type]
                    api_version=h.get("api_version") if u_ok else None,  # type: ignore[arg-type]
                )
            )
        for m, ok in (dial or {}).items():
            probes.append(Probe(member=m, path="dial", ok=ok, at=now, error=None if ok else "refused"))
        obs = Observation(
            at=now,
            daemon_ok=daemon_ok,
            daemon_error=None if daemon_ok else "no admin socket",
            api_version=self.api if daemon_ok else None,
            links=after if daemon_ok else {},
            links_before=before if daemon_ok else None,
            probes=probes,
        )
        self.kn.observe(obs)
        findings = analyze(obs, self.kn)
        rec = self.kn.reconcile(findings, now)
        p = plan(findings, self.kn, now)
        self.kn.accepting = dict(p.accepting)
        for a in p.actions:
            if a.skip is not None:
                self.kn.apply_outcome(a, "skipped", a.skip, now)
            else:
                self.kn.apply_outcome(a, self.outcome(a), "done", now)
        return TickResult(findings=findings, reconciled=rec, plan=p)
