"""nomad/*.hcl: parse, and check what the mesh job needs (Nomad cannot be installed here; `nomad job validate`
and `nomad job plan` are in nomad/README.md for users who have it)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from agent.localmesh.procs import daemon_pids
from agent.members import parse_members
from agent.settings import Settings
from agent.yggdrasil.client import AdminClient
from dashboard.nomad import view
from dashboard.nomad.settings import DEFAULT_JOB
from tests.nomad import jobspec as js

DOC = js.load(js.JOB_FILE)
VARS = js.declared_vars(DOC)
LOCALS = js.locals_of(DOC)
JOB_NAME, JOB = js.job_block(DOC)
GROUPS = js.groups(JOB)
GROUP = GROUPS["node"]
TASKS = js.tasks(GROUP)

# Blocks and attributes the job may use: those in reference/nomad.md (§3) and Nomad's structs
# (FIELDS-structs-1.11.2.json: Job, TaskGroup, Task, Service, ServiceCheck, Template, ...). A new one must be
# checked against Nomad's docs before it is added here.
ALLOWED: dict[str, set[str]] = {
    "job": {"type", "datacenters", "constraint", "update", "group"},
    "constraint": {"attribute", "value"},
    "update": {
        "max_parallel",
        "health_check",
        "min_healthy_time",
        "healthy_deadline",
        "progress_deadline",
        "auto_revert",
    },
    "group": {"count", "network", "restart", "ephemeral_disk", "task"},
    "network": {"port"},
    "port": {"static"},
    "restart": {"attempts", "interval", "delay", "mode"},
    "ephemeral_disk": {"sticky"},
    "task": {"lifecycle", "driver", "dynamic", "env", "template", "service", "resources"},
    "lifecycle": {"hook", "sidecar"},
    "template": {"destination", "change_mode", "data", "perms", "env", "wait"},
    "wait": {"min", "max"},
    "service": {"provider", "name", "port", "tags", "check"},
    "check": {"name", "type", "path", "interval", "timeout"},
    "resources": {"cpu", "memory"},
}
RAW_EXEC_CONFIG = {"command", "args"}
DOCKER_CONFIG = {"image", "command", "args", "network_mode", "cap_add", "devices"}


def ev(value: str) -> str:
    return js.evaluate(value, VARS, LOCALS)


def test_every_hcl_file_parses() -> None:
    files = sorted((js.ROOT / "nomad").glob("*.hcl"))
    assert js.JOB_FILE in files and js.DEV_VARS in files
    for path in files:
        assert js.load(path), path


def _walk(kind: str, body: Any, problems: list[str], where: str) -> None:
    if kind not in ALLOWED:
        return
    for key, value in body.items():
        if key not in ALLOWED[kind]:
            problems.append(f"{where}: {key!r} is not a known {kind} attribute/block")
            continue
        children = value if isinstance(value, list) else [value]
        for child in children:
            if not isinstance(child, dict):
                continue
            if key in {"group", "task", "port"}:  # labelled blocks
                for label, inner in child.items():
                    _walk(key, inner, problems, f"{where}.{key}[{label}]")
            elif key != "dynamic":
                _walk(key, child, problems, f"{where}.{key}")


def test_only_known_blocks_and_attributes() -> None:
    problems: list[str] = []
    _walk("job", JOB, problems, "job")
    assert problems == []
    for name, task in TASKS.items():
        configs = [c["config"] for c in task["dynamic"]]
        assert len(configs) == 2, f"{name}: one config per driver"
        raw, docker = configs
        assert raw["for_each"] == '${var.driver == "docker" ? [] : [1]}'
        assert docker["for_each"] == '${var.driver == "docker" ? [1] : []}'
        assert set(raw["content"][0]) <= RAW_EXEC_CONFIG
        assert set(docker["content"][0]) <= DOCKER_CONFIG
        assert "image" in docker["content"][0]


def test_system_job_by_default_service_with_three_nodes_for_a_dev_agent() -> None:
    assert JOB_NAME == DEFAULT_JOB == "x0-mesh"
    assert JOB["type"] == "${var.job_type}" and VARS["job_type"] == "system"
    assert GROUP["count"] == '${var.job_type == "system" ? 1 : var.instances}'
    assert VARS["datacenters"] == ["*"]
    dev = js.load(js.DEV_VARS)
    assert dev["job_type"] == "service" and dev["instances"] == 3
    assert set(dev) <= set(VARS), "dev.vars.hcl sets an undeclared variable (-hcl2-strict rejects it)"
    # Raw node names reach the agent through runtime interpolation; the dev one is per allocation index.
    assert ev(VARS["node_name"]) == "${node.unique.name}"
    assert ev(dev["node_name"]) == "node-${NOMAD_ALLOC_INDEX}"
    # System jobs may not reschedule, scale, spread or use affinities; migrate is service-only.
    for forbidden in ("reschedule", "scaling", "spread", "affinity", "migrate"):
        assert forbidden not in JOB and forbidden not in GROUP


def test_ports_are_dynamic_by_default_and_referenced_ports_exist() -> None:
    ports = {label: spec for p in GROUP["network"][0]["port"] for label, spec in p.items()}
    assert set(ports) == {"api", "peer", "raft"}
    # static = 0 => dynamic port (jobspec2 normalizeNetworkPorts moves only Value > 0 to ReservedPorts).
    assert VARS["api_port"] == 0 and VARS["peer_port"] == 0 and VARS["raft_port"] == 0
    for task in TASKS.values():
        for svc in task.get("service", []):
            assert svc["port"] in ports
            for check in svc.get("check", []):
                assert check.get("port", svc["port"]) in ports


def test_tasks_yggdrasil_sidecar_then_agent() -> None:
    assert list(TASKS) == ["yggdrasil", "agent"]
    assert TASKS["yggdrasil"]["lifecycle"] == [{"hook": "prestart", "sidecar": True}]
    assert "lifecycle" not in TASKS["agent"]
    agent_env = TASKS["agent"]["env"][0]
    assert ev(agent_env["LISTEN_PORT"]) == "${NOMAD_PORT_api}"
    assert ev(agent_env["YGGDRASIL_ADMIN"]) == "unix://${NOMAD_ALLOC_DIR}/yggdrasil.sock"
    assert ev(agent_env["MESH_MEMBERS"]) == "${NOMAD_TASK_DIR}/members.json"
    assert "YGGDRASIL_CONFIG" not in agent_env, "the daemon is a Nomad task, not supervised by the agent"
    assert "X0_API_TOKEN" not in agent_env and "api_token" not in json.dumps(VARS)


def test_raft_rides_the_overlay_unless_the_daemons_have_none() -> None:
    """X0_RAFT_TRANSPORT follows yggdrasil_ifname: overlay with a TUN, the members' raft_address (underlay) for
    router-only daemons, which have no overlay address to bind. The job's conditional, evaluated for both."""
    expr = TASKS["agent"]["env"][0]["X0_RAFT_TRANSPORT"]
    m = re.fullmatch(r'\$\{var\.(\w+) == "(\w+)" \? "(\w+)" : "(\w+)"\}', expr)
    assert m is not None, expr
    name, equals, then, otherwise = m.groups()
    assert name == "yggdrasil_ifname" and VARS[name] == "auto"
    for ifname in ("auto", "none"):
        transport = then if ifname == equals else otherwise
        assert transport == ("auto" if ifname == "none" else "overlay")
        env = {"NODE_ID": "node-a", "YGGDRASIL_ADMIN": "unix:///run/ygg.sock", "X0_RAFT_TRANSPORT": transport}
        assert Settings.from_env(env).raft_transport == transport


