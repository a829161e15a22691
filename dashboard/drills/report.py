"""Drill reports as JSON (for machines and CI) and Markdown (for people), saved under a reports directory."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import msgspec

from dashboard.drills.scoring import DrillReport, FaultWindow, ObserverScore

DEFAULT_REPORTS_DIR = Path(os.environ.get("X0DASH_REPORTS", "reports"))


def to_json(report: DrillReport) -> bytes:
    return msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n"


def from_json(data: bytes | str) -> DrillReport:
    return msgspec.json.decode(data, type=DrillReport)


def _s(value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f} s" if signed else f"{value:.2f} s"


def _stamp(t: float | None) -> str:
    if t is None:
        return "-"
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _back_line(f: FaultWindow) -> list[str]:
    """For faults the source undoes itself (Nomad): when the node was back on a running allocation."""
    if f.back_at is not None:
        return [f"- back: {f.back_what}, {f.back_at - f.started_at:.2f} s after the fault (dashboard clock)"]
    return ["- back: NEVER (no running allocation with a healthy agent)"] if f.source_brings_back else []


def _worst(report: DrillReport, attr: str) -> ObserverScore | None:
    scored = [o for o in report.observers if getattr(o, attr) is not None]
    return max(scored, key=lambda o: getattr(o, attr)) if scored else None


def summary_line(report: DrillReport) -> str:
    """The one line a manager reads first: the fault and its length, worst detect, worst repair, the verdict and
    the SLO that failed."""
    f, slo = report.fault, report.slo
    length = (f.ended_at - f.started_at) if f.ended_at is not None else None
    parts = [f"{f.kind} on {f.target}, fault {_s(length) if length is not None else 'never reverted'}"]
    detect, repair = _worst(report, "detect_s"), _worst(report, "repair_s")
    parts.append(f"worst detect {_s(detect.detect_s)} ({detect.observer})" if detect else "nobody detected it")
    parts.append(f"worst repair {_s(repair.repair_s, signed=True)} ({repair.observer})" if repair else "no repair")
    if report.passed:
        verdict = f"PASS (SLOs: detect <= {slo.detect_s:g} s, repair <= {slo.repair_s:g} s)"
    else:
        missed = []
        if any(o.detect_s is None or not o.detect_ok for o in report.observers) or not report.observers:
            missed.append(f"detect <= {slo.detect_s:g} s")
        if any(o.detect_s is not None and not o.repair_ok for o in report.observers):
            missed.append(f"repair <= {slo.repair_s:g} s")
        if not report.recovered:
            missed.append(f"back to steady state within {slo.recover_timeout_s:g} s")
        if f.aborted:
            missed.append("aborted by the operator")
        reason = "; ".join(missed) or (report.failures[0] if report.failures else "")
        verdict = f"FAIL (SLO missed: {reason})" if missed else f"FAIL ({reason})"
    return f"{'; '.join(parts)}: {verdict}"


def why_no_action(report: DrillReport, o: ObserverScore) -> str:
    """Why an observer has no heal action, from what it recorded (never a guess about intent)."""
    if o.actions:
        return ""
    target = report.fault.target
    if o.detected_at is None:
        return "it never detected the fault, so it had nothing to heal"
    if o.repair_s is not None and o.repair_s < 0:
        return f"its incidents about {target} resolved {-o.repair_s:.2f} s before the fault ended: nothing to do"
    if o.repair_s is not None:
        return (
            f"MAPE-K recorded no action; its incidents about {target} resolved {o.repair_s:.2f} s after the fault "
            "was reverted, by the revert itself"
        )
    return f"MAPE-K recorded no action and its incidents about {target} are still open"


def _environment(report: DrillReport) -> list[str]:
    env = report.environment
    if env is None:  # a version-1 report
        return [f"- source: {report.source}"]
    agents = ", ".join(env.agent_versions) or "unknown"
    apis = ", ".join(env.yggdrasil_apis) or "unknown"
    return [
        f"- source: {env.source}",
        f"- topology: {env.nodes} nodes, {env.planned_links} planned links",
        f"- x0-agent {agents}; Yggdrasil admin API {apis}"
        + (f"; x0dash {env.dashboard_version}" if env.dashboard_version else ""),
    ]


def fmt_t(t_s: float) -> str:
    return f"t{t_s:+.2f} s"


def to_markdown(report: DrillReport) -> str:
    f, slo = report.fault, report.slo
    verdict = "PASS" if report.passed else "FAIL"
    lines = [
        f"# Drill {f.kind} on {f.target}: {verdict}",
        "",
        f"**{summary_line(report)}**",
        "",
        "## Environment",
        "",
        *_environment(report),
        f"- fault: {f.method}, {f.duration_s:g} s requested"
        + (f", drill id `{f.drill_id}`" if f.drill_id else "")
        + (" (aborted)" if f.aborted else ""),
        f"- injected {_stamp(f.started_at)}, reverted {_stamp(f.ended_at)}"
        + ("" if f.clock == "agent" else " (dashboard clock: the source made this fault)"),
        *_back_line(f),
        f"- SLOs: detect <= {slo.detect_s:g} s, repair <= {slo.repair_s:g} s after the fault ends, "
        f"back to steady state within {slo.recover_timeout_s:g} s; mesh-wide first detection <= "
        f"{slo.first_detect:g} s, full awareness <= {slo.detect_s:g} s",
        f"- mesh-wide: first detection {_s(report.first_detect_s)}, full awareness {_s(report.full_awareness_s)}"
        + (" (some observer with a path never detected it)" if report.full_awareness_s is None else ""),
        f"- report format version {report.version}",
        "",
        "## Per observer",
        "",
        "| observer | detected by | time to detect | time to repair | incidents | heal actions | result |",
        "|---|---|---|---|---|---|---|",
    ]
    blind = {n.observer: n.reason for n in report.no_path}
    for o in report.observers:
        ok = "ok" if o.detect_ok and o.repair_ok else "FAIL"
        if o.observer in blind:
            ok = f"no path ({blind[o.observer]})"
        note = f" ({o.note})" if o.note else ""
        lines.append(
            f"| {o.observer} | {o.detected_by or '-'} | {_s(o.detect_s)} | {_s(o.repair_s, signed=True)} "
            f"| {o.incidents} | {o.actions} | {ok}{note} |"
        )
    silent = [(o, why_no_action(report, o)) for o in report.observers if not o.actions]
    if silent:
        lines += ["", "Why no heal action:", ""]
        lines += [f"- {o.observer}: {why}" for o, why in silent]
    if report.guards:
        lines += ["", "Guards that held back heal actions:"]
        lines += [
            f"- {g.observer}: {g.action} {g.target} at {g.at - f.started_at:+.2f} s, {g.guard}: {g.reason}"
            for g in report.guards
        ]
    after = report.after.summary() if report.after else "never measured"
    lines += [
        "",
        "Time to detect: fault injected → the observer's first incident about the target. Time to repair: fault "
        "ended → the observer's last incident about the target resolved (negative: healed during the fault). "
        "Both from the agents' own timestamps.",
        "",
        "## Steady state",
        "",
        f"- before: {report.before.summary()}",
        f"- after: {after}",
        f"- recovery: {_s(report.recovery_s)} after the fault ended"
        + (" (agents' records)" if report.recovery_s is not None else ""),
        f"- back to steady state: {'yes' if report.recovered else 'NO'}",
    ]
    if report.after and report.after.links_not_up:
        lines.append(f"- links not up after: {', '.join(report.after.links_not_up)}")
    if report.consistency is not None:
        c = report.consistency
        gap = c.unavailable_s
        lines += [
            "",
            "## Store workload (Raft)",
            "",
            f"- leader when the drill started: {c.old_leader or '-'}",
            *(
                f"- {obs}: new leader {_s(took)} after the fault"
                if took is not None
                else f"- {obs}: NO new leader"
                for obs, took in sorted(c.new_leader_after_s.items())
            ),
            f"- write unavailability: {_s(gap)} (last acknowledged write before the fault → first after it)",
            f"- consistency: {c.verdict.summary()}",
        ]
    lines += ["", "## Timeline", "", "| t | node | event |", "|---|---|---|"]
    for e in sorted(report.timeline, key=lambda e: e.t_s):
        lines.append(f"| {fmt_t(e.t_s)} | {e.node or ''} | {e.what} |")
    lines += ["", "## Verdict", ""]
    if report.passed:
        lines.append("PASS: every observer detected and repaired within the SLOs and the mesh is whole again.")
    else:
        lines += [f"- {failure}" for failure in report.failures]
    return "\n".join(lines) + "\n"


def json_schema() -> dict[str, object]:
    """The JSON Schema of the saved report (docs/drill-report.schema.json is this, committed)."""
    return msgspec.json.schema(DrillReport)


def report_basename(report: DrillReport) -> str:
    when = dt.datetime.fromtimestamp(report.fault.started_at, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"drill-{when}-{report.kind}-{report.target}"


def save(report: DrillReport, reports_dir: Path | None, extra: Path | None = None) -> list[Path]:
    """Write `<dir>/<name>.json` and `.md` (unless `reports_dir` is None); `extra` (the --report FILE) gets
    Markdown when it ends in .md and JSON otherwise. Returns every path written."""
    written: list[Path] = []
    if reports_dir is not None:
        reports_dir.mkdir(parents=True, exist_ok=True)
        base = reports_dir / report_basename(report)
        written += [base.with_suffix(".json"), base.with_suffix(".md")]
        written[0].write_bytes(to_json(report))
        written[1].write_text(to_markdown(report))
    if extra is not None:
        extra.parent.mkdir(parents=True, exist_ok=True)
        if extra.suffix == ".md":
            extra.write_text(to_markdown(report))
        else:
            extra.write_bytes(to_json(report))
        written.append(extra)
    return written


if __name__ == "__main__":  # python -m dashboard.drills.report > docs/drill-report.schema.json
    import json
    import sys

    json.dump(json_schema(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
