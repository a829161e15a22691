"""Every PromQL expression we ship (rules, alerts, dashboard panels and variables), where it comes from, and the
metric/label vocabulary it may use. Shared by the static checks and the live ones."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .promql import expand_grafana, extract

REPO = Path(__file__).resolve().parents[2]
PROM_DIR = REPO / "prometheus"
RULE_FILES = (PROM_DIR / "rules" / "x0-records.yml", PROM_DIR / "rules" / "x0-alerts.yml")
PROM_TESTS = PROM_DIR / "tests" / "x0-alerts.test.yml"
LOCAL_CONFIG = PROM_DIR / "prometheus.yml"
NOMAD_CONFIG = PROM_DIR / "prometheus-nomad.yml"
GRAFANA_DIR = REPO / "grafana"
DASHBOARDS = tuple(sorted((GRAFANA_DIR / "dashboards").glob("*.json")))
CONTRACTS = REPO / "docs" / "contracts.md"

SCRAPE_JOB = "x0-agent"
# Labels Prometheus attaches to every agent series (file_sd labels + job/instance); contracts §5.
TARGET_LABELS = frozenset({"job", "instance", "node_id", "mesh"})
# Series Prometheus writes itself for each target or rule, not the agents.
PROMETHEUS_SERIES = {"up": set(), "ALERTS": {"alertname", "alertstate", "severity"}}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


@dataclass(frozen=True)
class Expr:
    kind: str  # "record", "alert", "panel", "variable"
    where: str  # human pointer: file and rule/panel
    expr: str  # as written (Grafana variables not expanded)
    name: str = ""  # record/alert name

    def expanded(self, values: Mapping[str, str]) -> str:
        return expand_grafana(self.expr, values) if self.kind in ("panel", "variable") else self.expr


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rule_docs() -> list[dict[str, Any]]:
    return [load_yaml(p) for p in RULE_FILES]


def rules() -> list[dict[str, Any]]:
    return [r for doc in rule_docs() for g in doc["groups"] for r in g["rules"]]


def rule_exprs() -> list[Expr]:
    out = []
    for path, doc in zip(RULE_FILES, rule_docs(), strict=True):
        for group in doc["groups"]:
            for r in group["rules"]:
                kind = "record" if "record" in r else "alert"
                name = r[kind]
                out.append(Expr(kind, f"{path.name}: {kind} {name}", r["expr"], name))
    return out


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in DASHBOARDS}


def iter_panels(panels: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    for p in panels:
        yield p
        yield from iter_panels(p.get("panels", []))  # collapsed rows keep their panels inside


_LABEL_VALUES = re.compile(r"^\s*label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)\s*$", re.S)


def variable_query(var: dict[str, Any]) -> tuple[str, str] | None:
    """(selector, label) of a `label_values(selector, label)` query variable; None for other variable types."""
    if var.get("type") != "query":
        return None
    q = var.get("query")
    text = q.get("query", "") if isinstance(q, dict) else str(q or "")
    m = _LABEL_VALUES.match(text)
    if m is None or not m.group("selector"):
        raise ValueError(
            f"variable {var.get('name')!r}: only label_values(<selector>, <label>) is supported: {text!r}"
        )
    return m.group("selector"), m.group("label")


def dashboard_exprs() -> list[Expr]:
    out = []
    for fname, d in dashboards().items():
        for p in iter_panels(d.get("panels", [])):
            for t in p.get("targets", []):
                if "expr" in t:
                    out.append(
                        Expr("panel", f"{fname}: panel {p.get('title')!r} target {t.get('refId')}", t["expr"])
                    )
        for var in d.get("templating", {}).get("list", []):
            vq = variable_query(var)
            if vq is not None:
                out.append(Expr("variable", f"{fname}: variable {var['name']}", vq[0]))
    return out


def all_exprs() -> list[Expr]:
    return rule_exprs() + dashboard_exprs()


def variable_labels() -> list[tuple[str, str, str]]:
    """(where, selector, label) for every label_values variable: the label must exist on the selector's series."""
    out = []
    for fname, d in dashboards().items():
        for var in d.get("templating", {}).get("list", []):
            vq = variable_query(var)
            if vq is not None:
                out.append((f"{fname}: variable {var['name']}", vq[0], vq[1]))
    return out


