"""Pure mapping from Nomad objects to mesh nodes, and the places where Nomad's view and the agents' disagree.

Inputs are the JSON dicts Nomad sends (job, AllocListStub list, NodeListStub list, ServiceRegistration list,
ports from full Allocations). Every key is read through `field(obj, "Struct.Key")` so a test can check each one
against Nomad's struct definitions (reference/nomad-api/FIELDS-structs-1.11.2.json): we never read a key Nomad
does not send.

Mesh node ids must equal the agents' NODE_ID, which the job's templates derive from the raw node name carried in
the agent service's `x0-node=` tag (nomad/mesh.nomad.hcl, `local.node_id`); `mesh_node_id` is the same
transformation in Python.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from dataclasses import field as dc_field
from fnmatch import fnmatchcase
from typing import Any

from agent import topology
from dashboard.providers.base import NodeTarget, NomadPlacement

# Names shared with nomad/mesh.nomad.hcl (tests/nomad check they match the job's locals).
AGENT_SERVICE = "x0-mesh-agent"
PEER_SERVICE = "x0-mesh-yggdrasil"
NODE_TAG_PREFIX = "x0-node="
AGENT_TASK = "agent"
YGGDRASIL_TASK = "yggdrasil"
NODE_NAME_ENV = "X0_NODE_NAME"
API_PORT_LABEL = "api"

_LIVE_CLIENT = {"pending", "running"}
_ALLOC_INDEX = re.compile(r"\[(\d+)\]$")
_INTERP = re.compile(r"\$\{([^}]+)\}")


def field(obj: Mapping[str, Any] | None, path: str, default: Any = None) -> Any:
    """obj[key] for path "Struct.Key" (the struct name documents which Nomad object `obj` is)."""
    if obj is None:
        return default
    _, _, key = path.partition(".")
    value = obj.get(key, default)
    return default if value is None else value


def mesh_node_id(raw: str) -> str:
    """contracts §1 NODE_ID from a raw node name, exactly like local.node_id in the job's Go templates:
    toLower | regexReplaceAll "[^a-z0-9-]+" "-" | regexReplaceAll "^-+" "" | printf "%.63s"."""
    value = re.sub(r"[^a-z0-9-]+", "-", raw.lower())
    return re.sub(r"^-+", "", value)[:63]


def is_live(alloc: Mapping[str, Any]) -> bool:
    """Allocation meant to run and not finished (pending/running, desired run)."""
    return (
        field(alloc, "AllocListStub.DesiredStatus") == "run"
        and field(alloc, "AllocListStub.ClientStatus") in _LIVE_CLIENT
    )


def alloc_index(alloc: Mapping[str, Any]) -> int | None:
    match = _ALLOC_INDEX.search(field(alloc, "AllocListStub.Name", ""))
    return int(match.group(1)) if match else None


def node_name_template(job: Mapping[str, Any]) -> str | None:
    """The raw X0_NODE_NAME the job gives its agent task (e.g. "${node.unique.name}")."""
    for group in field(job, "Job.TaskGroups", []):
        for task in field(group, "TaskGroup.Tasks", []):
            if field(task, "Task.Name") == AGENT_TASK:
                env = field(task, "Task.Env", {})
                return env.get(NODE_NAME_ENV)
    return None


def interpolate_node_name(template: str, alloc: Mapping[str, Any], node: Mapping[str, Any] | None) -> str | None:
    """Resolve the runtime variables the job may use in X0_NODE_NAME; None if one is unknown here."""
    alloc_id = field(alloc, "AllocListStub.ID", "")
    index = alloc_index(alloc)
    values = {
        "node.unique.name": field(alloc, "AllocListStub.NodeName") or field(node, "NodeListStub.Name"),
        "node.unique.id": field(alloc, "AllocListStub.NodeID"),
        "node.datacenter": field(node, "NodeListStub.Datacenter"),
        "NOMAD_ALLOC_INDEX": None if index is None else str(index),
        "NOMAD_ALLOC_ID": alloc_id,
        "NOMAD_SHORT_ALLOC_ID": alloc_id[:8],
        "NOMAD_ALLOC_NAME": field(alloc, "AllocListStub.Name"),
        "NOMAD_JOB_ID": field(alloc, "AllocListStub.JobID"),
        "NOMAD_JOB_NAME": field(alloc, "AllocListStub.JobID"),
        "NOMAD_GROUP_NAME": field(alloc, "AllocListStub.TaskGroup"),
    }
    missing = False

    def sub(match: re.Match[str]) -> str:
        nonlocal missing
        value = values.get(match.group(1).strip())
        if not value:
            missing = True
            return ""
        return str(value)

    result = _INTERP.sub(sub, template)
    return None if missing else result


def tag_node_name(registration: Mapping[str, Any]) -> str | None:
    for tag in field(registration, "ServiceRegistration.Tags", []):
        if tag.startswith(NODE_TAG_PREFIX):
            return tag[len(NODE_TAG_PREFIX) :]
    return None


def registration_url(registration: Mapping[str, Any], scheme: str = "http") -> str:
    address = field(registration, "ServiceRegistration.Address", "")
    port = field(registration, "ServiceRegistration.Port", 0)
    host = f"[{address}]" if ":" in address else address
    return f"{scheme}://{host}:{port}"


def alloc_api_url(allocation: Mapping[str, Any]) -> str | None:
    """Agent URL from a full Allocation's ports (AllocatedResources.Shared.Ports) when no service is registered."""
    resources = field(allocation, "Allocation.AllocatedResources", {})
    shared = field(resources, "AllocatedResources.Shared", {})
    for port in field(shared, "AllocatedSharedResources.Ports", []):
        if field(port, "AllocatedPortMapping.Label") == API_PORT_LABEL:
            host = field(port, "AllocatedPortMapping.HostIP", "")
            value = field(port, "AllocatedPortMapping.Value", 0)
            if host and value:
                return f"http://[{host}]:{value}" if ":" in host else f"http://{host}:{value}"
    return None


