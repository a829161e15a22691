"""`x0-agent local-mesh`: start a real local mesh, print where everything is, run until Ctrl-C/SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from agent.localmesh import cleanup, naming
from agent.localmesh.mesh import LocalMesh
from agent.localmesh.model import (
    DEFAULT_START_TIMEOUT_S,
    NETNS_AGENT_PORT,
    NETNS_LISTEN_PORT,
    LocalMeshError,
    MeshOptions,
)
from agent.topology import AUTO_FULL_MAX, EXPANDER_RINGS, TOPOLOGIES

PROG = "x0-agent local-mesh"

DESCRIPTION = """\
Start a real Yggdrasil mesh on this machine: N Yggdrasil daemons with freshly generated keys and N x0-agent
processes (each agent supervises its own daemon), named node-a, node-b, ... It runs in the foreground until
Ctrl-C or SIGTERM, then stops every process and removes every namespace, veth, bridge and socket it created."""

EPILOG = f"""\
modes:
  --netns     (default as root) every node gets its own network namespace x0-<id>-<letter> with lo, eth0 on a
              private bridge x0b<id> (subnet 10.213.N.0/24: the host is .254, node-a .1, node-b .2, ...) and the
              daemon's TUN ygg0. Daemon and agent run inside the namespace. Every node uses the same ports:
              agent {NETNS_AGENT_PORT}, Yggdrasil tls:// {NETNS_LISTEN_PORT} (--base-port P: P and P+1). The host
              reaches agents at http://10.213.N.i:{NETNS_AGENT_PORT}; nodes reach each other's agents over their
              Yggdrasil addresses too. Namespaces have no default route: nothing leaves the machine.
  --loopback  (default without root) daemons without TUN (IfName "none") listening on 127.0.0.1, agents on
              127.0.0.1. Ports are free ones picked by the kernel, or with --base-port P: agents P..P+N-1,
              daemons P+N..P+2N-1 (all must be free). No overlay traffic and no network faults in this mode.

links:
  --topology auto|full|ring|chain|expander plans the links; only the first node of each planned pair dials
  (addPeer), so every pair holds exactly one Yggdrasil link. expander (the auto choice above 8 nodes) is the
  union of 2 rings over the node ids (one in id order, one in hash order): at most 4 links per node and a
  diameter that grows as log N, where full needs N(N-1)/2 links and a ring's diameter is N/2.

files (in --run-dir/local-<id>/ unless said otherwise):
  members.json            the members file every agent reads (MESH_MEMBERS; docs/contracts.md section 2)
  inventory.json          --inventory FILE moves it; mode 0600: it holds the API token (section 4);
                          x0dash reads it: x0dash --inventory FILE
  prometheus-targets.json beside the inventory: Prometheus file_sd targets, labels node_id and mesh
                          (`just mesh` writes run/inventory.json, so run/prometheus-targets.json)
  node-x/yggdrasil.conf   keys and config (0600)
  node-x/agent.log        the agent's log; node-x/yggdrasil.log the daemon's
  Logs and configs stay after the mesh stops; the inventory, targets and sockets are removed.

