"""Agent configuration from the environment (docs/contracts.md §1), validated once at start.

Every problem is reported as a `SettingsError` naming the variable, so `x0-agent` can exit 2 with a message an
operator can act on instead of failing later with a traceback.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import msgspec

from agent.yggdrasil.client import parse_endpoint
from agent.yggdrasil.daemon_config import YggdrasilBinaryMissing, find_yggdrasil_binary

LogLevel = Literal["debug", "info", "warning", "error"]
RaftTransport = Literal["auto", "overlay"]

NODE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
DEFAULT_ADMIN = "unix:///var/run/yggdrasil/yggdrasil.sock"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class SettingsError(ValueError):
    """One invalid environment variable; `str()` is the message shown to the operator."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable
        self.message = message


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    node_id: str
    listen_host: str = "::"
    listen_port: int = 8080
    log_level: LogLevel = "info"
    yggdrasil_admin: str = DEFAULT_ADMIN
    yggdrasil_peers: tuple[str, ...] = ()
    yggdrasil_config: Path | None = None
    # Resolved binary; only looked up (and required) when the agent supervises the daemon.
    yggdrasil_bin: str | None = None
    daemon_restart_delay: float = 3.0
    mesh_members: Path | None = None
    monitor_interval: float = 1.0
    admin_timeout: float = 2.0
    api_token: str | None = None
    # Peer admission (agent.admission): the daemon (supervised, or through admission_file) admits only the
    # members' keys; False: the agent leaves AllowedPublicKeys alone.
    peer_admission: bool = True
    # The daemon's log to report refused peers from when the agent does not run the daemon itself.
    daemon_log: Path | None = None
    # When the daemon is not the agent's (a Nomad sidecar task): the file its start script merges into the
    # config's AllowedPublicKeys; the agent keeps it current and asks for a restart through `<file>.restart`.
    admission_file: Path | None = None
    # Mutations (they carry the token) over plain HTTP on the underlay: refused unless allowed (agent.auth).
    allow_clear_underlay: bool = False
    # Serve HTTPS with this certificate chain and key (PEM); both or neither.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # CA (PEM) the agent trusts when it calls other agents over https (forwarded writes), beside the system's.
    tls_ca: Path | None = None
    # HTTP server limits (agent.api.server): open connections, seconds to complete a request.
    http_max_connections: int = 512
    http_request_timeout: float = 10.0
    mapek_enabled: bool = True
    mapek_interval: float = 1.0
    mapek_degree: int = 2
    # Consensus (agent.consensus, contracts §7). raft_dir None keeps the journal in memory (in-process tests);
    # from_env always gives a directory.
    raft_enabled: bool = True
    raft_voters: int = 5
    raft_port: int = 8082
    raft_dir: Path | None = None
    raft_secret: str | None = None
    raft_replace_after: float = 60.0
    raft_write_timeout: float = 2.0
    # How far apart members' clocks may be: the slack on a write's X-X0-Deadline (contracts §7).
    raft_clock_skew: float = 1.0
    # auto: a member's raft_address, else its overlay address, else its agent URL's host (contracts §7);
    # overlay: always its overlay address, learned from the member's agent when the members file has none (Nomad).
    raft_transport: RaftTransport = "auto"

    @property
    def supervises_daemon(self) -> bool:
        return self.yggdrasil_config is not None

    @property
    def stale_after(self) -> float:
        """Age after which the latest daemon snapshot no longer proves the daemon is alive.

        Two ticks: a daemon that dies or hangs right after a good snapshot is reported within about 2 s at the
        default 1 s interval, without flapping when one snapshot is merely slow.
        """
        return max(2.0 * self.monitor_interval, self.monitor_interval + 1.0)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every variable of contracts §1; raises SettingsError on the first bad one."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name)
            if value is None:
                return None
            value = value.strip()
            return value or None

        node_id = get("NODE_ID")
        if node_id is None:
            raise SettingsError("NODE_ID", "required (this member's id, e.g. node-a)")
        if not NODE_ID_RE.match(node_id):
            raise SettingsError("NODE_ID", f"must match [a-z0-9][a-z0-9-]{{0,62}} (got {node_id!r})")

        listen_host = get("LISTEN_HOST") or "::"
        if any(c.isspace() for c in listen_host) or "/" in listen_host:
            raise SettingsError("LISTEN_HOST", f"not a host or address (got {listen_host!r})")

        config_raw = get("YGGDRASIL_CONFIG")
        config: Path | None = None
        binary: str | None = None
        if config_raw is not None:
            config = Path(config_raw)
            if not config.is_file():
                raise SettingsError("YGGDRASIL_CONFIG", f"no such file: {config}")
            if not os.access(config, os.R_OK):
                raise SettingsError("YGGDRASIL_CONFIG", f"not readable: {config}")
            binary = _resolve_binary(get("YGGDRASIL_BIN"))

        members_raw = get("MESH_MEMBERS")
        tls_cert, tls_key = _tls_files(get("X0_TLS_CERT"), get("X0_TLS_KEY"))
        return cls(
            node_id=node_id,
            listen_host=listen_host,
            listen_port=_int(get("LISTEN_PORT"), "LISTEN_PORT", 8080, 1, 65535),
            log_level=_log_level(get("LOG_LEVEL")),
            yggdrasil_admin=_admin_endpoint(get("YGGDRASIL_ADMIN") or DEFAULT_ADMIN),
            yggdrasil_peers=_peer_uris(get("YGGDRASIL_PEERS")),
            yggdrasil_config=config,
            yggdrasil_bin=binary,
            daemon_restart_delay=_float(
                get("X0_DAEMON_RESTART_DELAY"), "X0_DAEMON_RESTART_DELAY", 3.0, 0.0, 3600.0
            ),
            # A missing members file is not fatal: it may be written after the agent starts (Nomad template);
            # /health reports it until it appears.
            mesh_members=Path(members_raw) if members_raw else None,
            monitor_interval=_float(get("X0_MONITOR_INTERVAL"), "X0_MONITOR_INTERVAL", 1.0, 0.05, 60.0),
            admin_timeout=_float(get("X0_ADMIN_TIMEOUT"), "X0_ADMIN_TIMEOUT", 2.0, 0.05, 60.0),
            api_token=get("X0_API_TOKEN"),
            peer_admission=_bool(get("X0_PEER_ADMISSION"), "X0_PEER_ADMISSION", True),
            daemon_log=Path(get("X0_DAEMON_LOG")) if get("X0_DAEMON_LOG") else None,
            admission_file=Path(get("X0_ADMISSION_FILE")) if get("X0_ADMISSION_FILE") else None,
            allow_clear_underlay=_bool(get("X0_ALLOW_CLEAR_UNDERLAY"), "X0_ALLOW_CLEAR_UNDERLAY", False),
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_ca=_readable_file(get("X0_TLS_CA"), "X0_TLS_CA"),
            http_max_connections=_int(get("X0_HTTP_MAX_CONNECTIONS"), "X0_HTTP_MAX_CONNECTIONS", 512, 16, 100000),
            http_request_timeout=_float(
                get("X0_HTTP_REQUEST_TIMEOUT"), "X0_HTTP_REQUEST_TIMEOUT", 10.0, 0.5, 600.0
            ),
            mapek_enabled=_bool(get("X0_MAPEK_ENABLED"), "X0_MAPEK_ENABLED", True),
            mapek_interval=_float(get("X0_MAPEK_INTERVAL"), "X0_MAPEK_INTERVAL", 1.0, 0.05, 60.0),
            mapek_degree=_int(get("X0_MAPEK_DEGREE"), "X0_MAPEK_DEGREE", 2, 1, 64),
            raft_enabled=_bool(get("X0_RAFT_ENABLED"), "X0_RAFT_ENABLED", True),
            raft_voters=_int(get("X0_RAFT_VOTERS"), "X0_RAFT_VOTERS", 5, 1, 9),
            raft_port=_int(get("X0_RAFT_PORT"), "X0_RAFT_PORT", 8082, 1, 65535),
            raft_dir=_directory(get("X0_RAFT_DIR"), "X0_RAFT_DIR", Path("raft")),
            raft_secret=get("X0_RAFT_SECRET"),
            raft_replace_after=_float(get("X0_RAFT_REPLACE_AFTER"), "X0_RAFT_REPLACE_AFTER", 60.0, 1.0, 86400.0),
            raft_write_timeout=_float(get("X0_RAFT_WRITE_TIMEOUT"), "X0_RAFT_WRITE_TIMEOUT", 2.0, 0.1, 60.0),
            raft_clock_skew=_float(get("X0_RAFT_CLOCK_SKEW"), "X0_RAFT_CLOCK_SKEW", 1.0, 0.0, 60.0),
            raft_transport=_raft_transport(get("X0_RAFT_TRANSPORT")),
        )

    @property
    def raft_key(self) -> str | None:
        """The secret Raft's transport is keyed from: X0_RAFT_SECRET, else the API token, else None (Raft
        refuses to start: its messages are pickles, so an unauthenticated port would run anyone's code)."""
        return self.raft_secret or self.api_token


