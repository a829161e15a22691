"""`just observe`: a local x0tta6bl4 mesh with a real Prometheus scraping it, until Ctrl-C.

    python prometheus/observe.py [--nodes 3] [--topology full] [--port 9090] [--mode netns|loopback]

The mesh writes run/inventory.json and, beside it, the Prometheus file_sd file run/prometheus-targets.json that
prometheus/prometheus.yml reads, so Prometheus runs on the shipped config unchanged (rules included); only its
storage (run/observe/prometheus-data) and listen address are given on the command line. Ctrl-C or SIGTERM stops
Prometheus and tears the mesh down.

`Prometheus` (a real prometheus process on 127.0.0.1 that dies with its parent) is also what the observability
tests start.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from agent.yggdrasil.daemon import _pdeathsig_preexec

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CONFIG = HERE / "prometheus.yml"
RUN_DIR = REPO / "run"
DEFAULT_PORT = 9090
_LOG_TAIL_LINES = 15


class PrometheusError(RuntimeError):
    """Prometheus is missing, did not start, or its API refused a query; the message says what to do."""


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None
    )
    if found is None:
        raise PrometheusError("prometheus not found: apt-get install prometheus (Debian/Ubuntu package)")
    return found


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Prometheus:
    """A real Prometheus on 127.0.0.1:`port` with its own storage; `stop()` is idempotent and the process also
    dies with the thread that started it (PR_SET_PDEATHSIG), so a killed test run leaves nothing listening."""

    def __init__(self, config: Path, storage: Path, port: int, log: Path, binary: str | None = None) -> None:
        self.config, self.storage, self.port, self.log = config, storage, port, log
        self.binary = binary or prometheus_binary()
        self.url = f"http://127.0.0.1:{port}"
        self._proc: subprocess.Popen[bytes] | None = None
        # trust_env=False: an HTTP proxy from the environment must not carry loopback API calls.
        self._http = httpx.Client(base_url=self.url, timeout=10.0, trust_env=False)

    def start(self, timeout: float = 30.0) -> Prometheus:
        if not port_free(self.port):
            raise PrometheusError(f"127.0.0.1:{self.port} is in use; pick another port")
        self.storage.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        argv = [
            self.binary,
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.storage}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=2d",
        ]
        with self.log.open("ab") as log:
            # The preexec only calls prctl (no locks), which is safe in the child of a threaded parent.
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_pdeathsig_preexec(os.getpid()),
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self._proc.returncode}:\n{self.log_tail()}")
            try:
                if self._http.get("/-/ready").status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise PrometheusError(f"prometheus not ready within {timeout:g} s:\n{self.log_tail()}")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def api(self, path: str, **params: Any) -> Any:
        """GET /api/v1/<path>; the `data` of a success, else PrometheusError with Prometheus' own error."""
        resp = self._http.get(f"/api/v1/{path}", params=params)
        body = resp.json()
        if resp.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr!r} is a {data['resultType']}, not a vector")
        return data["result"]

    def stop(self, timeout: float = 10.0) -> int | None:
        proc, self._proc = self._proc, None
        self._http.close()
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def wait_for_targets(prom: Prometheus, count: int, timeout: float) -> list[dict[str, Any]]:
    """The x0-agent targets once `count` of them are up; PrometheusError naming the unhealthy ones otherwise."""
    deadline = time.monotonic() + timeout
    targets: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        targets = [
            t for t in prom.api("targets", state="active")["activeTargets"] if t["labels"]["job"] == "x0-agent"
        ]
        if sum(t["health"] == "up" for t in targets) >= count:
            return targets
        time.sleep(0.5)
    bad = {t["labels"].get("node_id", t["scrapeUrl"]): t["lastError"] or t["health"] for t in targets}
    raise PrometheusError(f"{count} agents not scraped within {timeout:g} s: {bad or 'no targets discovered'}")