@dataclass(slots=True)
class MeshNode:
    """One mesh node as Nomad sees it: its current allocation and how to reach its agent."""

    node_id: str
    alloc: dict[str, Any]
    nomad_node: dict[str, Any] | None
    agent_url: str | None
    url_source: str  # "service", "alloc ports", or "" when unknown
    others: list[dict[str, Any]] = dc_field(default_factory=list)  # older or competing allocations

    @property
    def alloc_id(self) -> str:
        return field(self.alloc, "AllocListStub.ID", "")

    @property
    def live(self) -> bool:
        return is_live(self.alloc)

    def placement(self) -> NomadPlacement:
        node = self.nomad_node
        return NomadPlacement(
            alloc_id=self.alloc_id,
            alloc_name=field(self.alloc, "AllocListStub.Name", ""),
            client_status=field(self.alloc, "AllocListStub.ClientStatus", "unknown"),
            desired_status=field(self.alloc, "AllocListStub.DesiredStatus", "run"),
            node_id=field(self.alloc, "AllocListStub.NodeID", ""),
            node_name=field(self.alloc, "AllocListStub.NodeName") or field(node, "NodeListStub.Name"),
            datacenter=field(node, "NodeListStub.Datacenter"),
            node_status=field(node, "NodeListStub.Status"),
            eligibility=field(node, "NodeListStub.SchedulingEligibility"),
            drain=field(node, "NodeListStub.Drain") if node is not None else None,
        )

    def target(self) -> NodeTarget:
        return NodeTarget(
            id=self.node_id,
            agent_url=self.agent_url,
            metrics_url=f"{self.agent_url}/metrics" if self.agent_url else None,
            nomad=self.placement(),
        )


@dataclass(slots=True)
class NomadView:
    job_id: str
    job_type: str
    job_status: str
    nodes: list[MeshNode]
    warnings: list[str]
    # Allocations whose agent URL is still unknown and whose full Allocation (ports) would tell it.
    need_ports: list[str]

    def targets(self) -> list[NodeTarget]:
        return [n.target() for n in self.nodes]

    def planned_links(self) -> list[tuple[str, str]]:
        # The job's members file has no "links": agents plan them from the ids with the job's topology, auto by
        # default (full up to 8 nodes, expander above; contracts §2); the lower id dials.
        return topology.plan_links(sorted(n.node_id for n in self.nodes if n.live), "auto")

    def by_id(self, node_id: str) -> MeshNode | None:
        return next((n for n in self.nodes if n.node_id == node_id), None)


def _rank(alloc: Mapping[str, Any]) -> tuple[bool, int]:
    return (is_live(alloc), field(alloc, "AllocListStub.CreateIndex", 0))


def _dc_matches(patterns: Iterable[str], dc: str) -> bool:
    return any(fnmatchcase(dc, p) for p in patterns)