def _int(raw: str | None, name: str, default: int, lo: int, hi: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(name, f"must be an integer {lo}..{hi} (got {raw!r})") from None
    if not lo <= value <= hi:
        raise SettingsError(name, f"must be an integer {lo}..{hi} (got {value})")
    return value


def _float(raw: str | None, name: str, default: float, lo: float, hi: float) -> float:
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(name, f"must be a number of seconds {lo:g}..{hi:g} (got {raw!r})") from None
    if not lo <= value <= hi:  # also rejects nan
        raise SettingsError(name, f"must be a number of seconds {lo:g}..{hi:g} (got {raw!r})")
    return value


def _bool(raw: str | None, name: str, default: bool) -> bool:
    if raw is None:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise SettingsError(name, f"must be true or false (got {raw!r})")


def _directory(raw: str | None, name: str, default: Path) -> Path:
    path = Path(raw) if raw is not None else default
    if path.exists() and not path.is_dir():
        raise SettingsError(name, f"not a directory: {path}")
    return path


def _tls_files(cert: str | None, key: str | None) -> tuple[Path | None, Path | None]:
    """Both or neither; each a readable file. The pair itself is checked when the server loads it."""
    if cert is None and key is None:
        return None, None
    if cert is None or key is None:
        missing, given = ("X0_TLS_CERT", "X0_TLS_KEY") if cert is None else ("X0_TLS_KEY", "X0_TLS_CERT")
        raise SettingsError(missing, f"required with {given} (HTTPS needs the certificate chain and its key)")
    return _readable_file(cert, "X0_TLS_CERT"), _readable_file(key, "X0_TLS_KEY")


def _readable_file(raw: str | None, name: str) -> Path | None:
    if raw is None:
        return None
    path = Path(raw)
    if not path.is_file():
        raise SettingsError(name, f"no such file: {path}")
    if not os.access(path, os.R_OK):
        raise SettingsError(name, f"not readable: {path}")
    return path


def _log_level(raw: str | None) -> LogLevel:
    value = (raw or "info").lower()
    if value == "warn":
        value = "warning"
    if value not in ("debug", "info", "warning", "error"):
        raise SettingsError("LOG_LEVEL", f"must be one of debug, info, warning, error (got {raw!r})")
    return value  # type: ignore[return-value]


def _raft_transport(raw: str | None) -> RaftTransport:
    value = (raw or "auto").strip().lower()
    if value not in ("auto", "overlay"):
        raise SettingsError(
            "X0_RAFT_TRANSPORT", f"must be auto (the members file's addresses) or overlay (got {raw!r})"
        )
    return value  # type: ignore[return-value]


def _admin_endpoint(raw: str) -> str:
    try:
        parse_endpoint(raw)
    except ValueError as exc:
        raise SettingsError("YGGDRASIL_ADMIN", f"must be unix:///path or tcp://host:port ({exc})") from None
    return raw


def _peer_uris(raw: str | None) -> tuple[str, ...]:
    if raw is None:
        return ()
    uris = tuple(part.strip() for part in raw.split(",") if part.strip())
    for uri in uris:
        scheme, sep, rest = uri.partition("://")
        if not sep or not scheme or not rest or any(c.isspace() for c in uri):
            raise SettingsError("YGGDRASIL_PEERS", f"not a peer URI like tls://host:port (got {uri!r})")
    return uris


def _resolve_binary(raw: str | None) -> str:
    try:
        return find_yggdrasil_binary(raw)
    except YggdrasilBinaryMissing as exc:
        raise SettingsError(
            "YGGDRASIL_BIN", f"{exc}; YGGDRASIL_CONFIG asks the agent to run the daemon, so it needs the binary"
        ) from None
