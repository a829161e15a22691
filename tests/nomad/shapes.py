"""Nomad responses for the tests, built from Nomad's own doc samples (fixtures/samples/, verbatim copies of
shared/reference/nomad-api/) and corrected the way reference/nomad.md §1.2-1.3 says the 1.11 server differs:

- `conform(struct, obj)`: keys exactly as the Go struct emits them (FIELDS-structs-1.11.2.json): keys the struct
  no longer has are dropped (e.g. TaskState.TaskHandle), missing ones added with their Go zero value (null for
  pointers/slices/maps/time.Time, "" / 0 / false otherwise), `omitempty` zero values omitted, and for structs with
  struct-level omitempty (Allocation, Port, AllocatedPortMapping, NetworkResource) every zero value omitted.
  `"0001-01-01T00:00:00Z"` times become null.
- write endpoints answer `{"Index": n}` (restart/signal), `{"EvalID", "Index"}` (stop); errors are plain text.

Every builder takes the sample, overrides what makes it *our* job (ids, names, tags, ports) and conforms it.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

SAMPLES = Path(__file__).parent / "fixtures" / "samples"
JOB = "x0-mesh"


@cache
def fields() -> dict[str, Any]:
    return json.loads((SAMPLES / "FIELDS-structs-1.11.2.json").read_text())


@cache
def sample(name: str) -> Any:
    return json.loads((SAMPLES / name).read_text())


_NAMED_STRINGS = {"TaskScheduleState", "CheckMode", "CheckStatus", "CheckID", "Topic", "DrainStatus", "TaskKind"}
_INTS = {"int", "int8", "int32", "int64", "uint", "uint8", "uint32", "uint64", "time.Duration"}


def zero(go_type: str) -> Any:
    if go_type == "string" or go_type in _NAMED_STRINGS:
        return ""
    if go_type == "bool":
        return False
    if go_type in _INTS:
        return 0
    if go_type in fields() and not go_type.startswith("_"):
        return conform(go_type, {})
    return None  # pointers, slices, maps, time.Time, interface{}, Networks/AllocatedPorts slices


def _is_zero(value: Any) -> bool:
    return value in (None, "", 0, False) or value == [] or value == {}


def conform(struct: str, obj: dict[str, Any]) -> dict[str, Any]:
    spec = fields()[struct]
    out: dict[str, Any] = {}
    for key in spec["keys_in_emitted_order"]:
        f = spec["fields"][key]
        value = obj.get(key, zero(f["go_type"]))
        if value == "0001-01-01T00:00:00Z":
            value = None
        if (spec["struct_level_omitempty"] or f["omitempty"]) and _is_zero(value):
            continue
        out[key] = value
    return out


# -- Job ----------------------------------------------------------------------------------------------------
def job(
    *,
    job_type: str = "system",
    node_name: str = "${node.unique.name}",
    datacenters: list[str] | None = None,
    status: str = "running",
) -> dict[str, Any]:
    """GET /v1/job/x0-mesh, from jobs.mdx "Read Job" (pre-1.0 shape) with the 1.11 keys and our task group."""
    raw = copy.deepcopy(sample("job.json"))
    raw.update(
        ID=JOB,
        Name=JOB,
        Type=job_type,
        Datacenters=datacenters or ["dc1"],
        Status=status,
        NodePool="default",
        Version=3,
        SubmitTime=1_700_000_000_000_000_000,
    )
    group = copy.deepcopy(raw["TaskGroups"][0])
    ygg = conform(
        "Task",
        {
            "Name": "yggdrasil",
            "Driver": "raw_exec",
            "Config": {"command": "/bin/sh"},
            "Lifecycle": conform("TaskLifecycleConfig", {"Hook": "prestart", "Sidecar": True}),
            "Env": {"YGGDRASIL_BIN": "/usr/sbin/yggdrasil"},
        },
    )
    agent = conform(
        "Task",
        {
            "Name": "agent",
            "Driver": "raw_exec",
            "Config": {"command": "/usr/local/bin/x0-agent"},
            "Env": {
                "LISTEN_PORT": "${NOMAD_PORT_api}",
                "X0_NODE_NAME": node_name,
                "MESH_MEMBERS": "${NOMAD_TASK_DIR}/members.json",
            },
        },
    )
    group.update(Name="node", Count=1, Tasks=[ygg, agent])
    raw["TaskGroups"] = [conform("TaskGroup", group)]
    raw["Update"] = conform("UpdateStrategy", {"MaxParallel": 1, "HealthCheck": "checks"})
    return conform("Job", raw)


# -- Nodes --------------------------------------------------------------------------------------------------
def node(
    node_id: str,
    name: str,
    *,
    dc: str = "dc1",
    status: str = "ready",
    eligibility: str = "eligible",
    drain: bool = False,
    address: str = "127.0.0.1",
) -> dict[str, Any]:
    """One NodeListStub from nodes.mdx "List Nodes" (without ?os=true, so no Attributes)."""
    raw = copy.deepcopy(sample("nodes.json")[0])
    raw.pop("Attributes", None)
    raw.update(
        ID=node_id,
        Name=name,
        Datacenter=dc,
        Status=status,
        SchedulingEligibility=eligibility,
        Drain=drain,
        Address=address,
        Version="1.11.2",
    )
    return conform("NodeListStub", raw)


# -- Allocations --------------------------------------------------------------------------------------------
def _task_state(state: str) -> dict[str, Any]:
    base = copy.deepcopy(sample("allocations.json")[0]["TaskStates"]["redis"])
    base["State"] = state
    base["Events"] = [conform("TaskEvent", e) for e in base["Events"]]
    if state == "dead":
        base["FinishedAt"] = "2026-03-01T10:00:05.1Z"
    return conform("TaskState", base)


def alloc_stub(
    alloc_id: str,
    node_id: str,
    node_name: str,
    *,
    index: int = 0,
    client: str = "running",
    desired: str = "run",
    create_index: int = 10,
    job_type: str = "system",
) -> dict[str, Any]:
    """One AllocListStub from allocations.mdx "List Allocations" (written for 1.2; closest to 1.11)."""
    raw = copy.deepcopy(sample("allocations.json")[0])
    task_state = (
        "dead" if client in {"complete", "failed", "lost"} else ("pending" if client == "pending" else "running")
    )
    raw.update(
        ID=alloc_id,
        Name=f"{JOB}.node[{index}]",
        JobID=JOB,
        JobType=job_type,
        TaskGroup="node",
        NodeID=node_id,
        NodeName=node_name,
        ClientStatus=client,
        DesiredStatus=desired,
        CreateIndex=create_index,
        ModifyIndex=create_index + 5,
        JobVersion=3,
        ClientDescription={"running": "Tasks are running", "pending": "No tasks have started"}.get(
            client, "All tasks have completed"
        ),
        TaskStates={"yggdrasil": _task_state(task_state), "agent": _task_state(task_state)},
    )
    raw["DesiredTransition"] = conform("DesiredTransition", raw["DesiredTransition"])
    raw["DeploymentStatus"] = conform("AllocDeploymentStatus", raw["DeploymentStatus"])
    return conform("AllocListStub", raw)


def allocation(
    stub: dict[str, Any], *, api_port: int, peer_port: int, host_ip: str = "127.0.0.1"
) -> dict[str, Any]:
    """GET /v1/allocation/:id from allocations.mdx "Read Allocation" (0.6-era) corrected: struct-level
    omitempty, null zero times, ports in AllocatedResources.Shared.Ports."""
    raw = copy.deepcopy(sample("allocation.json"))
    for key in (
        "ID",
        "Name",
        "NodeID",
        "NodeName",
        "JobID",
        "TaskGroup",
        "ClientStatus",
        "DesiredStatus",
        "CreateIndex",
        "ModifyIndex",
        "TaskStates",
        "DesiredTransition",
    ):
        raw[key] = stub[key]
    raw.update(Namespace="default", PreviousAllocation="", NextAllocation="", RescheduleTracker=None, Job=job())
    raw["RescheduleTracker"] = None
    ports = [
        conform("AllocatedPortMapping", {"HostIP": host_ip, "Label": label, "Value": value})
        for label, value in (("api", api_port), ("peer", peer_port))
    ]
    shared = conform("AllocatedSharedResources", {"DiskMB": 300, "Ports": ports})
    raw["AllocatedResources"] = conform("AllocatedResources", {"Shared": shared})
    return conform("Allocation", raw)


# -- Services -----------------------------------------------------------------------------------------------
def registration(
    stub: dict[str, Any],
    *,
    service: str,
    port: int,
    node_name: str,
    address: str = "127.0.0.1",
    task: str = "agent",
    port_label: str = "api",
    index: int = 20,
) -> dict[str, Any]:
    """One ServiceRegistration from services.mdx "Read Service"; ID format from client/serviceregistration."""
    raw = copy.deepcopy(sample("service.json")[0])
    raw.update(
        ID=f"_nomad-task-{stub['ID']}-{task}-{service}-{port_label}",
        ServiceName=service,
        JobID=JOB,
        AllocID=stub["ID"],
        NodeID=stub["NodeID"],
        Address=address,
        Port=port,
        Tags=["x0-mesh", f"x0-node={node_name}"],
        CreateIndex=index,
        ModifyIndex=index,
    )
    return conform("ServiceRegistration", raw)


# -- Writes -------------------------------------------------------------------------------------------------
def stop_response(index: int = 60) -> dict[str, Any]:
    return conform("AllocStopResponse", dict(sample("allocation_stop.json"), Index=index))


def generic_response(index: int = 61) -> dict[str, Any]:
    # Docs say `{}` (client_allocation_restart.json); the handler returns structs.GenericResponse.
    assert sample("client_allocation_restart.json") == {}
    return conform("GenericResponse", {"Index": index})


def drain_response(index: int = 3742) -> dict[str, Any]:
    return conform("NodeDrainUpdateResponse", dict(sample("node_drain.json"), Index=index, NodeModifyIndex=index))


def variable(items: dict[str, str]) -> dict[str, Any]:
    raw = dict(sample("var.json"), Namespace="default", Path=f"nomad/jobs/{JOB}", Items=items)
    return conform("VariableDecrypted", raw)


# -- Event stream -------------------------------------------------------------------------------------------
def alloc_event_frame(index: int, stub: dict[str, Any]) -> dict[str, Any]:
    """One frame like event_stream.ndjson, Allocation topic (payload = Allocation without Job)."""
    doc_frame = json.loads(sample_lines("event_stream.ndjson")[1])
    event = dict(doc_frame["Events"][0])
    payload = {k: v for k, v in stub.items() if k in fields()["Allocation"]["fields"]}
    event.update(
        Topic="Allocation",
        Type="AllocationUpdated",
        Key=stub["ID"],
        Namespace="default",
        FilterKeys=[JOB, ""],
        Index=index,
        Payload={"Allocation": conform("Allocation", payload)},
    )
    return conform("Events", {"Index": index, "Events": [conform("Event", event)]})


def sample_lines(name: str) -> list[str]:
    return (SAMPLES / name).read_text().splitlines()
