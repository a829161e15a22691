"""The drill report as a manager reads it (issue 12): one-line summary first, the environment, one sorted timeline
with times as "t+1.2 s", why an observer has no heal action; the JSON versioned, its schema committed."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec

from dashboard.drills.report import from_json, json_schema, summary_line, to_json, to_markdown
from dashboard.drills.scoring import REPORT_VERSION, Environment

from .record_fixtures import REPORT_FILE

SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "drill-report.schema.json"


def recorded() -> object:
    return from_json(REPORT_FILE.read_bytes())


def test_summary_line_first() -> None:
    report = recorded()  # a real 5 s blackhole on node-b: detected in ~1.1 s, repaired ~2.6 s after (SLO 2 s)
    line = summary_line(report)
    assert line.startswith("blackhole on node-b, fault 5.05 s; worst detect 1.14 s (node-a); worst repair +2.59 s")
    assert line.endswith("FAIL (SLO missed: repair <= 2 s)")
    md = to_markdown(report).splitlines()
    assert md[0] == "# Drill blackhole on node-b: FAIL" and md[2] == f"**{line}**"


def test_environment_timeline_and_why_no_heal_action() -> None:
    env = Environment(
        source="local netns mesh local-6845 (3 nodes)",
        nodes=3,
        planned_links=3,
        agent_versions=["0.1.0"],
        yggdrasil_apis=["0.4"],
        dashboard_version="0.1.0",
    )
    report = msgspec.structs.replace(recorded(), environment=env, version=REPORT_VERSION)
    md = to_markdown(report)
    assert "- topology: 3 nodes, 3 planned links" in md
    assert "- x0-agent 0.1.0; Yggdrasil admin API 0.4; x0dash 0.1.0" in md
    rows = [ln for ln in md.split("## Timeline", 1)[1].splitlines() if ln.startswith("| t+")]
    times = [float(r.split("|")[1].strip().removeprefix("t").removesuffix(" s")) for r in rows]
    assert len(rows) == len(report.timeline) and times == sorted(times)
    assert "Why no heal action:" in md
    assert "- node-a: MAPE-K recorded no action; its incidents about node-b resolved 2.59 s after" in md


def test_json_is_versioned_and_old_reports_still_read() -> None:
    old = json.loads(REPORT_FILE.read_text())
    assert old["version"] == 1 and "environment" not in old
    v1 = from_json(REPORT_FILE.read_bytes())
    assert v1.environment is None and "- source:" in to_markdown(v1)
    v2 = msgspec.structs.replace(v1, version=REPORT_VERSION)
    assert from_json(to_json(v2)) == v2 and REPORT_VERSION == 3  # 3: issue 10 mesh-wide fields


def test_committed_schema_is_the_reports_own() -> None:
    # After a change to DrillReport: python -m dashboard.drills.report > docs/drill-report.schema.json
    assert json.loads(SCHEMA.read_text()) == json.loads(json.dumps(json_schema()))
