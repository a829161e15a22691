"""Prometheus configs and rules: promtool clean, every alert unit-tested, every expression within the metric
contract, and the Nomad relabeling checked by promtool's own service-discovery run."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.localmesh.files import sd_path_for
from tests.nomad import jobspec as js

from .catalog import (
    LOCAL_CONFIG,
    NOMAD_CONFIG,
    PROM_DIR,
    PROM_TESTS,
    PROMETHEUS_SERIES,
    REPO,
    RULE_FILES,
    SCRAPE_JOB,
    TARGET_LABELS,
    all_exprs,
    check_refs,
    contract_metrics,
    grafana_values,
    load_yaml,
    recording_rule_labels,
    rule_exprs,
    rules,
    variable_labels,
    without_thresholds,
)

pytestmark = pytest.mark.prometheus

# The alert list, by the name we gave each one.
REQUIRED_ALERTS = {
    "node down": "X0NodeDown",
    "mesh partitioned": "X0MeshPartitioned",
    "link silent": "X0LinkSilent",
    "MAPE-K thrashing": "X0MapekThrashing",
    "heal failing": "X0HealFailing",
    "agent API p99 high": "X0AgentApiLatencyHigh",
    "drill SLO breach": "X0DrillSloBreach",
    "no Raft leader": "X0NoLeader",
    "Raft quorum at risk": "X0RaftQuorumAtRisk",
}
# <nomad_sd_config> fields (reference/nomad.md §4) plus the <http_config> ones we might need.
NOMAD_SD_FIELDS = {
    "allow_stale",
    "namespace",
    "refresh_interval",
    "region",
    "server",
    "tag_separator",
    "authorization",
    "basic_auth",
    "oauth2",
    "tls_config",
    "proxy_url",
    "follow_redirects",
}
NOMAD_SERVICE_SAMPLE = Path("/work/shared/reference/nomad-api/service.json")
MESH_JOB = js.JOB_FILE


def run(argv: list[str], cwd: Path = PROM_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def static_vocabulary() -> dict[str, set[str]]:
    vocab = {name: labels | TARGET_LABELS for name, labels in contract_metrics().items()}
    vocab["up"] = set(TARGET_LABELS)
    vocab["ALERTS"] = PROMETHEUS_SERIES["ALERTS"] | TARGET_LABELS
    vocab.update(recording_rule_labels())
    return vocab


# --------------------------------------------------------------------------------------------------- promtool


def test_promtool_check_config_local(require_prometheus: tuple[str, str]) -> None:
    res = run([require_prometheus[1], "check", "config", LOCAL_CONFIG.name])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_promtool_check_rules(require_prometheus: tuple[str, str]) -> None:
    res = run([require_prometheus[1], "check", "rules", *map(str, RULE_FILES)])
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("SUCCESS") == len(RULE_FILES)


def test_promtool_unit_tests(require_prometheus: tuple[str, str]) -> None:
    res = run([require_prometheus[1], "test", "rules", str(PROM_TESTS)])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    alerts = {r["alert"] for r in rules() if "alert" in r}
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in load_yaml(PROM_TESTS)["tests"]:
        for t in case.get("alert_rule_test", []):
            (fires if t.get("exp_alerts") else quiet).add(t["alertname"])
    assert alerts - fires == set(), "alerts never shown firing in prometheus/tests"
    assert alerts - quiet == set(), "alerts never shown staying quiet in prometheus/tests"
    assert (fires | quiet) - alerts == set(), "unit tests for alerts that do not exist"


def test_required_alerts_exist_with_severity_and_runbook() -> None:
    by_name = {r["alert"]: r for r in rules() if "alert" in r}
    missing = {what: name for what, name in REQUIRED_ALERTS.items() if name not in by_name}
    assert missing == {}
    for name, r in by_name.items():
        assert r["labels"]["severity"] in ("critical", "warning"), name
        for key in ("summary", "description", "runbook"):
            assert len(r["annotations"].get(key, "")) > 20, f"{name}: {key} too short or missing"


def test_expressions_parse_in_prometheus(require_prometheus: tuple[str, str], tmp_path: Path) -> None:
    """Dashboard queries go through promtool's parser too, by posing as recording rules."""
    values = grafana_values("m", "node-a", "overlay")
    doc = {
        "groups": [
            {
                "name": "all",
                "rules": [
                    {"record": f"x0_check:expr_{i}", "expr": e.expanded(values)} for i, e in enumerate(all_exprs())
                ],
            }
        ]
    }
    path = tmp_path / "all.yml"
    path.write_text(yaml.safe_dump(doc))
    res = run([require_prometheus[1], "check", "rules", str(path)])
    assert res.returncode == 0, res.stdout + res.stderr


