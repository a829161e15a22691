"""`LocalMesh`: N real Yggdrasil daemons and N real `x0-agent` processes on this machine (docs/contracts.md §6).

Each agent supervises its own daemon (`YGGDRASIL_CONFIG`), so the agent is the daemon's parent, exactly as in a
deployment; the mesh only starts agents. In netns mode every node is a network namespace on a private bridge
(see `agent.localmesh.netns`); in loopback mode daemons have no TUN and listen on 127.0.0.1.

Start order: reserve id/subnet (registry) → keys and configs → network → members file, inventory, file_sd →
agents → wait for every /health 200. Any failure (or Ctrl-C/SIGTERM) on the way tears down what exists.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import httpx

from agent.localmesh import cleanup, files, naming, netns, procs, registry
from agent.localmesh.model import (
    NETNS_AGENT_PORT,
    NETNS_LISTEN_PORT,
    NETNS_RAFT_PORT,
    NETNS_TUN,
    LocalMeshError,
    MeshOptions,
    Mode,
    NodeHandle,
)
from agent.localmesh.registry import MeshRecord
from agent.localmesh.zygote import ForkedAgent, Zygote, ZygoteError
from agent.topology import TOPOLOGIES, Link, plan_links
from agent.yggdrasil.daemon_config import (
    DaemonConfigError,
    YggdrasilBinaryMissing,
    create_config,
    find_yggdrasil_binary,
)

log = logging.getLogger(__name__)

# sun_path is 108 bytes with the NUL; deeper run dirs (pytest's tmp_path) get their sockets in a short dir.
_MAX_SOCKET_PATH = 100
_HEALTH_POLL_S = 0.2
_AGENT_STOP_GRACE_S = 3.0
_LOG_TAIL_LINES = 8
# Variables of contracts §1 (and proxies) are never inherited from the caller: each agent gets exactly ours.
_AGENT_VARS = {"NODE_ID", "LISTEN_HOST", "LISTEN_PORT", "LOG_LEVEL", "MESH_MEMBERS"}
_AGENT_PREFIXES = ("YGGDRASIL_", "X0_")


def default_mode() -> Mode:
    """netns when we can build namespaces (root and iproute2), loopback otherwise."""
    if os.geteuid() != 0:
        return "loopback"
    try:
        netns.ip_binary()
    except netns.NetnsError:
        return "loopback"
    return "netns"


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something is bound to host:port (TIME_WAIT leftovers do not count: servers reuse those)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports the kernel considers free right now (held together so they differ)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def loopback_ports(nodes: int, base_port: int | None) -> tuple[list[int], list[int]]:
    """(agent ports, daemon ports): base_port..+N-1 and +N..+2N-1, each checked free; or kernel-chosen ports."""
    if base_port is None:
        ports = free_ports(2 * nodes)
        return ports[:nodes], ports[nodes:]
    last = base_port + 2 * nodes - 1
    if base_port < 1 or last > 65535:
        raise LocalMeshError(f"--base-port {base_port}: {2 * nodes} ports from it must fit in 1-65535")
    ports = list(range(base_port, last + 1))
    busy = [p for p in ports if port_in_use(p)]
    if busy:
        raise LocalMeshError(
            f"port {busy[0]} on 127.0.0.1 is already in use (busy: {', '.join(map(str, busy))}); "
            f"--base-port {base_port} needs {base_port}-{last} free (agents {base_port}-{base_port + nodes - 1}, "
            f"Yggdrasil {base_port + nodes}-{last}): pick another --base-port, or omit it to use free ports"
        )
    return ports[:nodes], ports[nodes:]


def daemon_gomaxprocs(nodes: int, cpus: int | None) -> int:
    """Go threads for each daemon of an N-node mesh on one host: the host's cores shared out, at least one.

    Go's scheduler runs a daemon on every core by default, and each overlay packet then wakes another thread to
    hand it on: 20 daemons at rest on 2 cores spent most of their CPU in futex wake-ups and task switches (perf).
    With one thread each, the same mesh at rest took 15.7-23.1 % of a core for all daemons instead of 22.0-29.8 %
    (bench/results/idle-gomaxprocs-2026-12-05.txt)."""
    return max(1, (cpus or 1) // max(1, nodes))


def _loopback_raft_ports(nodes: int, base_port: int | None, taken: Sequence[int]) -> list[int]:
    """Raft ports of a loopback mesh: after the agents' and daemons' ports with --base-port, else free ports."""
    if base_port is None:
        ports = [p for p in free_ports(nodes + len(taken)) if p not in taken]
        return ports[:nodes]
    first = base_port + 2 * nodes
    ports = list(range(first, first + nodes))
    busy = [p for p in ports if p > 65535 or port_in_use(p)]
    if busy:
        raise LocalMeshError(
            f"Raft port {busy[0]} is not free: --base-port {base_port} needs {first}-{first + nodes - 1} for Raft"
        )
    return ports


def agent_command(explicit: Sequence[str] | None = None) -> list[str]:
    """The `x0-agent` of this installation: beside this Python first (a venv need not be on PATH)."""
    if explicit:
        return list(explicit)
    beside = Path(sys.executable).parent / "x0-agent"
    if os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("x0-agent")
    if found:
        return [found]
    raise LocalMeshError(f"x0-agent not found beside {sys.executable} or on PATH (pip install -e . in the repo)")


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    kept = [ln for ln in text.splitlines() if ln.strip()][-lines:]
    return "\n    ".join(kept) if kept else "(empty log)"


def _failing_checks(response: httpx.Response) -> str:
    try:
        checks = response.json().get("checks", [])
        bad = [f"{c['name']}: {c['detail']}" for c in checks if not c.get("ok")]
    except (ValueError, AttributeError, KeyError, TypeError):
        return response.text[:200]
    return "; ".join(bad) or response.text[:200]


def _without_proxies(env: dict[str, str]) -> dict[str, str]:
    # A proxy would carry traffic meant for our namespaces off the machine.
    return {k: v for k, v in env.items() if not k.lower().endswith("_proxy")}


class _ExitGuard:
    """SIGTERM → SystemExit in the main thread while any mesh runs (so `with` blocks and fixtures tear down),
    unless the program installed its own handler. Counted, because several meshes may run in one process."""

    _lock = threading.Lock()
    _users = 0
    _installed = False

    @classmethod
    def acquire(cls) -> None:
        with cls._lock:
            cls._users += 1
            if cls._users == 1 and threading.current_thread() is threading.main_thread():
                if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                    signal.signal(signal.SIGTERM, cls._on_sigterm)
                    cls._installed = True

    @classmethod
    def release(cls) -> None:
        with cls._lock:
            cls._users = max(0, cls._users - 1)
            if cls._users == 0 and cls._installed and threading.current_thread() is threading.main_thread():
                if signal.getsignal(signal.SIGTERM) == cls._on_sigterm:
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                cls._installed = False

    @staticmethod
    def _on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP while tearing down (main thread): a second Ctrl-C must not cut a teardown in
    half. Held signals are delivered, and their handlers run, right after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class LocalMesh:
    """A running local mesh. Use as a context manager, or `start()` once and `stop()` once (also after a failed
    start; `stop()` is idempotent). Thread-safe: x0dash drives it from worker threads."""

    def __init__(self, options: MeshOptions | None = None) -> None:
        self.options = options or MeshOptions()
        self.mode: Mode = self.options.mode or default_mode()
        self.links: list[Link] = []
        self.inventory: dict[str, Any] = {}
        self.api_token: str = ""
        self.members_path: Path | None = None
        self.inventory_path: Path | None = None
        self.sd_path: Path | None = None
        self._record: MeshRecord | None = None
        self._nodes: dict[str, NodeHandle] = {}
        self._procs: dict[str, subprocess.Popen[bytes] | ForkedAgent] = {}
        self._zygote: Zygote | None = None
        self._started_at: dict[str, float] = {}
        self._envs: dict[str, dict[str, str]] = {}
        self._argv: list[str] = []
        self._lock = threading.RLock()
        self._state = "new"
        self._guarded = False

    # --- identity -------------------------------------------------------------------------------------------

    @property
    def id(self) -> str:
        if self._record is None:
            raise LocalMeshError("mesh not started")
        return self._record.id

    @property
    def name(self) -> str:
        return naming.mesh_name(self.id)

    @property
    def mesh_dir(self) -> Path:
        if self._record is None:
            raise LocalMeshError("mesh not started")
        return Path(self._record.mesh_dir)

    @property
    def node_ids(self) -> list[str]:
        return list(self._nodes)

    @property
    def nodes(self) -> list[NodeHandle]:
        return list(self._nodes.values())

    @property
    def running(self) -> bool:
        return self._state == "running"

    def node(self, node_id: str) -> NodeHandle:
        try:
            return self._nodes[node_id]
        except KeyError:
            raise LocalMeshError(f"no node {node_id!r} in this mesh (nodes: {', '.join(self._nodes)})") from None

    def __repr__(self) -> str:
        ident = self._record.id if self._record else "-"
        return f"<LocalMesh {ident} {self.mode} nodes={len(self._nodes)} {self._state}>"

    # --- lifecycle ------------------------------------------------------------------------------------------

    def __enter__(self) -> LocalMesh:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> LocalMesh:
        with self._lock:
            if self._state != "new":
                raise LocalMeshError(f"a LocalMesh starts once (state: {self._state})")
            self._state = "starting"
            try:
                self._start()
            except OSError as exc:
                self.stop()
                raise LocalMeshError(f"cannot start the mesh: {exc}") from exc
            except BaseException:
                self.stop()
                raise
            self._state = "running"
            return self

    def _start(self) -> None:
        opts = self.options
        if self.mode not in ("netns", "loopback"):
            raise LocalMeshError(f"mode must be 'netns' or 'loopback', not {self.mode!r}")
        try:
            letters = naming.letters(opts.nodes)
        except ValueError as exc:
            raise LocalMeshError(str(exc)) from None
        if opts.topology not in TOPOLOGIES:
            raise LocalMeshError(f"topology must be one of {', '.join(TOPOLOGIES)}, not {opts.topology!r}")
        ids = [naming.node_id(letter) for letter in letters]
        self.links = plan_links(ids, opts.topology)
        if self.mode == "netns":
            if os.geteuid() != 0:
                raise LocalMeshError(
                    "netns mode needs root (network namespaces, veths, a bridge); run as root or use --loopback"
                )
            try:
                netns.ip_binary()
            except netns.NetnsError as exc:
                raise LocalMeshError(str(exc)) from None
        try:
            binary = find_yggdrasil_binary(opts.yggdrasil_bin or os.environ.get("YGGDRASIL_BIN") or None)
        except YggdrasilBinaryMissing as exc:
            raise LocalMeshError(f"{exc}; set YGGDRASIL_BIN or apt-get install yggdrasil") from None
        self._argv = [*agent_command(opts.agent_command), "serve"]
        if self.mode == "loopback":
            agent_ports, listen_ports = loopback_ports(len(letters), opts.base_port)
            raft_ports = _loopback_raft_ports(len(letters), opts.base_port, [*agent_ports, *listen_ports])
        else:
            if opts.base_port is not None and not 1 <= opts.base_port <= 65534:
                raise LocalMeshError(f"--base-port {opts.base_port}: must be 1-65534 (agent P, Yggdrasil P+1)")
            agent_port = opts.base_port if opts.base_port is not None else NETNS_AGENT_PORT
            listen_port = opts.base_port + 1 if opts.base_port is not None else NETNS_LISTEN_PORT
            agent_ports, listen_ports = [agent_port] * len(letters), [listen_port] * len(letters)
            raft_port = opts.base_port + 2 if opts.base_port is not None else NETNS_RAFT_PORT
            raft_ports = [raft_port] * len(letters)
        self.api_token = opts.api_token or os.environ.get("X0_API_TOKEN") or secrets.token_urlsafe(24)
        run_dir = Path(opts.run_dir).expanduser().resolve()

        def names_in_use() -> set[str]:
            return set(netns.list_netns()) | set(netns.list_links()) if self.mode == "netns" else set()

        try:
            self._record = registry.reserve(
                mode=self.mode,
                letters=letters,
                mesh_dir_for=lambda mesh_id: run_dir / naming.mesh_name(mesh_id),
                names_in_use=names_in_use,
                host_networks=netns.host_ipv4_networks if self.mode == "netns" else None,
            )
        except (OSError, RuntimeError) as exc:
            raise LocalMeshError(f"cannot reserve a mesh id: {exc}") from exc
        self._guard()
        record = self._record
        mesh_dir = self.mesh_dir
        mesh_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(mesh_dir, 0o700)  # private keys inside
        if len(str(mesh_dir / "node-a" / "admin.sock")) > _MAX_SOCKET_PATH:
            record.socket_dir = f"/tmp/x0-{record.id}"
            os.makedirs(record.socket_dir, mode=0o700, exist_ok=True)
        self.inventory_path = (
            Path(opts.inventory).expanduser().resolve() if opts.inventory else mesh_dir / files.INVENTORY_NAME
        )
        self.sd_path = files.sd_path_for(self.inventory_path)
        self.members_path = mesh_dir / "members.json"
        record.owned_files = [str(self.inventory_path), str(self.sd_path)]
        registry.save(record)

        for i, letter in enumerate(letters):
            self._nodes[naming.node_id(letter)] = self._make_node(
                letter, i + 1, agent_ports[i], listen_ports[i], binary, raft_ports[i]
            )
        if self.mode == "netns":
            self._build_network()
        self._write_files()
        if not opts.agent_command:
            self._start_zygote()
        for node_id in self._nodes:
            self._launch(node_id, binary)
        self.wait_healthy(timeout=opts.start_timeout)

    def _make_node(
        self, letter: str, index: int, agent_port: int, listen_port: int, binary: str, raft_port: int
    ) -> NodeHandle:
        assert self._record is not None
        node_id = naming.node_id(letter)
        node_dir = self.mesh_dir / node_id
        node_dir.mkdir(exist_ok=True)
        if self._record.socket_dir:
            sock = Path(self._record.socket_dir) / f"{letter}.sock"
        else:
            sock = node_dir / "admin.sock"
        if self.mode == "netns":
            assert self._record.subnet is not None
            underlay_ip = f"10.213.{self._record.subnet}.{index}"
        else:
            underlay_ip = "127.0.0.1"
        listen_uri = f"tls://{underlay_ip}:{listen_port}"
        config_path = node_dir / "yggdrasil.conf"
        try:
            ident = create_config(
                config_path,
                node_id,
                admin_listen=f"unix://{sock}",
                listen=[listen_uri],
                if_name=NETNS_TUN if self.mode == "netns" else "none",
                binary=binary,
            )
        except (DaemonConfigError, YggdrasilBinaryMissing, OSError) as exc:
            raise LocalMeshError(f"{node_id}: cannot create the Yggdrasil config: {exc}") from exc
        agent_url = f"http://{underlay_ip}:{agent_port}"
        return NodeHandle(
            id=node_id,
            letter=letter,
            index=index,
            agent_url=agent_url,
            metrics_url=f"{agent_url}/metrics",
            overlay_url=f"http://[{ident.address}]:{agent_port}" if self.mode == "netns" else None,
            yggdrasil_address=ident.address,
            yggdrasil_subnet=ident.subnet,
            public_key=ident.public_key,
            listen_uri=listen_uri,
            admin_endpoint=f"unix://{sock}",
            netns=naming.netns_name(self._record.id, letter) if self.mode == "netns" else None,
            underlay_ip=underlay_ip,
            agent_port=agent_port,
            listen_port=listen_port,
            dir=node_dir,
            config_path=config_path,
            log_path=node_dir / "agent.log",
            raft_port=raft_port,
        )

    def _build_network(self) -> None:
        record = self._record
        assert record is not None and record.bridge is not None and record.subnet is not None
        try:
            netns.create_bridge(record.bridge, ipaddress.IPv4Interface(f"10.213.{record.subnet}.254/24"))
            for node in self._nodes.values():
                assert node.netns is not None
                netns.create_node_netns(
                    node.netns,
                    naming.veth_name(record.id, node.letter),
                    record.bridge,
                    ipaddress.IPv4Interface(f"{node.underlay_ip}/24"),
                )
        except netns.NetnsError as exc:
            raise LocalMeshError(f"cannot build the mesh network: {exc}") from exc

    def _write_files(self) -> None:
        assert self.members_path and self.inventory_path and self.sd_path
        nodes = list(self._nodes.values())
        files.write_json(self.members_path, files.members_doc(self.name, self.mode, nodes, self.links), 0o644)
        self.inventory = files.inventory_doc(
            mesh=self.name,
            mode=self.mode,
            api_token=self.api_token,
            members_file=self.members_path,
            sd_file=self.sd_path,
            links=self.links,
            nodes=nodes,
            mesh_dir=self.mesh_dir,
            owner_pid=os.getpid(),
        )
        files.write_json(self.sd_path, files.file_sd_doc(self.name, nodes), 0o644)
        # Last: a reader waiting for the inventory finds the other files already in place.
        files.write_json(self.inventory_path, self.inventory, 0o600)

    def _base_env(self) -> dict[str, str]:
        return {
            k: v
            for k, v in _without_proxies(dict(os.environ)).items()
            if k not in _AGENT_VARS and not k.startswith(_AGENT_PREFIXES)
        }

    def _agent_env(self, node: NodeHandle, binary: str) -> dict[str, str]:
        assert self._record is not None and self.members_path is not None
        env = self._base_env()
        env.update(
            NODE_ID=node.id,
            LISTEN_HOST="::" if self.mode == "netns" else "127.0.0.1",
            LISTEN_PORT=str(node.agent_port),
            LOG_LEVEL=self.options.log_level,
            YGGDRASIL_ADMIN=node.admin_endpoint,
            YGGDRASIL_CONFIG=str(node.config_path),
            YGGDRASIL_BIN=binary,
            MESH_MEMBERS=str(self.members_path),
            X0_API_TOKEN=self.api_token,
            # One host: the underlay is a bridge or loopback on this machine, so the token may travel in clear
            # there (x0dash and tests call the agents' underlay URLs). Explicit, never a default (agent.auth).
            X0_ALLOW_CLEAR_UNDERLAY="true",
            X0_RAFT_PORT=str(node.raft_port),
            X0_RAFT_DIR=str(node.dir / "raft"),
        )
        env[procs.MARKER_ENV] = procs.marker(self._record.id, node.id)
        # The agent's daemon inherits it. One set by the operator is kept.
        env.setdefault("GOMAXPROCS", str(daemon_gomaxprocs(len(self._nodes), os.cpu_count())))
        env.update(self.options.agent_env)
        return env

    @staticmethod
    def _death_signal_prefix() -> list[str]:
        setpriv = shutil.which("setpriv")
        if setpriv and threading.current_thread() is threading.main_thread():
            # The agents die with their owner even when it is SIGKILLed (the kernel signals them). Only from the
            # main thread: the death signal follows the *thread* that forked.
            return [setpriv, "--pdeathsig", "TERM"]
        return []

    def _start_zygote(self) -> None:
        """Agents are forked from one process that imported them once (agent.localmesh.zygote): the import was
        half or more of the CPU an agent's start costs. If it cannot start, agents start as processes of their
        own."""
        assert self._record is not None
        env = self._base_env()
        env[procs.MARKER_ENV] = procs.marker(self._record.id, "zygote")
        env.update({k: v for k, v in self.options.agent_env.items() if not k.startswith(_AGENT_PREFIXES)})
        try:
            self._zygote = Zygote(env, str(self.mesh_dir / "zygote.log"), self._death_signal_prefix()).start()
        except (ZygoteError, OSError) as exc:
            log.warning("local mesh: agents start as processes of their own (%s)", exc)
            self._zygote = None

    def _launch(self, node_id: str, binary: str | None = None) -> None:
        node = self._nodes[node_id]
        if binary is not None:
            self._envs[node_id] = self._agent_env(node, binary)
        zygote = self._zygote
        if zygote is not None and zygote.alive:
            with open(node.log_path, "ab") as out:
                out.write(
                    f"--- x0 local-mesh: starting x0-agent serve, forked from zygote pid {zygote.pid}"
                    f"{' into ' + node.netns if node.netns else ''}, at {time.strftime('%H:%M:%S')}\n".encode()
                )
            self._started_at[node_id] = time.time()
            try:
                self._procs[node_id] = zygote.spawn(
                    node_id, env=self._envs[node_id], cwd=str(node.dir), log=str(node.log_path), netns=node.netns
                )
                return
            except ZygoteError as exc:
                log.warning("local mesh: %s; starting %s as a process of its own", exc, node_id)
        argv = [*self._death_signal_prefix(), *self._argv]
        if node.netns:
            argv = netns.exec_argv(node.netns, argv)
        with open(node.log_path, "ab") as out:
            out.write(f"--- x0 local-mesh: starting {' '.join(argv)} at {time.strftime('%H:%M:%S')}\n".encode())
            out.flush()
            self._started_at[node_id] = time.time()
            self._procs[node_id] = subprocess.Popen(
                argv,
                env=self._envs[node_id],
                cwd=node.dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C in the operator's terminal reaches only local-mesh, which stops the
                # nodes in order.
                start_new_session=True,
            )

    def wait_healthy(self, node_ids: Sequence[str] | None = None, timeout: float | None = None) -> None:
        """Block until every node's /health answers 200; LocalMeshError naming the node (with its log tail)
        if an agent exits or `timeout` passes."""
        timeout = self.options.start_timeout if timeout is None else timeout
        pending = list(node_ids or self._nodes)
        last: dict[str, str] = dict.fromkeys(pending, "no answer yet")
        deadline = time.monotonic() + timeout
        with httpx.Client(trust_env=False, timeout=2.0) as client:
            while pending:
                for node_id in list(pending):
                    node = self.node(node_id)
                    proc = self._procs.get(node_id)
                    if proc is None:
                        raise LocalMeshError(f"{node_id} is stopped")
                    if proc.poll() is not None:
                        raise LocalMeshError(
                            f"{node_id}: agent exited with code {proc.returncode} before /health answered 200; "
                            f"log {node.log_path}:\n    {_tail(node.log_path)}"
                        )
                    try:
                        resp = client.get(f"{node.agent_url}/health")
                    except httpx.HTTPError as exc:
                        last[node_id] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                        continue
                    if resp.status_code == 200:
                        pending.remove(node_id)
                    else:
                        last[node_id] = f"HTTP {resp.status_code}: {_failing_checks(resp)}"
                if not pending:
                    return
                if time.monotonic() >= deadline:
                    first = pending[0]
                    node = self.node(first)
                    raise LocalMeshError(
                        f"{', '.join(pending)} did not come up: {first}'s /health at {node.agent_url} not 200 "
                        f"within {timeout:g} s (last: {last[first]}); "
                        f"log {node.log_path}:\n    {_tail(node.log_path)}"
                    )
                time.sleep(_HEALTH_POLL_S)

    def stop(self) -> list[str]:
        """Stop every process and remove every namespace, veth, bridge, nft table, socket and owned file.
        Idempotent. Returns what could not be removed (also logged; `--cleanup` retries it later)."""
        with self._lock, _signals_held():
            if self._state == "stopped":
                return []
            self._state = "stopping"
            problems: list[str] = []
            destroyed = False
            try:
                # Agents first, politely: each one stops the daemon it supervises.
                live = [p for p in self._procs.values() if p.poll() is None]
                procs.signal_pids([p.pid for p in live], signal.SIGTERM)
                deadline = time.monotonic() + _AGENT_STOP_GRACE_S
                for p in live:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        p.wait(max(0.0, deadline - time.monotonic()))
                if self._zygote is not None:
                    self._zygote.close()
            finally:
                try:
                    if self._record is not None:
                        problems = cleanup.destroy(self._record)
                    destroyed = True
                finally:
                    for p in self._procs.values():
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            p.wait(2.0)
                    if destroyed:  # otherwise a later stop() (atexit at the latest) tries again
                        self._procs.clear()
                        self._unguard()
                        self._state = "stopped"
            for problem in problems:
                log.warning("local mesh %s teardown: %s", self._record.id if self._record else "?", problem)
            return problems

    def _guard(self) -> None:
        atexit.register(self.stop)
        _ExitGuard.acquire()
        self._guarded = True

    def _unguard(self) -> None:
        if self._guarded:
            atexit.unregister(self.stop)
            _ExitGuard.release()
            self._guarded = False

    # --- node operations ----------------------------------------------------------------------------------

    def is_running(self, node_id: str) -> bool:
        proc = self._procs.get(node_id)
        return proc is not None and proc.poll() is None

    def agent_pid(self, node_id: str) -> int | None:
        self.node(node_id)
        proc = self._procs.get(node_id)
        return proc.pid if proc is not None and proc.poll() is None else None

    def daemon_pid(self, node_id: str) -> int | None:
        """The node's running yggdrasil process (child of its agent), if any."""
        pids = [p for p in procs.daemon_pids(self.node(node_id).dir) if procs.alive(p)]
        return pids[0] if pids else None

    def started_at(self, node_id: str) -> float:
        """Wall-clock time (unix s) the node's agent process was last started."""
        self.node(node_id)
        return self._started_at[node_id]

    def stop_node(self, node_id: str) -> None:
        """Node loss: SIGKILL the node's agent and daemon at once (links drop as on a crash). Keys, config,
        addresses and, in netns mode, the namespace stay for start_node."""
        with self._lock:
            node = self.node(node_id)
            assert self._record is not None
            proc = self._procs.pop(node_id, None)
            pids = set(procs.marked_pids(self._record.id, node_id)) | set(procs.daemon_pids(node.dir))
            if node.netns:
                pids |= set(netns.netns_pids(node.netns))
            if proc is not None and proc.poll() is None:
                pids.add(proc.pid)
            survivors = procs.kill_all(pids)
            if proc is not None:
                proc.wait(5.0)
            sock = node.admin_endpoint.removeprefix("unix://")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(sock)  # a killed daemon leaves its socket file behind
            if survivors:
                raise LocalMeshError(f"{node_id}: processes {survivors} survived SIGKILL")

    def start_node(self, node_id: str, wait: bool = True, timeout: float | None = None) -> None:
        """Start a stopped node again with the same keys, config and ports; by default wait for /health 200."""
        with self._lock:
            self.node(node_id)
            if self._state != "running":
                raise LocalMeshError(f"mesh is {self._state}")
            if self.is_running(node_id):
                raise LocalMeshError(f"{node_id} is already running (agent pid {self._procs[node_id].pid})")
            self._launch(node_id)
        if wait:
            self.wait_healthy([node_id], timeout)

    def run_in_node(
        self,
        node_id: str,
        argv: Sequence[str],
        *,
        timeout: float = 30.0,
        check: bool = False,
        input: str | None = None,  # same name as subprocess.run's
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the node's namespace (netns mode) or on the host (loopback: there is no
        namespace). Output is captured as text; proxies are removed from its environment."""
        node = self.node(node_id)
        full = netns.exec_argv(node.netns, argv) if node.netns else list(argv)
        return subprocess.run(
            full,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            env=_without_proxies(dict(os.environ)),
        )