def test_services_are_nomad_native_with_checks_and_match_the_dashboard() -> None:
    agent_svc = TASKS["agent"]["service"][0]
    peer_svc = TASKS["yggdrasil"]["service"][0]
    assert ev(agent_svc["name"]) == view.AGENT_SERVICE and ev(peer_svc["name"]) == view.PEER_SERVICE
    for svc in (agent_svc, peer_svc):
        assert svc["provider"] == "nomad"
        assert re.fullmatch(r"[a-z0-9-]{1,63}", ev(svc["name"]))
        assert ev(svc["tags"][1]) == view.NODE_TAG_PREFIX + "${node.unique.name}"
    (check,) = agent_svc["check"]
    assert (check["type"], check["path"]) == ("http", "/health")
    assert peer_svc["check"][0]["type"] in {"http", "tcp"}  # the only check types of the nomad provider


def _templates() -> list[tuple[str, dict[str, Any], str]]:
    # ev() raises on any ${...} it cannot resolve, so every template here is fully interpolated.
    return [(name, t, ev(t["data"])) for name, task in TASKS.items() for t in task.get("template", [])]


def test_templates_use_registered_services_and_cannot_cascade_restarts() -> None:
    registered = {ev(s["name"]) for task in TASKS.values() for s in task.get("service", [])}
    watched = 0
    for task, tpl, data in _templates():
        used = set(re.findall(r'nomadService "([^"]+)"', data))
        assert used <= registered, f"{task}: template reads services the job does not register: {used}"
        if used:
            watched += 1
            # Membership changes whenever any node restarts: restarting on it would cascade across the mesh.
            assert tpl["change_mode"] in {"noop", "signal"}, f"{task}: {tpl['destination']}"
            if tpl["change_mode"] == "signal":
                assert tpl.get("change_signal")
        if tpl.get("env"):
            assert tpl["change_mode"] != "signal", "env templates cannot use signals"
    assert watched == 1