# ------------------------------------------------------------------------------------------- metric contract


def test_every_expression_uses_contract_metrics_and_labels() -> None:
    vocab = static_vocabulary()
    values = grafana_values("m", "node-a", "overlay")
    problems = {e.where: p for e in all_exprs() if (p := check_refs(e.expanded(values), vocab))}
    assert problems == {}
    for where, selector, label in variable_labels():
        assert check_refs(selector, vocab) == [], where
        metric = re.match(r"\w+", selector).group()  # type: ignore[union-attr]
        assert label in vocab[metric], f"{where}: {metric} has no label {label}"


def test_contract_check_catches_a_wrong_name_and_a_wrong_label() -> None:
    vocab = static_vocabulary()
    assert check_refs("rate(x0_peer_recv_bytes_total[5m])", vocab) == ["unknown metric x0_peer_recv_bytes_total"]
    assert check_refs('x0_peers_up{peer="node-b"}', vocab)[0].startswith("x0_peers_up has no label 'peer'")
    assert check_refs("sum by (route) (x0_peers_up)", vocab) == ["label 'route' is on none of ['x0_peers_up']"]


# ----------------------------------------------------------------------------------------------- scrape configs


def test_shipped_configs_scrape_every_15s_in_one_job() -> None:
    for path in (LOCAL_CONFIG, NOMAD_CONFIG):
        cfg = load_yaml(path)
        assert cfg["global"]["scrape_interval"] == "15s", path.name
        assert [j["job_name"] for j in cfg["scrape_configs"]] == [SCRAPE_JOB], path.name
        rule_paths = {(path.parent / r).resolve() for r in cfg["rule_files"]}
        assert rule_paths == {p.resolve() for p in RULE_FILES}, path.name


def test_local_config_reads_the_file_sd_that_just_mesh_writes() -> None:
    job = load_yaml(LOCAL_CONFIG)["scrape_configs"][0]
    files = [(LOCAL_CONFIG.parent / f).resolve() for sd in job["file_sd_configs"] for f in sd["files"]]
    # `just mesh` runs `x0-agent local-mesh --inventory run/inventory.json`.
    assert files == [sd_path_for(REPO / "run" / "inventory.json").resolve()]


def test_grafana_datasource_interval_matches_scrape_interval() -> None:
    ds = load_yaml(REPO / "grafana" / "provisioning" / "datasources" / "x0-prometheus.yml")["datasources"]
    assert [d["jsonData"]["timeInterval"] for d in ds] == [load_yaml(LOCAL_CONFIG)["global"]["scrape_interval"]]


# ------------------------------------------------------------------------------------------------ Nomad variant


def mesh_job() -> dict[str, Any]:
    doc = js.load(MESH_JOB)
    name, _ = js.job_block(doc)
    return {"locals": js.locals_of(doc), "job": name}


def normalize_node_name(raw: str) -> str:
    """The mesh job's NODE_ID pipeline (local.node_id: toLower | regexReplaceAll "[^a-z0-9-]+" "-" |
    regexReplaceAll "^-+" "" | printf "%.63s"), in Python."""
    return re.sub(r"^-+", "", re.sub(r"[^a-z0-9-]+", "-", raw.lower()))[:63]


def nomad_sd_labels(reg: dict[str, Any], separator: str = ",") -> dict[str, str]:
    """The target Prometheus' nomad SD builds from one `/v1/service/:name` registration
    (prometheus discovery/nomad/nomad.go refresh())."""
    labels = {
        "__meta_nomad_address": reg["Address"],
        "__meta_nomad_dc": reg["Datacenter"],
        "__meta_nomad_node_id": reg["NodeID"],
        "__meta_nomad_namespace": reg["Namespace"],
        "__meta_nomad_service_address": reg["Address"],
        "__meta_nomad_service_id": reg["ID"],
        "__meta_nomad_service_port": str(reg["Port"]),
        "__meta_nomad_service": reg["ServiceName"],
    }
    if reg["Tags"]:
        labels["__meta_nomad_tags"] = separator + separator.join(reg["Tags"]) + separator
    return labels


