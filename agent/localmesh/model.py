"""What a local mesh is asked to be (`MeshOptions`) and what one node of it is (`NodeHandle`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from agent.topology import Topology

Mode = Literal["netns", "loopback"]
MODES: tuple[Mode, ...] = ("netns", "loopback")

# netns mode: every namespace has its own stack, so every node uses the same ports (simple for operators).
NETNS_AGENT_PORT = 8080
NETNS_LISTEN_PORT = 12345
NETNS_RAFT_PORT = 8082
NETNS_TUN = "ygg0"
DEFAULT_START_TIMEOUT_S = 60.0


class LocalMeshError(RuntimeError):
    """The mesh could not be started or a node operation failed; the message is meant for the operator."""


@dataclass(frozen=True)
class MeshOptions:
    nodes: int = 3
    topology: Topology = "auto"
    # None: netns when running as root, loopback otherwise.
    mode: Mode | None = None
    # Each mesh lives in <run_dir>/local-<id>/ (configs, keys, logs, members file).
    run_dir: Path = Path("run")
    # Default: <run_dir>/local-<id>/inventory.json. The Prometheus file_sd file is written beside it.
    inventory: Path | None = None
    # loopback: agents on P..P+N-1, daemons on P+N..P+2N-1 (None: free ports from the kernel).
    # netns: agent on P and daemon on P+1 in every namespace (None: 8080 and 12345).
    base_port: int | None = None
    # None: $X0_API_TOKEN, else a fresh random token.
    api_token: str | None = None
    # None: $YGGDRASIL_BIN, else `yggdrasil` on PATH, else /usr/sbin/yggdrasil.
    yggdrasil_bin: str | None = None
    # None: the `x0-agent` installed beside this Python, else on PATH; `serve` is appended.
    agent_command: Sequence[str] | None = None
    # Extra environment for every agent (e.g. {"X0_DAEMON_RESTART_DELAY": "1"}); wins over ours.
    agent_env: Mapping[str, str] = field(default_factory=dict)
    start_timeout: float = DEFAULT_START_TIMEOUT_S
    log_level: str = "info"


@dataclass(frozen=True)
class NodeHandle:
    """One node: how to reach its agent and daemon, and where its files are. Fixed for the mesh's life
    (stop_node/start_node keep keys, addresses and ports)."""

    id: str  # node-a
    letter: str  # a
    index: int  # 1-based; the node's host part in the netns subnet
    agent_url: str  # underlay: http://10.213.N.i:8080 (netns) or http://127.0.0.1:P (loopback)
    metrics_url: str
    overlay_url: str | None  # http://[200:…]:8080; None in loopback (no TUN, nothing routes there)
    yggdrasil_address: str
    yggdrasil_subnet: str
    public_key: str
    listen_uri: str  # tls://10.213.N.i:12345 or tls://127.0.0.1:P
    admin_endpoint: str  # unix:///…/admin.sock
    netns: str | None  # x0-<id>-<letter>; None in loopback
    underlay_ip: str
    agent_port: int
    listen_port: int
    dir: Path  # <mesh dir>/node-a
    config_path: Path  # yggdrasil.conf (0600, holds the private key)
    log_path: Path  # the agent's stdout/stderr; its daemon logs to yggdrasil.log beside the config
    # Raft listener (agent.consensus): 8082 on the overlay address in netns, a free 127.0.0.1 port in loopback.
    raft_port: int = NETNS_RAFT_PORT

    @property
    def raft_address(self) -> str:
        host = self.yggdrasil_address if self.netns else self.underlay_ip
        return f"{host}:{self.raft_port}"
