"""A real multi-node Yggdrasil mesh on one machine: daemons and agents in network namespaces or on loopback.

Python API (docs/contracts.md §6): `LocalMesh(MeshOptions(...))` as a context manager; the CLI is
`x0-agent local-mesh` (agent.localmesh.cli).
"""

from agent.localmesh.mesh import LocalMesh
from agent.localmesh.model import LocalMeshError, MeshOptions, NodeHandle

__all__ = ["LocalMesh", "LocalMeshError", "MeshOptions", "NodeHandle"]
