"""Every drill of the mesh in one list (pure): the reports this x0dash saved, the mesh-wide drill history in the
replicated store (GET /drills/history, contracts §3/§7), and each agent's own drills (GET /drills, running and
past), merged by drill id; plus the series the trends plot draws (worst detect and repair per kind over wall
time)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from pathlib import Path

import msgspec

from dashboard import wire
from dashboard.drills.filing import record_id
from dashboard.drills.report import from_json
from dashboard.drills.scoring import DrillReport

# The agents' kind for a node-loss drill they make themselves.
_AGENT_KIND = {"kill-daemon": "node-loss"}


class DrillRow(msgspec.Struct, kw_only=True):
    id: str
    started_at: float
    kind: str
    target: str
    state: str  # active | reverted | aborted | failed | PASS | FAIL
    duration_s: float
    detect_s: float | None = None  # worst observer's, from a report
    repair_s: float | None = None
    seen_in: list[str] = []  # "report", "mesh history", "agent node-b"
    holder: str | None = None
    report: DrillReport | None = None
    report_path: str | None = None


def load_reports(reports_dir: Path, limit: int = 500) -> list[tuple[Path, DrillReport]]:
    """The newest `limit` readable reports in the directory (unreadable files are skipped, not fatal)."""
    out = []
    try:
        files = sorted(reports_dir.glob("drill-*.json"), reverse=True)[:limit]
    except OSError:
        return []
    for path in files:
        try:
            out.append((path, from_json(path.read_bytes())))
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            continue
    return out


def _worst(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def merge(
    reports: Sequence[tuple[Path, DrillReport]],
    history: Sequence[wire.DrillRecord],
    agents: dict[str, wire.DrillList | None],
    leases: Sequence[wire.DrillLease] = (),
) -> list[DrillRow]:
    """`leases`: drills known only from the mesh-wide lease (a fault another x0dash's source makes)."""
    rows: dict[str, DrillRow] = {}

    def row(key: str, **fields: object) -> DrillRow:
        found = rows.get(key)
        if found is None:
            found = rows[key] = DrillRow(id=key, **fields)  # type: ignore[arg-type]
        return found

    for path, r in reports:
        f = r.fault
        key = record_id(r)  # the id it has in the mesh history once filed (dashboard.drills.filing)
        got = row(
            key,
            started_at=f.started_at,
            kind=r.kind,
            target=r.target,
            state="PASS" if r.passed else "FAIL",
            duration_s=f.duration_s,
        )
        got.state = "PASS" if r.passed else "FAIL"
        got.report, got.report_path = r, str(path)
        got.detect_s = _worst(o.detect_s for o in r.observers)
        got.repair_s = _worst(o.repair_s for o in r.observers)
        got.seen_in.append("report")
    for rec in history:
        got = row(
            rec.id,
            started_at=rec.started_at,
            kind=_AGENT_KIND.get(rec.kind, rec.kind),
            target=rec.node_id,
            state=rec.state,
            duration_s=rec.duration_s,
        )
        got.holder = got.holder or rec.holder
        got.seen_in.append("mesh history")
        if got.report is None and rec.report is not None:
            try:
                got.report = msgspec.convert(rec.report, DrillReport)
            except msgspec.ValidationError:
                pass
            else:
                got.state = "PASS" if got.report.passed else "FAIL"
                got.detect_s = _worst(o.detect_s for o in got.report.observers)
                got.repair_s = _worst(o.repair_s for o in got.report.observers)
    for node_id, listed in sorted(agents.items()):
        if listed is None:
            continue
        for d in (*listed.active, *listed.past):
            got = row(
                d.id,
                started_at=d.started_at,
                kind=_AGENT_KIND.get(d.kind, d.kind),
                target=d.node_id,
                state=d.state,
                duration_s=d.duration_s,
            )
            if d.state == "active":
                got.state = "active"
            got.seen_in.append(f"agent {node_id}")
    for held in leases:
        got = row(
            held.lease_id, started_at=held.acquired_at, kind=held.kind, target=held.node_id, state="active",
            duration_s=0.0,
        )  # fmt: skip
        got.holder = got.holder or held.holder
        got.seen_in.append("mesh lease")
    return sorted(rows.values(), key=lambda r: r.started_at, reverse=True)


def trend_series(rows: Sequence[DrillRow]) -> dict[str, tuple[list[float], list[float], list[float]]]:
    """kind -> (started_at, worst detect s, worst repair s) of the drills with a report, oldest first."""
    series: dict[str, tuple[list[float], list[float], list[float]]] = {}
    for r in sorted(rows, key=lambda r: r.started_at):
        if r.detect_s is None or r.repair_s is None:
            continue
        at, detect, repair = series.setdefault(r.kind, ([], [], []))
        at.append(r.started_at)
        detect.append(r.detect_s)
        repair.append(r.repair_s)
    return series


# Tick labels as fine as the plotted span needs: (span below, strftime format).
_TICK_FORMATS = ((600.0, "%H:%M:%S"), (86400.0, "%H:%M"), (60 * 86400.0, "%m-%d %H:%M"))


def time_ticks(lo: float, hi: float, count: int) -> tuple[list[float], list[str]]:
    """Up to `count` evenly spaced ticks over [lo, hi] (unix seconds, labelled in local time) for the trends'
    wall-time axis."""
    span = hi - lo
    if span <= 0:
        return [lo], [dt.datetime.fromtimestamp(lo).strftime("%m-%d %H:%M")]
    fmt = next((f for below, f in _TICK_FORMATS if span < below), "%Y-%m-%d")
    n = max(2, count)
    ticks = [lo + span * i / (n - 1) for i in range(n)]
    return ticks, [dt.datetime.fromtimestamp(t).strftime(fmt) for t in ticks]
