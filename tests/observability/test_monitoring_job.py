"""nomad/monitoring.nomad.hcl: parsed with python-hcl2 (no Nomad binary here); its templates render exactly the
tested files, survive consul-template, and Grafana's password can only come from the Nomad variable."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.nomad import jobspec as js

from .catalog import GRAFANA_DIR, NOMAD_CONFIG, REPO, RULE_FILES, load_yaml

JOB_FILE = REPO / "nomad" / "monitoring.nomad.hcl"
# template fields: reference/nomad.md §3.5 and Nomad's template.mdx (delimiters, perms) and jobspec2 fixture
# template-err-missing-key.hcl (error_on_missing_key).
TEMPLATE_FIELDS = {
    "destination", "data", "change_mode", "change_signal", "splay", "env", "once", "wait",
    "left_delimiter", "right_delimiter", "perms", "error_on_missing_key",
}  # fmt: skip
CHANGE_MODES = {"restart", "signal", "noop", "script"}
_FILE_CALL = re.compile(r'file\("\$\{var\.repo_dir\}/([^"]+)"\)')


@pytest.fixture(scope="module")
def job() -> dict[str, Any]:
    doc = js.load(JOB_FILE)
    name, body = js.job_block(doc)
    return {
        "name": name,
        "body": body,
        "vars": js.declared_vars(doc),
        "locals": js.locals_of(doc),
        "groups": js.groups(body),
    }


def tasks(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: t for g in job["groups"].values() for n, t in js.tasks(g).items()}


def templates(job: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(name, t) for name, task in tasks(job).items() for t in task.get("template", [])]


def inline(job: dict[str, Any], t: dict[str, Any]) -> str:
    """An inline (heredoc) template's text as Nomad receives it."""
    return js.evaluate(t["data"], job["vars"], job["locals"])


def render_data(job: dict[str, Any], data: str) -> str | None:
    """The text a `file()`-based template data expression yields (the CLI evaluates it at parse time); None for
    inline heredocs."""
    m = _FILE_CALL.search(data)
    if m is None:
        return None
    text = (REPO / m.group(1)).read_text()
    if data.startswith("${replace(file("):
        shipped, replacement = job["locals"]["shipped_nomad_addr"], "http://10.0.0.9:4646"
        assert shipped in text, "replace() would silently do nothing"
        text = text.replace(shipped, replacement)
    return text


def test_job_shape(job: dict[str, Any]) -> None:
    assert job["name"] == "x0-monitoring"
    assert job["body"]["type"] == "service"
    assert set(job["groups"]) == {"prometheus", "grafana"}
    assert {n: t["driver"] for n, t in tasks(job).items()} == {
        "prometheus": "docker",
        "grafana": "docker",
    }
    for name, group in job["groups"].items():
        (service,) = group["service"]
        assert service["provider"] == "nomad", name
        (check,) = service["check"]
        assert check["type"] == "http", name


def test_templates_use_only_documented_fields(job: dict[str, Any]) -> None:
    for task, t in templates(job):
        fields = {k for k in t if not k.startswith("__")}
        assert fields <= TEMPLATE_FIELDS, (task, fields - TEMPLATE_FIELDS)
        assert t.get("change_mode", "restart") in CHANGE_MODES
        if t.get("change_mode") == "signal":
            assert "change_signal" in t and not t.get("env"), task  # signal + env is a validation error


def test_templates_render_the_tested_files(job: dict[str, Any]) -> None:
    rendered = {}
    for _task, t in templates(job):
        text = render_data(job, t["data"])
        if text is None:
            continue
        rendered[t["destination"]] = text
        # The files carry their own {{ }} (alert annotations, Grafana legends): other delimiters, which the
        # files themselves must not contain (except the address expression we put there on purpose).
        left, right = t["left_delimiter"], t["right_delimiter"]
        assert (left, right) != ("{{", "}}"), t["destination"]
        repo_text = (REPO / _FILE_CALL.search(t["data"]).group(1)).read_text()  # type: ignore[union-attr]
        assert left not in repo_text and right not in repo_text, t["destination"]
    assert rendered["local/rules/x0-records.yml"] == RULE_FILES[0].read_text()
    assert rendered["local/rules/x0-alerts.yml"] == RULE_FILES[1].read_text()
    assert (
        rendered["local/dashboards/mesh-overview.json"]
        == (GRAFANA_DIR / "dashboards/mesh-overview.json").read_text()
    )
    assert rendered["local/dashboards/node.json"] == (GRAFANA_DIR / "dashboards/node.json").read_text()
    prom = yaml.safe_load(rendered["local/prometheus.yml"])
    assert prom["scrape_configs"][0]["nomad_sd_configs"][0]["server"] == "http://10.0.0.9:4646"
    assert prom == load_yaml(NOMAD_CONFIG) | {"scrape_configs": prom["scrape_configs"]}
    # rule_files are relative to the config file, i.e. local/: both rule templates land there.
    assert {f"local/{r}" for r in prom["rule_files"]} == {
        "local/rules/x0-records.yml",
        "local/rules/x0-alerts.yml",
    }
    # Grafana: provisioning under GF_PATHS_PROVISIONING, dashboards where X0_DASHBOARDS_DIR points.
    (env,) = tasks(job)["grafana"]["env"]
    assert env["GF_PATHS_PROVISIONING"] == "/local/provisioning"
    assert "local/provisioning/datasources/x0-prometheus.yml" in rendered
    assert "local/provisioning/dashboards/x0tta6bl4.yml" in rendered
    assert env["X0_DASHBOARDS_DIR"] == "/local/dashboards"


def test_default_nomad_address_is_the_clients_own(job: dict[str, Any]) -> None:
    expr = job["locals"]["nomad_addr"]
    assert expr.endswith('"http://[% env \\"attr.unique.network.ip-address\\" %]:4646"}'), expr


def test_grafana_admin_password_only_from_the_nomad_variable(job: dict[str, Any]) -> None:
    grafana = tasks(job)["grafana"]
    (env,) = grafana["env"]
    assert not any("PASSWORD" in k for k in env), "a password in the job's env block"
    secret = [t for t in grafana["template"] if "GF_SECURITY_ADMIN_PASSWORD" in t["data"]]
    assert len(secret) == 1
    (t,) = secret
    assert t["env"] is True and t["error_on_missing_key"] is True
    assert t["destination"].startswith("secrets/")
    # Readable by the job's own tasks through the default workload-identity policy.
    assert inline(job, t).strip() == (
        '{{ with nomadVar "nomad/jobs/x0-monitoring" }}'
        "GF_SECURITY_ADMIN_PASSWORD={{ .grafana_admin_password }}{{ end }}"
    )
    text = JOB_FILE.read_text()
    assert not re.search(r"(?i)admin_password\s*[=:]\s*\"?admin\b", text)
    assert "GF_SECURITY_ADMIN_PASSWORD=admin" not in text


def test_grafana_finds_prometheus_through_its_service(job: dict[str, Any]) -> None:
    (service,) = job["groups"]["prometheus"]["service"]
    name = js.evaluate(service["name"], job["vars"], job["locals"])
    (url,) = [t for t in tasks(job)["grafana"]["template"] if "X0_PROMETHEUS_URL" in t["data"]]
    assert url["env"] is True
    assert inline(job, url).strip() == (
        f'{{{{ range nomadService 1 (env "NOMAD_ALLOC_ID") "{name}" }}}}'
        "X0_PROMETHEUS_URL=http://{{ .Address }}:{{ .Port }}{{ end }}"
    )