def test_members_template_node_ids_match_the_dashboard_and_agents() -> None:
    assert LOCALS["node_id"] == (
        'toLower | regexReplaceAll "[^a-z0-9-]+" "-" | regexReplaceAll "^-+" "" | printf "%.63s"'
    )
    members = next(d for _, t, d in _templates() if t["destination"] == "local/members.json")
    env_tpl = next(d for _, t, d in _templates() if t["destination"] == "secrets/agent.env")
    assert f'NODE_ID={{{{ env "X0_NODE_NAME" | {LOCALS["node_id"]} }}}}' in env_tpl
    assert f"$id := $raw | {LOCALS['node_id']}" in members
    assert 'regexMatch "^x0-node="' in members and view.NODE_TAG_PREFIX == "x0-node="
    # Structural JSON checks (consul-template cannot run here): every member object is opened and closed in the
    # same guarded block, the separator is written before all but the first, and the list is always closed.
    assert members.count("{{- if and $id (not (scratch.Key $id)) -}}") == 1
    assert "{{- if $n }}, {{ end }}{{ $n = add $n 1 -}}" in members
    assert members.rstrip().endswith("]}")
    assert '"links"' not in members and "Peers" not in members


def test_yggdrasil_config_has_no_peers_and_keeps_keys_out_of_the_file() -> None:
    conf_tpl = next(d for _, t, d in _templates() if t["destination"] == "local/yggdrasil.conf.in")
    rendered = _render_env_only(conf_tpl, {"NOMAD_ADDR_peer": "127.0.0.1:1", "NOMAD_ALLOC_DIR": "/a"})
    conf = json.loads(rendered)
    assert conf["Peers"] == [] and conf["InterfacePeers"] == {} and conf["MulticastInterfaces"] == []
    assert conf["Listen"] == ["tls://127.0.0.1:1"]
    assert conf["PrivateKey"] == "@X0_PRIVATE_KEY@"
    assert GROUP["ephemeral_disk"] == [{"sticky": True}]
    restart = GROUP["restart"][0]
    assert restart["mode"] == "delay"
    assert JOB["update"][0]["max_parallel"] == 1


def test_every_variable_is_declared_and_used() -> None:
    text = js.JOB_FILE.read_text()
    used = set(re.findall(r"\bvar\.([a-z_]+)", text))
    assert used <= set(VARS), f"undeclared: {used - set(VARS)}"
    assert set(VARS) - used == set(), f"declared but unused: {set(VARS) - used}"


