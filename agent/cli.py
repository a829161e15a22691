"""`x0-agent`: run the agent (default, or `x0-agent serve`), or `x0-agent local-mesh ...`.

Exit codes: 0 stopped (SIGTERM, Ctrl-C), 1 runtime failure at start (port in use, start-up failure),
2 invalid configuration (the message names the variable).
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import errno
import logging
import signal
import socket
import sys
from collections.abc import Sequence

from agent import __version__
from agent.logfilter import RepeatFilter
from agent.settings import Settings, SettingsError

EXIT_CONFIG = 2
EXIT_RUNTIME = 1
COMMANDS = ("serve", "local-mesh")

_ENV_HELP = """\
configuration (environment; full table in docs/contracts.md §1):
  NODE_ID                  this member's id (required), e.g. node-a
  LISTEN_HOST, LISTEN_PORT HTTP bind address and port (default :: and 8080)
  LOG_LEVEL                debug | info | warning | error (default info)
  YGGDRASIL_ADMIN          daemon admin endpoint (default unix:///var/run/yggdrasil/yggdrasil.sock)
  YGGDRASIL_PEERS          comma-separated peer URIs to add at start
  YGGDRASIL_CONFIG         run and supervise `yggdrasil -useconffile` with this config
  YGGDRASIL_BIN            daemon binary when supervising (default: yggdrasil on PATH, /usr/sbin/yggdrasil)
  X0_DAEMON_RESTART_DELAY  seconds before a supervised daemon is restarted (default 3)
  MESH_MEMBERS             members file (JSON, docs/contracts.md §2), re-read when it changes
  X0_MONITOR_INTERVAL      seconds between daemon snapshots (default 1.0)
  X0_ADMIN_TIMEOUT         seconds per admin-socket call (default 2.0)
  X0_API_TOKEN             bearer token for mutating endpoints (unset: they are refused)
  X0_TLS_CERT, X0_TLS_KEY  PEM certificate chain and key: serve https (both or neither)
  X0_TLS_CA                PEM CA trusted for other agents' https (forwarded writes), beside the system store
  X0_ALLOW_CLEAR_UNDERLAY  accept mutations in clear HTTP over the underlay (default false: only over https,
                           the Yggdrasil overlay or loopback; set it for a mesh on one host only)
  X0_HTTP_MAX_CONNECTIONS  open HTTP connections at most (default 512; idle ones are evicted first)
  X0_HTTP_REQUEST_TIMEOUT  seconds a connection has to complete a request (default 10)
  X0_PEER_ADMISSION        supervised daemon admits only the members' keys (AllowedPublicKeys; default true)
  X0_DAEMON_LOG            daemon log to report refused peers from, when the agent does not run the daemon
  X0_ADMISSION_FILE        keys file a daemon not run by the agent admits (AllowedPublicKeys; Nomad)
  X0_MAPEK_ENABLED, X0_MAPEK_INTERVAL, X0_MAPEK_DEGREE   self-healing loop

example:
  NODE_ID=node-a LISTEN_PORT=8080 YGGDRASIL_CONFIG=/etc/yggdrasil/yggdrasil.conf \\
    YGGDRASIL_ADMIN=unix:///var/run/yggdrasil/yggdrasil.sock x0-agent

exit codes: 0 stopped (SIGTERM/Ctrl-C), 1 could not start (e.g. port in use), 2 invalid configuration
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="x0-agent",
        usage="x0-agent [-h] [--version] [serve | local-mesh ...]",
        description="x0tta6bl4 mesh agent: serves /health, /mesh/*, /metrics beside a Yggdrasil daemon.\n\n"
        "commands:\n  serve        run the agent (the default)\n"
        "  local-mesh   start a local mesh of daemons and agents (x0-agent local-mesh --help)",
        epilog=_ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("command", nargs="?", default="serve", choices=COMMANDS, help=argparse.SUPPRESS)
    p.add_argument("--version", action="version", version=f"x0-agent {__version__}")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and not args[0].startswith("-") and args[0] not in COMMANDS:
        # argparse alone lists the choices but does not say which one was meant (a typo of local-mesh).
        close = difflib.get_close_matches(args[0], COMMANDS, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        _parser().error(f"unknown command {args[0]!r} (commands: {', '.join(COMMANDS)}){hint}")
    if args and args[0] == "local-mesh":
        # Imported lazily: the mesh launcher pulls in namespace/process tooling the agent itself never needs.
        from agent.localmesh.cli import main as local_mesh_main

        return local_mesh_main(args[1:])
    _parser().parse_args(args)
    return serve()


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    # On the handler, so records of every logger (asyncio's accept errors, uvicorn's bad requests) pass it.
    for handler in logging.getLogger().handlers:
        handler.addFilter(RepeatFilter())


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket for uvicorn, bound before anything else starts so a busy port fails fast.
    `::` is dual-stack (underlay IPv4 and Yggdrasil IPv6)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(addr)
        sock.listen(2048)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def serve() -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"x0-agent: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    _configure_logging(settings.log_level)
    where = (
        f"[{settings.listen_host}]:{settings.listen_port}"
        if ":" in settings.listen_host
        else (f"{settings.listen_host}:{settings.listen_port}")
    )
    try:
        sock = bind_socket(settings.listen_host, settings.listen_port)
    except socket.gaierror as exc:
        print(
            f"x0-agent: invalid configuration: LISTEN_HOST: cannot resolve {settings.listen_host!r}: "
            f"{exc.strerror}",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            print(
                f"x0-agent: cannot listen on {where}: address already in use (another process holds "
                f"LISTEN_PORT {settings.listen_port})",
                file=sys.stderr,
            )
            return EXIT_RUNTIME
        if exc.errno == errno.EADDRNOTAVAIL:
            print(
                f"x0-agent: invalid configuration: LISTEN_HOST: {settings.listen_host!r} is not an address of "
                "this host",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        print(f"x0-agent: cannot listen on {where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_RUNTIME

    import uvicorn
    from prometheus_client import disable_created_metrics

    from agent.api.app import create_app

    # `_created` samples double every counter/histogram in the exposition and Prometheus stores them as separate
    # series; nothing here reads them. Process-wide, which is fine in the agent's own process.
    disable_created_metrics()

    from agent.api.server import QuietServer, ServerLimits, fd_budget, protocol_class
    from agent.memory import map_large_blocks_apart, prepare_gc_for_serving

    map_large_blocks_apart()
    app = create_app(settings)
    cap, fd_limit = fd_budget(settings.http_max_connections)
    limits = ServerLimits(max_connections=cap, request_timeout=settings.http_request_timeout)
    config = uvicorn.Config(
        app,
        lifespan="on",
        log_config=None,
        log_level=settings.log_level,
        access_log=False,
        # Connection cap, request deadline, URL/header limits and JSON errors (agent.api.server).
        http=protocol_class(limits),
        timeout_keep_alive=int(limits.keep_alive),
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
    )
    try:
        config.load()  # builds the TLS context now: a bad certificate or key is a configuration error
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        print(f"x0-agent: invalid configuration: X0_TLS_CERT/X0_TLS_KEY: {exc}", file=sys.stderr)
        sock.close()
        return EXIT_CONFIG
    server = QuietServer(config)
    frozen = prepare_gc_for_serving()
    logging.getLogger("x0.agent").info(
        "x0-agent %s node %s listening on %s %s (at most %d connections of %d descriptors; admin %s%s)",
        __version__,
        settings.node_id,
        "https" if settings.tls_cert else "http",
        where,
        cap,
        fd_limit,
        settings.yggdrasil_admin,
        ", supervising the daemon" if settings.supervises_daemon else "",
    )
    logging.getLogger("x0.agent").debug("%d start-up objects frozen out of the garbage collector's passes", frozen)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal with the handler that was in place
    # before it started: make that a clean exit 0 (stopped as asked) instead of death by signal or a traceback.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        asyncio.run(server.serve(sockets=[sock]))
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        sock.close()
    if not server.started:
        print("x0-agent: start-up failed (see the log above)", file=sys.stderr)
        return EXIT_RUNTIME
    return 0


if __name__ == "__main__":
    sys.exit(main())