def test_nomad_sd_config_uses_only_documented_fields() -> None:
    job = load_yaml(NOMAD_CONFIG)["scrape_configs"][0]
    (sd,) = job["nomad_sd_configs"]
    assert set(sd) <= NOMAD_SD_FIELDS
    assert sd["server"].startswith("http")


def test_nomad_relabeling_keeps_only_mesh_agents_with_node_labels(
    require_prometheus: tuple[str, str], tmp_path: Path
) -> None:
    """Debian's Prometheus is built without Nomad SD (08-Disable_nomad.patch), so the discovery step is replayed:
    registrations shaped like /v1/service/:name become the __meta_nomad_* labels Nomad SD would produce, and
    promtool applies our relabel_configs to them."""
    if not MESH_JOB.exists():
        pytest.skip("nomad/mesh.nomad.hcl not there yet")
    job = mesh_job()
    agent_service, peer_service = job["locals"]["agent_service"], job["locals"]["peer_service"]
    other = json.loads(NOMAD_SERVICE_SAMPLE.read_text())  # another job's service: must be dropped
    template = other[0]
    raw_names = ["node-0", "Worker_01.Example.com", "--Edge--Node-"]
    ours = []
    for i, raw in enumerate(raw_names):
        for service, port in ((agent_service, 21000 + i), (peer_service, 22000 + i)):
            ours.append(
                template
                | {
                    "ServiceName": service,
                    "JobID": job["job"],
                    "Port": port,
                    "Address": f"10.0.0.{i + 1}",
                    "NodeID": f"node-uuid-{i}",
                    "Datacenter": "dc1",
                    "ID": f"_nomad-task-alloc{i}-x-{service}-p",
                    "Tags": [job["job"], f"x0-node={raw}"],
                }
            )
    untagged = template | {"ServiceName": agent_service, "Port": 23000, "Tags": [job["job"]]}

    cfg = load_yaml(NOMAD_CONFIG)
    scrape = cfg["scrape_configs"][0]
    del scrape["nomad_sd_configs"]
    scrape["static_configs"] = [
        {"targets": [f"{r['Address']}:{r['Port']}"], "labels": nomad_sd_labels(r)}
        for r in [*other, *ours, untagged]
    ]
    cfg["rule_files"] = []
    path = tmp_path / "nomad-replayed.yml"
    path.write_text(yaml.safe_dump(cfg))
    res = run([require_prometheus[1], "check", "service-discovery", "--timeout=3s", str(path), SCRAPE_JOB])
    assert res.returncode == 0, res.stdout + res.stderr
    kept = [t["labels"] for t in json.loads(res.stdout) if t["labels"]]
    # promtool prints targets in no fixed order.
    public = sorted(
        ({k: v for k, v in t.items() if not k.startswith("__")} for t in kept), key=lambda t: t["instance"]
    )
    assert public == [
        {
            "job": SCRAPE_JOB,
            "instance": f"10.0.0.{i + 1}:{21000 + i}",
            "node_id": normalize_node_name(raw),
            "mesh": job["job"],
            "nomad_node": f"node-uuid-{i}",
            "datacenter": "dc1",
            "nomad_namespace": "default",
        }
        for i, raw in enumerate(raw_names)
    ]
    assert [p["node_id"] for p in public] == ["node-0", "worker-01-example-com", "edge--node-"]


def test_mesh_job_node_id_pipeline_is_the_one_relabeling_replays() -> None:
    if not MESH_JOB.exists():
        pytest.skip("nomad/mesh.nomad.hcl not there yet")
    pipeline = mesh_job()["locals"]["node_id"]
    assert pipeline == 'toLower | regexReplaceAll "[^a-z0-9-]+" "-" | regexReplaceAll "^-+" "" | printf "%.63s"'


def test_alert_conditions_lose_only_their_thresholds() -> None:
    """The live "has data" check evaluates each alert without its constant comparisons; make sure that strips
    exactly those (and not matcher values like le="0.5")."""
    stripped = {e.name: without_thresholds(e.expr) for e in rule_exprs() if e.kind == "alert"}
    for name, expr in stripped.items():
        assert not re.search(r"(==|!=|>=|<=|>|<)\s*(bool\s+)?[\d.]+", expr), (name, expr)
        assert check_refs(expr, static_vocabulary()) == [], name
    assert stripped["X0NodeDown"] == 'up{job="x0-agent"}'
    assert stripped["X0AgentApiLatencyHigh"] == "node:x0_http_request_duration_seconds:p99_rate5m"
    assert without_thresholds('x{le="0.5"} > 0.5') == 'x{le="0.5"}'
