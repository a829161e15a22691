"""Talking to a mesh's Raft group through the agents' own API (/cluster, /kv), as operators and x0dash do."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from agent.localmesh import LocalMesh
from tests.localmesh.support import wait_until


def client() -> httpx.Client:
    return httpx.Client(trust_env=False, timeout=5.0)


def cluster(c: httpx.Client, mesh: LocalMesh, node_id: str) -> dict[str, Any]:
    r = c.get(f"{mesh.node(node_id).agent_url}/cluster", timeout=2.0)
    r.raise_for_status()
    return r.json()


def agreed_leader(c: httpx.Client, mesh: LocalMesh, nodes: Iterable[str], voters_only: bool = False) -> str | None:
    """The leader every given node names (with voters_only: every voter among them; clients learn the leader
    later, from a voter), when they all name the same one and it says it leads."""
    names = set()
    for n in nodes:
        view = cluster(c, mesh, n)
        if voters_only and view["role"] in ("client", "joining", "disabled"):
            continue
        names.add(view["leader_id"])
    if len(names) != 1 or None in names:
        return None
    leader = names.pop()
    return leader if cluster(c, mesh, leader)["role"] == "leader" else None


def wait_leader(
    c: httpx.Client,
    mesh: LocalMesh,
    nodes: Iterable[str],
    timeout: float,
    not_: str | None = None,
    voters_only: bool = False,
) -> str:
    nodes = list(nodes)
    found: list[str] = []

    def agreed() -> bool:
        leader = agreed_leader(c, mesh, nodes, voters_only)
        if leader is None or leader == not_:
            return False
        found.append(leader)
        return True

    try:
        wait_until(f"one leader (not {not_}) named by {', '.join(nodes)}", agreed, timeout, interval=0.05)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; views now: {views(c, mesh, nodes)}") from None
    return found[-1]


def views(c: httpx.Client, mesh: LocalMesh, nodes: Iterable[str]) -> dict[str, str]:
    """One line per node of what /cluster says (for failure messages)."""
    out: dict[str, str] = {}
    for n in nodes:
        try:
            v = cluster(c, mesh, n)
        except httpx.HTTPError as exc:
            out[n] = f"{type(exc).__name__}: {exc}"
            continue
        members = ",".join(f"{m['node_id']}={m['state']}" for m in v["members"])
        out[n] = f"{v['role']} term {v['term']} leader {v['leader_id']} [{members}] {v['detail']}"
    return out


def auth(mesh: LocalMesh) -> dict[str, str]:
    return {"Authorization": f"Bearer {mesh.api_token}"}


def put(c: httpx.Client, mesh: LocalMesh, node_id: str, key: str, value: bytes, **params: Any) -> httpx.Response:
    return c.put(f"{mesh.node(node_id).agent_url}/kv/{key}", content=value, headers=auth(mesh), params=params)


def get(c: httpx.Client, mesh: LocalMesh, node_id: str, key: str, **params: Any) -> httpx.Response:
    return c.get(f"{mesh.node(node_id).agent_url}/kv/{key}", params=params)


def value_of(r: httpx.Response) -> bytes:
    return base64.b64decode(r.json()["value"])


def replica(c: httpx.Client, mesh: LocalMesh, node_id: str, prefix: str) -> dict[str, int]:
    """A voter's own replica under a prefix (stale read: what this node holds), key -> modify index."""
    r = c.get(f"{mesh.node(node_id).agent_url}/kv", params={"prefix": prefix, "stale": "true", "limit": 10000})
    r.raise_for_status()
    return {k["key"]: k["modify_index"] for k in r.json()["keys"]}


def wait_converged(c: httpx.Client, mesh: LocalMesh, voters: Iterable[str], prefix: str, timeout: float) -> dict:
    voters = list(voters)
    last: list[dict[str, dict[str, int]]] = []

    def same() -> bool:
        views = {n: replica(c, mesh, n, prefix) for n in voters}
        last.append(views)
        first = next(iter(views.values()))
        return all(v == first for v in views.values())

    try:
        wait_until(f"replicas of {', '.join(voters)} identical under {prefix}", same, timeout, interval=0.1)
    except AssertionError:
        diff = {n: len(v) for n, v in (last[-1] if last else {}).items()}
        raise AssertionError(f"replicas differ under {prefix}: key counts {diff}") from None
    return last[-1][voters[0]]


def gauge(c: httpx.Client, mesh: LocalMesh, node_id: str, name: str) -> float:
    """An unlabelled gauge from the agent's /metrics."""
    return metric(c, mesh, node_id, name)


def metric(c: httpx.Client, mesh: LocalMesh, node_id: str, sample: str, **labels: str) -> float:
    """The sum of the agent's /metrics samples named `sample` (x0_kv_requests_total, ...) with these labels."""
    r = c.get(f"{mesh.node(node_id).agent_url}/metrics", timeout=2.0)
    r.raise_for_status()
    found = [
        s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    if not found:
        raise AssertionError(f"{node_id}: no {sample} {labels or ''} in /metrics")
    return float(sum(found))


def voters_of(c: httpx.Client, mesh: LocalMesh, node_id: str) -> list[str]:
    return sorted(m["node_id"] for m in cluster(c, mesh, node_id)["members"] if m["voter"])


def elapsed(start: float) -> float:
    return time.monotonic() - start