_THRESHOLD = re.compile(r"\s*(?:==|!=|>=|<=|>|<)\s*(?:bool\s+)?[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.])")


def without_thresholds(expr: str) -> str:
    """An alert's condition without its comparisons against constants (`x > 6` → `x`), for the "has data" check:
    a healthy mesh must still produce the series the condition would filter."""
    return _THRESHOLD.sub("", expr)


def contract_metrics(text: str | None = None) -> dict[str, set[str]]:
    """metric name → labels, from the table in docs/contracts.md §5; histograms expand to _bucket/_sum/_count."""
    text = text if text is not None else CONTRACTS.read_text()
    section = text.split("## 5.", 1)[1].split("\n## ", 1)[0]
    out: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not cells[0].startswith("`x0_"):
            continue
        names = re.findall(r"`(x0_\w+)`", cells[0])
        labels = set(re.findall(r"`(\w+)`", cells[2]))
        for name in names:
            if cells[1] == "histogram":
                out[name + "_bucket"] = labels | {"le"}
                out[name + "_sum"] = set(labels)
                out[name + "_count"] = set(labels)
            else:
                out[name] = set(labels)
    if not out:
        raise ValueError("no metrics found in docs/contracts.md §5")
    return out


def recording_rule_labels() -> dict[str, set[str]]:
    """Labels of each recording rule's output: its aggregation's `by` list (`le` is consumed by the quantile)."""
    out = {}
    for e in rule_exprs():
        if e.kind == "record":
            out[e.name] = extract(e.expr).grouping - {"le"}
    return out


def check_refs(expr: str, vocabulary: Mapping[str, set[str]]) -> list[str]:
    """Problems with the metrics and labels an expression uses, given metric → existing labels."""
    refs = extract(expr)
    problems = []
    known_labels: set[str] = set(refs.created_labels)
    for sel in refs.selectors:
        if sel.metric is None:
            problems.append(f"selector without a metric name: {sel}")
            continue
        if sel.metric not in vocabulary:
            problems.append(f"unknown metric {sel.metric}")
            continue
        have = vocabulary[sel.metric]
        known_labels |= have
        for label in sorted(sel.labels() - have):
            problems.append(f"{sel.metric} has no label {label!r} (it has {sorted(have)})")
    if not problems:
        for label in sorted((refs.grouping | refs.source_labels) - known_labels):
            problems.append(f"label {label!r} is on none of {sorted(refs.metrics)}")
    return problems


def grafana_values(mesh: str, node: str, path: str) -> dict[str, str]:
    """Values for the dashboards' Grafana variables when running their queries outside Grafana."""
    return {
        "datasource": "x0-prometheus",
        "mesh": mesh,
        "node": node,
        "path": path,
        "__rate_interval": "1m",
        "__interval": "15s",
        "__range": "1h",
    }


def observe_module() -> Any:
    """prometheus/observe.py (a script, not a package module): its `Prometheus` process helper and renderers."""
    import importlib.util
    import sys

    name = "x0_observe"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, PROM_DIR / "observe.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def render_test_config(
    directory: Path, sd_file: Path, interval: str = "1s", fast_alerts: Mapping[str, str] | None = None
) -> Path:
    """The shipped local config with a test scrape/evaluation interval and the mesh's own file_sd file, and the
    shipped rules with the `for` of the alerts in `fast_alerts` replaced (expressions untouched), written under
    `directory`. The other alerts keep their real `for`, so a healthy mesh must not fire them."""
    fast_alerts = fast_alerts or {}
    cfg = load_yaml(LOCAL_CONFIG)
    cfg["global"].update(scrape_interval=interval, scrape_timeout=interval, evaluation_interval=interval)
    (sd,) = cfg["scrape_configs"][0]["file_sd_configs"]
    sd["files"] = [str(sd_file)]
    rule_paths = []
    for path, doc in zip(RULE_FILES, rule_docs(), strict=True):
        for group in doc["groups"]:
            for rule in group["rules"]:
                if rule.get("alert") in fast_alerts:
                    rule["for"] = fast_alerts[rule["alert"]]
        out = directory / "rules" / path.name
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(yaml.safe_dump(doc, sort_keys=False))
        rule_paths.append(str(out))
    cfg["rule_files"] = rule_paths
    config = directory / "prometheus-test.yml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return config