environment:
  X0_API_TOKEN   bearer token given to every agent and written to the inventory (default: a random one);
                 needed for drills (POST /drills)
  YGGDRASIL_BIN  daemon binary (default: yggdrasil on PATH, then /usr/sbin/yggdrasil)
  GOMAXPROCS     threads per daemon (default: this host's cores / nodes, at least 1: the daemons share the host)

cleanup:
  Stopping normally leaves nothing behind. After a crash (e.g. SIGKILL), `{PROG} --cleanup`
  removes the processes, namespaces, veths, bridges and sockets of every mesh whose owner process is gone;
  meshes whose owner is running are never touched.

exit status: 0 stopped cleanly (Ctrl-C/SIGTERM), 1 could not start or left something behind, 2 bad arguments.

examples:
  {PROG} --nodes 3                       # netns as root, loopback otherwise
  {PROG} --nodes 5 --topology ring --inventory run/inventory.json
  {PROG} --nodes 20                      # expander: 39 links, not 190
  {PROG} --loopback --nodes 3 --base-port 18000
  {PROG} --cleanup
"""


def _node_count(value: str) -> int:
    # Checked by the parser, so a bad count is a usage error (exit 2) like every other bad argument.
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if not 1 <= n <= naming.MAX_NODES:
        raise argparse.ArgumentTypeError(
            f"must be 1-{naming.MAX_NODES} (nodes are named node-a .. node-z, node-aa, ...), got {n}"
        )
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--nodes", type=_node_count, default=3, metavar="N", help=f"number of nodes, 1-{naming.MAX_NODES} (3)"
    )
    p.add_argument(
        "--topology",
        choices=TOPOLOGIES,
        default="auto",
        help=f"planned links (auto: full up to {AUTO_FULL_MAX} nodes, expander above: at most "
        f"{2 * EXPANDER_RINGS} links per node, diameter ~log N)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--netns", dest="mode", action="store_const", const="netns", help="namespaces (needs root)")
    mode.add_argument("--loopback", dest="mode", action="store_const", const="loopback", help="127.0.0.1, no root")
    p.add_argument("--inventory", type=Path, metavar="FILE", help="where to write the inventory (see files)")
    p.add_argument(
        "--run-dir", type=Path, default=Path("run"), metavar="DIR", help="parent of the mesh dir (./run)"
    )
    p.add_argument("--base-port", type=int, metavar="P", help="first port (see modes)")
    p.add_argument(
        "--start-timeout",
        type=float,
        default=DEFAULT_START_TIMEOUT_S,
        metavar="S",
        help=f"seconds to wait for every agent's /health to answer 200 ({DEFAULT_START_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), default="info", help="agents' log"
    )
    p.add_argument(
        "--cleanup", action="store_true", help="remove leftovers of meshes whose owner process is gone, then exit"
    )
    return p


def format_table(mesh: LocalMesh) -> str:
    rows = [("NODE", "AGENT", "YGGDRASIL ADDRESS", "LISTEN", "NETNS", "ADMIN")]
    for n in mesh.nodes:
        rows.append((n.id, n.agent_url, n.yggdrasil_address, n.listen_uri, n.netns or "-", n.admin_endpoint))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    links = ", ".join(f"{a}->{b}" for a, b in mesh.links) or "none"
    out = [*lines, "", f"links (dialer->acceptor): {links}"]
    if mesh.mode == "netns":
        out.append(f"overlay: each agent also answers at http://[<yggdrasil address>]:{mesh.nodes[0].agent_port}")
    out += [
        f"inventory:  {mesh.inventory_path} (0600, holds the API token)",
        f"members:    {mesh.members_path}",
        f"prometheus: {mesh.sd_path} (file_sd)",
        f"logs:       {mesh.mesh_dir}/node-*/agent.log",
    ]
    return "\n".join(out)


class _Stop(BaseException):
    """Raised by the signal handler: unwinds start-up or the wait loop into the teardown."""


def _run_cleanup() -> int:
    report = cleanup.cleanup_leftovers()
    for line in report.removed:
        print(f"removed {line}")
    for line in report.kept:
        print(f"kept    {line}")
    for line in report.problems:
        print(f"FAILED  {line}", file=sys.stderr)
    if not (report.removed or report.kept or report.problems):
        print("nothing to clean up")
    return 1 if report.problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(message)s")
    if args.cleanup:
        return _run_cleanup()
    if args.mode == "netns" and os.geteuid() != 0:
        print(
            f"{PROG}: --netns needs root (namespaces, veths, a bridge); run as root or use --loopback",
            file=sys.stderr,
        )
        return 1
    options = MeshOptions(
        nodes=args.nodes,
        topology=args.topology,
        mode=args.mode,
        run_dir=args.run_dir,
        inventory=args.inventory,
        base_port=args.base_port,
        start_timeout=args.start_timeout,
        log_level=args.log_level,
    )
    stopping = False
    # The handler's exception can land where Python ignores it (a suite pass saw it raised inside importlib's
    # module-lock weakref callback: "Exception ignored", the mesh came up and ran on): the signal is also kept
    # here, and checked once the start returns and while the mesh runs.
    received: list[str] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping:
            return  # already tearing down; a second Ctrl-C must not interrupt the teardown
        stopping = True
        received.append(signal.Signals(signum).name)
        raise _Stop(received[0])

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    mesh = LocalMesh(options)
    rc = 0
    started = time.monotonic()
    try:
        plural = "s" if args.nodes != 1 else ""
        print(f"{PROG}: starting {args.nodes} node{plural} ({mesh.mode}, {args.topology}) ...", flush=True)
        mesh.start()
        if received:
            raise _Stop(received[0])
        print(f"{PROG}: mesh {mesh.name} up in {time.monotonic() - started:.1f} s", flush=True)
        print(format_table(mesh), flush=True)
        if mesh.mode == "loopback":
            print("loopback mode: no TUN, so no overlay traffic and no network drills; use root for --netns")
        print("Ctrl-C or SIGTERM stops everything.", flush=True)
        reported: set[str] = set()
        while not received:
            time.sleep(0.2)
            for node_id in mesh.node_ids:
                if node_id not in reported and not mesh.is_running(node_id):
                    reported.add(node_id)
                    print(f"{PROG}: {node_id}'s agent exited; see {mesh.node(node_id).log_path}", flush=True)
        raise _Stop(received[0])
    except _Stop as stop:
        stopping = True
        print(f"{PROG}: {stop} received, stopping ...", flush=True)
    except LocalMeshError as exc:
        stopping = True
        print(f"{PROG}: {exc}", file=sys.stderr, flush=True)
        rc = 1
    finally:
        stopping = True
        problems = mesh.stop()
    if problems:
        for problem in problems:
            print(f"{PROG}: left behind: {problem} (retry with {PROG} --cleanup)", file=sys.stderr)
        return 1
    if rc == 0:
        print(f"{PROG}: stopped; nothing left behind", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
