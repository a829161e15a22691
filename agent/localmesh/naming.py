"""Names of everything a local mesh creates (docs/contracts.md §6), and how to recognise them later.

A mesh has a short hex id (`3f2a`); its namespaces are `x0-<id>-<letter>`, its bridge `x0b<id>`, its veths
`x0v<id><letters>` (Linux interface names are at most 15 characters: these are 7 and 8 or 9). Nodes are
`node-a` .. `node-z`, then `node-aa`, `node-ab`, ... up to MAX_NODES (the netns subnet is a /24).
"""

from __future__ import annotations

import re
import secrets
import string

MAX_NODES = 100
MESH_ID_LEN = 4
MESH_ID_RE = re.compile(r"^[0-9a-f]{4}$")
NETNS_RE = re.compile(r"^x0-(?P<id>[0-9a-f]{4})-(?P<letter>[a-z]{1,2})$")
BRIDGE_RE = re.compile(r"^x0b(?P<id>[0-9a-f]{4})$")
VETH_RE = re.compile(r"^x0v(?P<id>[0-9a-f]{4})(?P<letter>[a-z]{1,2})$")


def new_mesh_id() -> str:
    return secrets.token_hex(MESH_ID_LEN // 2)


def mesh_name(mesh_id: str) -> str:
    """The mesh's label in the members file, inventory and Prometheus labels."""
    return f"local-{mesh_id}"


def letters(nodes: int) -> list[str]:
    if not 1 <= nodes <= MAX_NODES:
        raise ValueError(f"nodes must be between 1 and {MAX_NODES} (node-a .. node-z, node-aa, ...), got {nodes}")
    abc = string.ascii_lowercase
    return [*abc, *(a + b for a in abc for b in abc)][:nodes]


def node_id(letter: str) -> str:
    return f"node-{letter}"


def netns_name(mesh_id: str, letter: str) -> str:
    return f"x0-{mesh_id}-{letter}"


def bridge_name(mesh_id: str) -> str:
    return f"x0b{mesh_id}"


def veth_name(mesh_id: str, letter: str) -> str:
    return f"x0v{mesh_id}{letter}"


def owner_mesh_id(name: str) -> str | None:
    """The mesh id in a namespace/bridge/veth name of ours, or None for anything else."""
    for pattern in (NETNS_RE, BRIDGE_RE, VETH_RE):
        m = pattern.match(name)
        if m:
            return m.group("id")
    return None