# -- The daemon side for real: the rendered config and run-yggdrasil.sh with a real yggdrasil -----------------
def _render_env_only(template: str, env: dict[str, str]) -> str:
    """Render a template that uses nothing but {{ env "NAME" }} (fails on any other action)."""
    out = re.sub(r'\{\{ env "([A-Za-z0-9_]+)" \}\}', lambda m: env[m.group(1)], template)
    assert "{{" not in out, f"template uses more than env: {out}"
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(alloc: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["/bin/sh", str(alloc / "yggdrasil" / "local" / "run-yggdrasil.sh")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: the task, as Nomad kills it
    )


def _self_key(sock: Path, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            snap = asyncio.run(AdminClient(f"unix://{sock}").snapshot())
            return snap.self_info.key
        except Exception as exc:  # not up yet
            last = exc
            time.sleep(0.2)
    raise AssertionError(f"daemon never answered on {sock}: {last}")


@pytest.mark.yggdrasil
def test_run_yggdrasil_keeps_its_key_across_restarts(require_yggdrasil: str, tmp_path: Path) -> None:
    """The yggdrasil task as Nomad would run it (raw_exec, router-only): key generated once into alloc/data,
    config written 0600 to secrets/, the same identity after a task restart."""
    alloc = tmp_path / "alloc"
    local, secrets = alloc / "yggdrasil" / "local", alloc / "yggdrasil" / "secrets"
    for d in (alloc / "alloc" / "data", local, secrets):
        d.mkdir(parents=True)
    variables = dict(VARS, yggdrasil_ifname="none")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "YGGDRASIL_BIN": require_yggdrasil,
        "NOMAD_ALLOC_DIR": str(alloc / "alloc"),
        "NOMAD_TASK_DIR": str(local),
        "NOMAD_SECRETS_DIR": str(secrets),
        "NOMAD_ADDR_peer": f"127.0.0.1:{_free_port()}",
    }
    for tpl in TASKS["yggdrasil"]["template"]:
        text = _render_env_only(js.evaluate(tpl["data"], variables, LOCALS), env)
        dest = alloc / "yggdrasil" / tpl["destination"]
        dest.write_text(text)
        if tpl.get("perms"):
            dest.chmod(int(tpl["perms"], 8))
    sock = alloc / "alloc" / "yggdrasil.sock"
    keys = []
    for hard in (False, True):
        proc = _start(alloc, env)
        try:
            keys.append(_self_key(sock))
            if not hard:  # Nomad's stop: SIGTERM to the task; the script stops its daemon and ends
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(5) == 0
                assert daemon_pids(secrets) == []
        finally:
            # After the kill timeout Nomad kills the whole task; a hard kill leaves the socket behind, and the
            # script must cope on the next start.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        assert (secrets / "yggdrasil.conf").stat().st_mode & 0o077 == 0
        assert ((alloc / "alloc" / "data" / "yggdrasil.key").stat().st_mode & 0o077) == 0
    assert keys[0] == keys[1] and len(keys[0]) == 64
    conf = json.loads((secrets / "yggdrasil.conf").read_text())
    assert conf["Peers"] == [] and conf["IfName"] == "none" and len(conf["PrivateKey"]) == 128


def test_members_file_shape_is_what_the_agent_parses() -> None:
    """What the template writes for 0, 1 and 2 registrations (rendered by hand from the template's structure:
    `{"mesh": …, "members": [` + members joined by ", " + `]}`) parses with the agent's own parser."""
    for members in (
        [],
        [("node-0", "http://127.0.0.1:21000", "tls://127.0.0.1:23000")],
        [
            ("node-0", "http://127.0.0.1:21000", None),
            ("node-1", "http://[fd00::1]:21001", "tls://[fd00::1]:23001"),
        ],
    ):
        parts = []
        for i, (node_id, url, listen) in enumerate(members):
            host = url.split("//")[1].rsplit(":", 1)[0].strip("[]")
            # host (Nomad node id) and raft_address (service address + the x0-raft-port tag) as the template
            # writes them.
            item = f'{{"node_id": {json.dumps(node_id)}, "agent_url": {json.dumps(url)}, "host": "9f1e-{i}"'
            item += f', "raft_address": {json.dumps(f"{host}:{22000 + i}")}'
            item += f', "listen_uri": {json.dumps(listen)}' if listen else ""
            parts.append(item + "}")
        text = '{"mesh": "x0-mesh", "members": [' + ", ".join(parts) + "]}"
        parsed = parse_members(text.encode())
        assert parsed.ids == [m[0] for m in members]
