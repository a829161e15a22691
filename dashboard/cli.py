"""`x0dash`: the terminal dashboard, and `x0dash drill` for headless drills (CI, game days)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shlex
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from agent import __version__
from dashboard.drills.engine import (
    DEADLINE_RANGE,
    DEFAULT_DRAIN_DEADLINE_S,
    DRILL_KINDS,
    DURATION_RANGE,
    SETTLE_S,
    DrillEngine,
    DrillPlan,
    DrillRefused,
    DrillStep,
)
from dashboard.drills.filing import file_report, filing_nodes
from dashboard.drills.report import DEFAULT_REPORTS_DIR, save, to_json, to_markdown
from dashboard.drills.scoring import SLO
from dashboard.providers.base import Provider, ProviderError
from dashboard.session import MeshSession

EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_SOURCE = 0, 1, 2, 3
DEFAULT_LOCAL_NODES = 3

DESCRIPTION = """\
x0dash: watch an x0tta6bl4 mesh live (topology, node health, MAPE-K incidents and heal actions) and run
failover drills that measure how fast the mesh detects and repairs a fault.

Sources (pick one; default: a local mesh of 3 nodes, or Nomad when NOMAD_ADDR is set):
  --local N          start a local mesh of N nodes for this session and stop it on exit
                     (network namespaces when run as root, loopback otherwise)
  --inventory FILE   an existing mesh described by an inventory file (x0-agent local-mesh --inventory FILE)
  --nomad ADDR       a Nomad cluster (also NOMAD_ADDR, NOMAD_TOKEN, NOMAD_NAMESPACE, NOMAD_REGION,
                     NOMAD_CACERT, NOMAD_CLIENT_CERT, NOMAD_CLIENT_KEY); --job names the mesh job