def _owner_alive(inventory: Path) -> int | None:
    """PID of the live process that owns an existing inventory, if any."""
    try:
        pid = int(json.loads(inventory.read_text()).get("owner_pid", 0))
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def _banner(prom: Prometheus, mesh: Any, targets: list[dict[str, Any]]) -> str:
    rows = "\n".join(
        f"    {t['labels'].get('node_id', '?'):<8} {t['scrapeUrl']:<36} {t['health']}"
        for t in sorted(targets, key=lambda t: t["labels"].get("node_id", ""))
    )
    dashboards = REPO / "grafana" / "dashboards"
    return f"""
x0tta6bl4 observe: mesh {mesh.name} ({mesh.mode}, {len(mesh.nodes)} nodes) scraped by Prometheus every 15 s

  Prometheus      {prom.url}          (graph: {prom.url}/graph, alerts: {prom.url}/alerts)
  targets
{rows}
  inventory       {mesh.inventory_path}   (x0dash --inventory {mesh.inventory_path})
  try             mesh:x0_peers_up:sum   ALERTS   x0_member_reachable   node:x0_http_requests:rate5m
  prometheus log  {prom.log}

Grafana (not installed here): provision it from this repo and point it at this Prometheus:
  X0_PROMETHEUS_URL={prom.url} X0_DASHBOARDS_DIR={dashboards} \\
  GF_PATHS_PROVISIONING={REPO / "grafana" / "provisioning"} grafana server --homepath /usr/share/grafana
  or, in a running Grafana: add a Prometheus datasource with URL {prom.url} and import
  {dashboards}/mesh-overview.json and node.json (pick that datasource in the "Prometheus" variable).

Ctrl-C stops Prometheus and tears the mesh down.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="just observe",
        description="Start a local x0tta6bl4 mesh and a real Prometheus (prometheus/prometheus.yml) scraping it.",
    )
    parser.add_argument("--nodes", type=int, default=3, help="mesh nodes (default 3)")
    parser.add_argument("--topology", default="full", help="planned topology: full, ring or chain (default full)")
    parser.add_argument(
        "--mode",
        choices=("netns", "loopback"),
        default=None,
        help="netns (root) or loopback; default: netns when root",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"Prometheus port on 127.0.0.1 (default {DEFAULT_PORT}; 0 = any free port)",
    )
    args = parser.parse_args(argv)

    from agent.localmesh import LocalMesh, LocalMeshError, MeshOptions

    inventory = RUN_DIR / "inventory.json"
    try:
        binary = prometheus_binary()
    except PrometheusError as exc:
        print(f"observe: {exc}", file=sys.stderr)
        return 2
    if (pid := _owner_alive(inventory)) is not None:
        print(
            f"observe: a mesh started by pid {pid} owns {inventory} (`just mesh`?). Stop it first, or scrape it "
            f"as is: prometheus --config.file={CONFIG} --storage.tsdb.path=run/observe/prometheus-data",
            file=sys.stderr,
        )
        return 2
    port = args.port or free_port()
    if not port_free(port):
        print(
            f"observe: 127.0.0.1:{port} is in use (another Prometheus?); use --port N or --port 0", file=sys.stderr
        )
        return 2

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    options = MeshOptions(
        nodes=args.nodes, topology=args.topology, mode=args.mode, run_dir=RUN_DIR, inventory=inventory
    )
    observe_dir = RUN_DIR / "observe"
    try:
        with LocalMesh(options) as mesh:
            prom = Prometheus(
                CONFIG, observe_dir / "prometheus-data", port, observe_dir / "prometheus.log", binary
            )
            with prom:
                targets = wait_for_targets(prom, len(mesh.nodes), timeout=60.0)
                print(_banner(prom, mesh, targets), flush=True)
                while not stop.wait(1.0):
                    if not prom.running:
                        print(f"observe: prometheus exited:\n{prom.log_tail()}", file=sys.stderr)
                        return 1
                print("observe: stopping Prometheus and the mesh…", flush=True)
    except (LocalMeshError, PrometheusError) as exc:
        print(f"observe: {exc}", file=sys.stderr)
        return 1
    print("observe: stopped cleanly", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