def build_view(
    job: Mapping[str, Any],
    allocs: Iterable[Mapping[str, Any]],
    nomad_nodes: Iterable[Mapping[str, Any]],
    registrations: Iterable[Mapping[str, Any]],
    alloc_urls: Mapping[str, str] | None = None,
) -> NomadView:
    """Map the job's allocations to mesh nodes. `alloc_urls` are agent URLs read from full Allocations' ports
    (for allocations without a service registration)."""
    alloc_urls = alloc_urls or {}
    job_id = field(job, "Job.ID", "")
    job_type = field(job, "Job.Type", "")
    nodes_by_id = {field(n, "NodeListStub.ID"): dict(n) for n in nomad_nodes}
    regs = {
        field(r, "ServiceRegistration.AllocID"): r
        for r in registrations
        if field(r, "ServiceRegistration.JobID") == job_id
    }
    name_tpl = node_name_template(job)
    warnings: list[str] = []

    grouped: dict[str, list[dict[str, Any]]] = {}
    for alloc in allocs:
        alloc = dict(alloc)
        nomad_node = nodes_by_id.get(field(alloc, "AllocListStub.NodeID"))
        reg = regs.get(field(alloc, "AllocListStub.ID"))
        raw = tag_node_name(reg) if reg is not None else None
        if raw is None and name_tpl is not None:
            raw = interpolate_node_name(name_tpl, alloc, nomad_node)
        node_id = mesh_node_id(raw) if raw else ""
        if not node_id:
            node_id = mesh_node_id(field(alloc, "AllocListStub.Name", "") or field(alloc, "AllocListStub.ID", ""))
        grouped.setdefault(node_id, []).append(alloc)

    nodes: list[MeshNode] = []
    need_ports: list[str] = []
    for node_id, group in sorted(grouped.items()):
        group.sort(key=_rank, reverse=True)
        current, others = group[0], group[1:]
        nomad_node = nodes_by_id.get(field(current, "AllocListStub.NodeID"))
        if not is_live(current) and (nomad_node is None or field(nomad_node, "NodeListStub.Status") == "down"):
            continue  # an old allocation on a node that is gone: history, not a mesh node
        live_others = [a for a in others if is_live(a)]
        if live_others:
            ids = ", ".join(field(a, "AllocListStub.ID", "")[:8] for a in [current, *live_others])
            warnings.append(f"{node_id}: {len(live_others) + 1} live allocations claim this node ({ids})")
        alloc_id = field(current, "AllocListStub.ID", "")
        reg = regs.get(alloc_id)
        if reg is not None:
            url, source = registration_url(reg), "service"
        elif alloc_id in alloc_urls:
            url, source = alloc_urls[alloc_id], "alloc ports"
        else:
            url, source = None, ""
            need_ports.append(alloc_id)
        if is_live(current) and field(current, "AllocListStub.ClientStatus") == "running" and reg is None:
            warnings.append(
                f"{node_id}: allocation {alloc_id[:8]} is running but has no {AGENT_SERVICE} service "
                f"registration" + (f"; using its allocated port ({url})" if url else "")
            )
        if nomad_node is not None and is_live(current):
            status = field(nomad_node, "NodeListStub.Status")
            if status in {"down", "disconnected"}:
                client = field(current, "AllocListStub.ClientStatus")
                warnings.append(
                    f"{node_id}: allocation {alloc_id[:8]} is {client} but its Nomad node "
                    f"{field(nomad_node, 'NodeListStub.Name')} is {status}"
                )
        nodes.append(
            MeshNode(
                node_id=node_id,
                alloc=current,
                nomad_node=nomad_node,
                agent_url=url,
                url_source=source,
                others=others,
            )
        )

    if job_type == "system":
        warnings.extend(_system_gaps(job, nodes_by_id.values(), allocs_on=[n.alloc for n in nodes if n.live]))
    return NomadView(
        job_id=job_id,
        job_type=job_type,
        job_status=field(job, "Job.Status", ""),
        nodes=nodes,
        warnings=warnings,
        need_ports=need_ports,
    )


def _system_gaps(
    job: Mapping[str, Any], nomad_nodes: Iterable[Mapping[str, Any]], allocs_on: Iterable[Mapping[str, Any]]
) -> list[str]:
    """Nodes a system job should cover but has no live allocation on (Nomad does not report this, GH-25058)."""
    if field(job, "Job.Stop", False):
        return []
    covered = {field(a, "AllocListStub.NodeID") for a in allocs_on}
    dcs = field(job, "Job.Datacenters", ["*"]) or ["*"]
    pool = field(job, "Job.NodePool", "")
    gaps = []
    for node in nomad_nodes:
        if field(node, "NodeListStub.ID") in covered:
            continue
        if field(node, "NodeListStub.Status") != "ready":
            continue
        if field(node, "NodeListStub.SchedulingEligibility") != "eligible":
            continue
        if field(node, "NodeListStub.Drain", False):
            continue
        if not _dc_matches(dcs, field(node, "NodeListStub.Datacenter", "")):
            continue
        if pool and pool != "all" and field(node, "NodeListStub.NodePool", "default") != pool:
            continue
        gaps.append(
            f"Nomad node {field(node, 'NodeListStub.Name')} ({field(node, 'NodeListStub.Datacenter')}) is "
            f"ready and eligible but runs no {field(job, 'Job.ID')} allocation (constraint, driver or "
            f"port conflict? try `nomad job plan`)"
        )
    return gaps


def agent_warnings(nodes: Iterable[MeshNode], health: Mapping[str, str | None]) -> list[str]:
    """Nomad's view beside the agents': `health[node_id]` is None when the agent answered healthy, else why not
    ("unreachable: …", "unhealthy: yggdrasil …"). Nodes missing from `health` were not probed."""
    out = []
    for node in nodes:
        if node.node_id not in health:
            continue
        problem = health[node.node_id]
        client = field(node.alloc, "AllocListStub.ClientStatus")
        desired = field(node.alloc, "AllocListStub.DesiredStatus")
        short = node.alloc_id[:8]
        if node.live and client == "running" and problem is not None:
            out.append(
                f"{node.node_id}: Nomad says allocation {short} is running, but the agent at "
                f"{node.agent_url} is {problem}"
            )
        elif not node.live and problem is None:
            out.append(
                f"{node.node_id}: the agent at {node.agent_url} still answers, but Nomad's allocation "
                f"{short} is {client} (desired {desired})"
            )
    return out