Keys: enter node detail (L its logs), j/k/g/G move, N/H/I/P sort, / filter, l then enter an event in full,
d drills, a abort a drill, D drill history and trends, : or ctrl+p command palette, ? help, q or ctrl+c quit.
"""

EPILOG = """\
headless drills:
  x0dash drill blackhole --target node-b --duration 10          prints a Markdown report
  x0dash --inventory run/inventory.json drill partition --target node-a --json
  kinds: blackhole (target silently drops its Yggdrasil traffic), partition (target cut off),
         node-loss (the source stops the node; else the agent kills its Yggdrasil daemon; Nomad: stops the
         allocation and the drill ends once the replacement allocation's agent is healthy and the mesh whole),
         leader-loss (a node loss of whichever node leads the Raft group: --target leader; with partition and
         blackhole of the leader it runs a store workload and reports time to a new leader, write
         unavailability and a consistency verdict)
  Nomad only: restart-alloc (Nomad restarts the allocation in place; --task for one task),
         drain (drains the Nomad node running the target with --deadline S, undone after --duration or on
         Ctrl-C: eligibility restored)
  x0dash --nomad http://127.0.0.1:4646 drill drain --target node-b --deadline 30 --duration 20
  exit status: 0 every SLO met and the mesh back to its steady state, 1 an SLO failed or the mesh did not
  recover, 2 drill refused (unknown node, another drill running, no API token, mesh not steady) or bad
  arguments, 3 the source could not start (Nomad unreachable, missing inventory). Reports are saved as JSON
  and Markdown under --reports-dir (default ./reports, or $X0DASH_REPORTS); with --report FILE only FILE is
  written unless --reports-dir is given too. Each report is also filed in the mesh-wide drill history (any
  agent, POST /drills/history), where every x0dash's history view (D) finds it; stderr says whether it was
  filed or why not (the exit status is the drill's verdict either way).

environment: X0_API_TOKEN (bearer token for drills when the source does not know it), X0DASH_REPORTS,
X0_TLS_CA (PEM file of the agents' CA or self-signed certificate, trusted for https), X0_ALLOW_CLEAR_UNDERLAY=true
(send the token over plain HTTP to underlay addresses: a mesh on one host only; a local mesh's inventory says so
itself). The token is otherwise sent only over https (used by itself when an agent serves TLS), to overlay
(200::/7) or loopback addresses.
"""


def _seconds(value: str) -> float:
    try:
        f = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not math.isfinite(f):  # "nan" and "inf" parse, and nan passes every comparison below
        raise argparse.ArgumentTypeError(f"not a finite number: {value!r}")
    return f


def _positive(value: str) -> float:
    f = _seconds(value)
    if f <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return f


def _not_negative(value: str) -> float:
    f = _seconds(value)
    if f < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return f


def _whole(what: str, lo: int, hi: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a whole number, got {value!r}") from None
        if not lo <= n <= hi:
            raise argparse.ArgumentTypeError(f"{what} must be {lo}..{hi}, got {n}")
        return n

    return parse


_nodes = _whole("a local mesh's node count", 1, 26)
_duration = _whole("duration (s)", *DURATION_RANGE)
_deadline = _whole("drain deadline (s)", *DEADLINE_RANGE)


def _add_common(p: argparse.ArgumentParser, *, sub: bool) -> None:
    # Options valid before and after `drill`. In the subcommand they default to SUPPRESS so a value given
    # before `drill` is not overwritten by the subparser's default (an argparse quirk).
    d = argparse.SUPPRESS if sub else None
    src = p.add_argument_group("source")
    src.add_argument("--local", type=_nodes, metavar="N", default=d, help="start a local mesh of N nodes")
    src.add_argument("--inventory", type=Path, metavar="FILE", default=d, help="read nodes from an inventory file")
    src.add_argument("--nomad", metavar="ADDR", default=d, help="Nomad address (default $NOMAD_ADDR)")
    src.add_argument("--job", metavar="JOB", default=d, help="Nomad job of the mesh (default x0-mesh)")
    src.add_argument(
        "--topology",
        default=d,
        metavar="T",
        help="--local: planned topology (auto, full, ring, chain, expander; default auto)",
    )
    src.add_argument(
        "--mode",
        choices=("netns", "loopback"),
        default=d,
        help="--local: netns (root) or loopback (default: netns when root)",
    )
    src.add_argument(
        "--run-dir",
        type=Path,
        metavar="DIR",
        default=d,
        help="--local: where the mesh keeps configs and logs (default: a temporary directory)",
    )
    opt = p.add_argument_group("polling and drills")
    opt.add_argument("--interval", type=_positive, metavar="S", default=d, help="seconds between polls (1)")
    opt.add_argument("--timeout", type=_positive, metavar="S", default=d, help="per-agent poll timeout (1.5)")
    opt.add_argument(
        "--reports-dir",
        type=Path,
        metavar="DIR",
        default=d,
        help=f"where drill reports go (default {DEFAULT_REPORTS_DIR})",
    )
    opt.add_argument("--detect-slo", type=_positive, metavar="S", default=d, help="SLO: time to detect (2)")
    opt.add_argument(
        "--first-detect-slo",
        type=_positive,
        metavar="S",
        default=d,
        help="SLO: time until the first observer detects (default: half of --detect-slo)",
    )
    opt.add_argument(
        "--repair-slo", type=_positive, metavar="S", default=d, help="SLO: time to repair after the fault ends (2)"
    )
    opt.add_argument(
        "--recover-timeout",
        type=_positive,
        metavar="S",
        default=d,
        help="fail when the mesh is not back to its steady state this long after the fault (60)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="x0dash",
        # The subcommand is optional: without it x0dash opens the dashboard (argparse would print `drill ...`
        # as if it were required).
        usage="x0dash [options]                           open the dashboard\n"
        "       x0dash [options] drill KIND --target NODE  run one drill headless\n"
        "       x0dash [options] serve [--host H] [--port P] [--token T]   the dashboard in a browser",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"x0dash {__version__}")
    _add_common(p, sub=False)
    subs = p.add_subparsers(dest="command", metavar="[drill | serve]", title="commands", required=False)
    d = subs.add_parser(
        "drill",
        prog="x0dash drill",
        help="run one drill without the UI, print the report, exit 0 on pass",
        description="Run one drill against the chosen source without the UI, print the report "
        "and exit non-zero when an SLO fails or the mesh does not recover.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("kind", choices=DRILL_KINDS, help="what to break")
    d.add_argument(
        "--target",
        required=True,
        metavar="NODE",
        help="node id to break (e.g. node-b); leader-loss: `--target leader` (it takes whichever node leads)",
    )
    d.add_argument("--duration", type=_duration, default=10, metavar="S", help="seconds the fault lasts (10)")
    d.add_argument(
        "--deadline",
        type=_deadline,
        default=DEFAULT_DRAIN_DEADLINE_S,
        metavar="S",
        help=f"drain: how long Nomad lets the node's allocations migrate before stopping them "
        f"({DEFAULT_DRAIN_DEADLINE_S})",
    )
    d.add_argument(
        "--task",
        metavar="TASK",
        help="restart-alloc: restart only this task of the allocation (e.g. yggdrasil; default: all)",
    )
    d.add_argument(
        "--report", type=Path, metavar="FILE", help="also write the report here (.md: Markdown, otherwise JSON)"
    )
    d.add_argument("--json", action="store_true", help="print the JSON report instead of Markdown")
    d.add_argument(
        "--steady-timeout",
        type=_positive,
        default=60.0,
        metavar="S",
        help="wait this long for the mesh's steady state before injecting (60)",
    )
    d.add_argument(
        "--settle",
        type=_not_negative,
        default=SETTLE_S,
        metavar="S",
        help="after the fault, the mesh must stay whole this long before the drill ends: an incident reopened "
        f"meanwhile counts in the repair time ({SETTLE_S:g})",
    )
    _add_common(d, sub=True)
    w = subs.add_parser(
        "serve",
        prog="x0dash serve",
        help="the dashboard in a browser (textual-serve); options before `serve` choose its source",
        description="Serve the dashboard to browsers: each tab runs x0dash with the options given before "
        "`serve`. With --local N (the default source), serve starts that one mesh and every tab watches it "
        "(through its inventory; node loss is then the agent's kill-daemon drill); it is stopped when serve "
        "stops (Ctrl-C, SIGTERM, or SIGHUP when its terminal closes). Binds 127.0.0.1 by default; any other "
        "address requires an access token in the URL (--token or $X0DASH_TOKEN, else one is made up and "
        "printed), and requests without it are refused.",
        epilog="example: x0dash --inventory run/inventory.json serve --host 0.0.0.0 --port 8000",
    )
    w.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    w.add_argument("--port", type=_whole("--port", 1, 65535), default=8000, help="port (8000)")
    w.add_argument("--token", default=None, help="access token browsers must give as ?token= ($X0DASH_TOKEN)")
    w.add_argument("--public-url", default=None, metavar="URL", help="the URL browsers use, behind a proxy")
    _add_common(w, sub=True)
    return p


# The dashboard options a served browser tab gets (everything before `serve` but the command itself).
_DASH_OPTIONS = (
    "local",
    "inventory",
    "nomad",
    "job",
    "topology",
    "mode",
    "run_dir",
    "interval",
    "timeout",
    "reports_dir",
    "detect_slo",
    "repair_slo",
    "recover_timeout",
)
_LOCAL_OPTIONS = ("local", "topology", "mode", "run_dir")  # what starts a mesh: the server's job, not a tab's


def dashboard_argv(args: argparse.Namespace, inventory: Path | None = None) -> list[str]:
    """The x0dash command line that reproduces these dashboard options (for `serve`'s browser tabs); with
    `inventory`, the tabs read that mesh (the one `serve --local` started) instead of starting their own."""
    argv = [sys.executable, "-m", "dashboard.cli"]
    for name in _DASH_OPTIONS:
        value = getattr(args, name, None)
        if value is not None and not (inventory is not None and name in _LOCAL_OPTIONS):
            argv += [f"--{name.replace('_', '-')}", str(value)]
    if inventory is not None:
        argv += ["--inventory", str(inventory)]
    return argv


def run_serve(
    args: argparse.Namespace, provider: Provider | None = None, env: dict[str, str] | None = None
) -> int:
    """Serve the dashboard to browsers until SIGINT, SIGTERM or SIGHUP. A local source is started here, once:
    every tab reads that one mesh (through its inventory), and it is stopped when serving stops."""
    from dashboard.providers.local import LocalProvider
    from dashboard.web import DashServer, ServeError, access_token, check_port

    env = dict(os.environ) if env is None else env
    try:
        token = access_token(args.host, args.token or env.get("X0DASH_TOKEN") or None)
        check_port(args.host, args.port)  # before a mesh is started for nothing
    except ServeError as exc:
        print(f"x0dash serve: {exc}", file=sys.stderr)
        return EXIT_FAILED if exc.port_in_use else EXIT_REFUSED
    inventory = None
    if isinstance(provider, LocalProvider):
        _say(f"x0dash serve: starting {provider.label}, one for every browser tab…")
        try:
            with _signals_interrupt():  # a kill while the mesh starts still tears it down
                provider.start()
        except ProviderError as exc:
            _say(f"x0dash serve: the source could not start: {exc}")
            return EXIT_SOURCE
        except _Interrupted as stop:
            _say(f"x0dash serve: {stop.name} received while the mesh was starting; stopped it")
            return 128 + stop.signum
        inventory = provider.inventory_path
    server = DashServer(
        shlex.join(dashboard_argv(args, inventory)),
        host=args.host,
        port=args.port,
        token=token,
        public_url=args.public_url,
    )
    try:
        server.serve()
    except OSError as exc:
        print(f"x0dash serve: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if provider is not None:
            provider.stop()
        kept = getattr(provider, "kept_run_dir", None)
        if kept is not None:
            _say(f"x0dash serve: the local mesh is stopped; its logs stay in {kept} (node-*/agent.log)")
    if server.stopped_by is not None:
        _say(f"x0dash serve: {server.stopped_by.name} received; stopped cleanly")
        return 128 + server.stopped_by.value
    return EXIT_OK


class _Interrupted(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM/SIGHUP/SIGINT raise inside the block (the default would end the process without cleanup)."""

    def interrupt(signum: int, frame: object) -> None:
        raise _Interrupted(signum)

    sigs = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
    before = {sig: signal.signal(sig, interrupt) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _num(args: argparse.Namespace, name: str, default: float) -> float:
    value = getattr(args, name, None)
    return default if value is None else float(value)


def _reports_dir(args: argparse.Namespace) -> Path:
    value = getattr(args, "reports_dir", None)
    return DEFAULT_REPORTS_DIR if value is None else Path(value)


def _headless_reports_dir(args: argparse.Namespace) -> Path | None:
    """Where a headless drill saves its report pair: none when --report FILE says where (unless --reports-dir
    asks for both)."""
    if getattr(args, "report", None) is not None and getattr(args, "reports_dir", None) is None:
        return None
    return _reports_dir(args)


def build_provider(args: argparse.Namespace, env: dict[str, str] | None = None) -> Provider:
    """The source the options ask for (ProviderError with an operator message when they conflict)."""
    env = dict(os.environ) if env is None else env
    local, inventory, nomad, job = (getattr(args, k, None) for k in ("local", "inventory", "nomad", "job"))
    chosen = [name for name, v in (("--local", local), ("--inventory", inventory), ("--nomad", nomad)) if v]
    if len(chosen) > 1:
        raise ProviderError(f"choose one source, not {' and '.join(chosen)}")
    if job and (local or inventory):
        raise ProviderError("--job applies to the Nomad source only")
    if inventory:
        from dashboard.providers.inventory import InventoryProvider

        return InventoryProvider(inventory)
    if nomad or job or (not local and env.get("NOMAD_ADDR")):
        from dashboard.providers.nomad import NomadProvider

        return NomadProvider(address=nomad, job=job, env=env)
    from dashboard.providers.local import LocalProvider

    return LocalProvider(
        int(local or DEFAULT_LOCAL_NODES),
        topology=getattr(args, "topology", None) or "auto",
        mode=getattr(args, "mode", None),
        run_dir=getattr(args, "run_dir", None),
    )


def build_slo(args: argparse.Namespace) -> SLO:
    base = SLO()
    return SLO(
        detect_s=_num(args, "detect_slo", base.detect_s),
        first_detect_s=getattr(args, "first_detect_slo", None),
        repair_s=_num(args, "repair_slo", base.repair_s),
        recover_timeout_s=_num(args, "recover_timeout", base.recover_timeout_s),
    )


def _print_step(step: DrillStep, out: TextIO) -> None:
    t = "      " if step.t_s is None else f"{step.t_s:+6.2f}s"
    print(f"[{t}] {step.what}", file=out, flush=True)


async def run_headless(
    provider: Provider,
    plan: DrillPlan,
    *,
    reports_dir: Path | None,
    report_file: Path | None,
    as_json: bool,
    poll_timeout: float = 1.5,
    steady_timeout: float = 60.0,
    settle_s: float = SETTLE_S,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    out, err = out or sys.stdout, err or sys.stderr  # resolved per call: sys.stderr may have been replaced
    session = MeshSession(provider, timeout=poll_timeout)
    try:
        try:
            await session.start()
        except ProviderError as exc:
            print(f"x0dash: the source could not start: {exc}", file=err)
            return EXIT_SOURCE
        # A source that started but cannot be read (Nomad unreachable, refusing) lists no nodes: say that, not
        # "no node 'node-b'" with the refusal's exit code.
        first = await session.update()
        if not first.view.source_ok:
            print(
                f"x0dash: the source could not start: {first.view.source} ({first.view.source_detail})", file=err
            )
            return EXIT_SOURCE
        engine = DrillEngine(session, steady_timeout=steady_timeout, settle_s=settle_s)
        engine.listeners.append(lambda step: _print_step(step, err))
        try:
            report = await engine.run(plan)
        except DrillRefused as exc:
            print(f"x0dash: drill refused: {exc}", file=err)
            return EXIT_REFUSED
        paths = save(report, reports_dir, report_file)
        out.write(to_json(report).decode() if as_json else to_markdown(report))
        out.flush()
        print(f"x0dash: report saved: {', '.join(map(str, paths))}", file=err)
        view = session.view
        filed = await file_report(session.client, filing_nodes(view.nodes if view else (), report.target), report)
        if filed.ok:
            print(f"x0dash: report {filed.detail}", file=err)
        else:
            # The drill's verdict stands (the exit status says it); the operator learns the history lacks it.
            print(f"x0dash: report NOT filed in the mesh history: {filed.detail}", file=err)
        return EXIT_OK if report.passed else EXIT_FAILED
    finally:
        await session.close()


async def _headless_main(args: argparse.Namespace, provider: Provider) -> int:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        # SIGTERM (CI timeouts, systemd) must revert the fault and stop a local mesh like Ctrl-C does.
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    plan = DrillPlan(
        kind=args.kind,
        target=args.target,
        duration_s=args.duration,
        slo=build_slo(args),
        deadline_s=args.deadline,
        task=args.task,
    )
    return await run_headless(
        provider,
        plan,
        reports_dir=_headless_reports_dir(args),
        report_file=args.report,
        as_json=args.json,
        poll_timeout=_num(args, "timeout", 1.5),
        steady_timeout=args.steady_timeout,
        settle_s=args.settle,
    )


def _say(message: str) -> None:
    try:
        print(message, file=sys.stderr, flush=True)
    except OSError:  # the terminal is gone (SIGHUP): nobody to tell, and nothing may stop the exit
        pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        provider = build_provider(args)
    except ProviderError as exc:
        print(f"x0dash: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        if args.command == "serve":
            return run_serve(args, provider)
        if args.command == "drill":
            try:
                return asyncio.run(_headless_main(args, provider))
            except (KeyboardInterrupt, asyncio.CancelledError):
                print("x0dash: interrupted; the fault was reverted", file=sys.stderr)
                return 130
        from dashboard.app import X0Dash

        app = X0Dash(
            provider,
            interval=_num(args, "interval", 1.0),
            timeout=_num(args, "timeout", 1.5),
            reports_dir=_reports_dir(args),
            slo=build_slo(args),
            handle_signals=True,
            tune_gc=True,
        )
        code = app.run()
        kept = getattr(provider, "kept_run_dir", None)
        if kept is not None:
            _say(f"x0dash: the local mesh is stopped; its logs stay in {kept} (node-*/agent.log)")
        if app.source_error:
            _say(f"x0dash: the source could not start: {app.source_error}")
            return EXIT_SOURCE
        if app.exit_signal is not None:
            _say(f"x0dash: {app.exit_signal} received; stopped cleanly")
            return 128 + signal.Signals[app.exit_signal].value
        return code or 0
    finally:
        provider.stop()  # idempotent; covers a crash or Ctrl-C that skipped the app's own shutdown


if __name__ == "__main__":
    sys.exit(main())
