"""Agent HTTP speed and footprint, beside a baseline measured in the same run.

    python bench/agent_http.py                 # 10 s per target, RSS after 60 s
    python bench/agent_http.py --rss-after 600 # the issue's 10-minute footprint figure

A real 3-node loopback mesh (agent.localmesh: real daemons, real agents with their default settings) is started;
node-a's agent is loaded with `wrk` (100 connections, one uvicorn worker as always), GET /mesh/status and
GET /health, against a minimal Litestar app returning a constant served by the same uvicorn configuration.
Targets are measured in interleaved rounds and the best round of each is kept (the machine is shared and noisy).
With 2+ CPUs the server under test is pinned to CPU 0 and wrk to CPU 1, so they do not fight for one core.

Targets (issue 2): req/s ratio agent/baseline >= 0.8 with p99 < 50 ms; agent RSS < 80 MB after 10 minutes.

Server implementation (the pyproject.toml claim for httptools + uvloop): node-a's agent app is also served by
three more processes started the same way, `uvicorn --http httptools --loop uvloop`, `--http httptools --loop
asyncio` (what `x0-agent serve` itself runs) and `--http h11 --loop asyncio` (same settings, same daemon, MAPE-K
and Raft off so only the API runs), and GET /mesh/status is measured on each in the same interleaved rounds; the
ratios are against h11+asyncio. `--no-servers` skips it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.localmesh import LocalMesh, MeshOptions  # noqa: E402

RATIO_TARGET = 0.8
P99_TARGET_MS = 50.0
RSS_TARGET_MB = 80.0

BASELINE_APP = """
from litestar import Litestar, get

@get("/", sync_to_thread=False)
def constant() -> dict[str, str]:
    return {"status": "ok"}

app = Litestar([constant], logging_config=None)
"""

# The agent's own app factory, as agent.cli builds it, for serving it with a chosen uvicorn implementation.
AGENT_APP = """
from prometheus_client import disable_created_metrics

from agent.api.app import create_app
from agent.settings import Settings

disable_created_metrics()
app = create_app(Settings.from_env())
"""
# httptools+asyncio is what `x0-agent serve` runs (its own server on asyncio's loop, agent.cli).
SERVERS = {
    "httptools+uvloop": ("httptools", "uvloop"),
    "httptools+asyncio": ("httptools", "asyncio"),
    "h11+asyncio": ("h11", "asyncio"),
}


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int

    def row(self, name: str) -> str:
        return f"{name:<22} {self.rps:>10.0f} {self.p50_ms:>9.2f} {self.p99_ms:>9.2f} {self.errors:>7}"


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not m:
        raise ValueError(f"unparsed wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> WrkResult:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in m.groups())
    return WrkResult(rps, p50, p99, errors)


def run_wrk(wrk: str, url: str, seconds: int, connections: int, threads: int, pin: bool) -> WrkResult:
    cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if pin and shutil.which("taskset"):
        cmd = ["taskset", "-c", "1", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    return parse_wrk(out)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1, trust_env=False).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def start_baseline(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    (workdir / "x0_bench_baseline.py").write_text(BASELINE_APP)
    port = free_port()
    # Same uvicorn settings as the agent (agent.cli): one worker, default loop/http, no access log.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "x0_bench_baseline:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--no-access-log",
            "--log-level",
            "warning",
            "--lifespan",
            "on",
        ],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/"
    wait_http(url)
    return proc, url


def start_agent_app(
    workdir: Path, mesh: LocalMesh, node_id: str, server: str
) -> tuple[subprocess.Popen[bytes], str]:
    """node_id's agent app in its own uvicorn process with the given HTTP parser and event loop."""
    (workdir / "x0_bench_agent.py").write_text(AGENT_APP)
    http, loop = SERVERS[server]
    node = mesh.node(node_id)
    port = free_port()
    assert mesh.members_path is not None
    env = {
        **os.environ,
        "NODE_ID": node_id,
        "LISTEN_HOST": "127.0.0.1",
        "LISTEN_PORT": str(port),
        "LOG_LEVEL": "warning",
        "YGGDRASIL_ADMIN": node.admin_endpoint,
        "MESH_MEMBERS": str(mesh.members_path),
        "X0_API_TOKEN": mesh.api_token,
        "X0_MAPEK_ENABLED": "false",
        "X0_RAFT_ENABLED": "false",
    }
    env.pop("YGGDRASIL_CONFIG", None)  # never a second supervisor of node-a's daemon
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "x0_bench_agent:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--http",
            http,
            "--loop",
            loop,
            "--workers",
            "1",
            "--no-access-log",
            "--log-level",
            "warning",
            "--lifespan",
            "on",
        ],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/mesh/status"
    wait_http(url)
    return proc, url


def pin(pid: int, cpu: int) -> None:
    try:
        os.sched_setaffinity(pid, {cpu})
    except OSError:
        pass


def background_poller(urls: list[str], stop: threading.Event) -> None:
    """What an idle mesh sees: x0dash and Prometheus reading every agent about once a second."""
    with httpx.Client(timeout=2, trust_env=False) as client:
        while not stop.is_set():
            for url in urls:
                for path in ("/health", "/mesh/status", "/mesh/peers", "/mesh/routes", "/metrics"):
                    try:
                        client.get(url + path)
                    except httpx.HTTPError:
                        pass
            stop.wait(1.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=int, default=10, help="wrk duration per target and round (default 10)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best of each target is kept")
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--threads", type=int, default=2, help="wrk threads")
    p.add_argument(
        "--rss-after",
        type=float,
        default=60.0,
        help="seconds to keep the mesh running (polled like x0dash/Prometheus would) before reading "
        "RSS; 600 for the issue's 10-minute figure (default 60)",
    )
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument(
        "--no-servers",
        dest="servers",
        action="store_false",
        help="skip the httptools+uvloop vs h11+asyncio comparison of the agent app",
    )
    args = p.parse_args(argv)

    wrk = shutil.which("wrk")
    if wrk is None:
        print(
            "wrk not found: apt-get install wrk (it measures req/s and latency percentiles for this benchmark)",
            file=sys.stderr,
        )
        return 2
    multi_cpu = (os.cpu_count() or 1) >= 2

    with tempfile.TemporaryDirectory(prefix="x0t-h2-bench-") as tmp:
        workdir = Path(tmp)
        options = MeshOptions(
            nodes=args.nodes, topology="full", mode="loopback", run_dir=workdir / "run", start_timeout=60
        )
        print(f"starting a {args.nodes}-node loopback mesh (real daemons and agents) ...", flush=True)
        with LocalMesh(options) as mesh:
            node = mesh.node("node-a")
            agent_pid = mesh.agent_pid("node-a")
            assert agent_pid is not None
            baseline, baseline_url = start_baseline(workdir)
            extra: list[subprocess.Popen[bytes]] = [baseline]
            try:
                targets = {
                    "baseline GET /": baseline_url,
                    "agent GET /mesh/status": node.agent_url + "/mesh/status",
                    "agent GET /health": node.agent_url + "/health",
                }
                if args.servers:
                    for server in SERVERS:
                        proc, url = start_agent_app(workdir, mesh, "node-a", server)
                        extra.append(proc)
                        targets[server] = url
                if multi_cpu:
                    for pid in [agent_pid, *(proc.pid for proc in extra)]:
                        pin(pid, 0)
                for url in targets.values():  # warm-up: first requests build caches and connections
                    run_wrk(wrk, url, 2, args.connections, args.threads, multi_cpu)
                best: dict[str, WrkResult] = {}
                for _ in range(args.rounds):
                    for name, url in targets.items():
                        r = run_wrk(wrk, url, args.seconds, args.connections, args.threads, multi_cpu)
                        if name not in best or r.rps > best[name].rps:
                            best[name] = r
                baseline_rss = rss_mb(baseline.pid)
            finally:
                for proc in extra:
                    proc.terminate()
                    proc.wait(10)

            print()
            print(
                f"wrk -c{args.connections} -t{args.threads}, {args.seconds} s x {args.rounds} rounds (best), "
                f"one uvicorn worker{', server on CPU 0 / wrk on CPU 1' if multi_cpu else ''}"
            )
            print(f"{'target':<22} {'req/s':>10} {'p50 ms':>9} {'p99 ms':>9} {'errors':>7}  ratio")
            base = best["baseline GET /"]
            ok = True
            for name, r in best.items():
                if name in SERVERS:
                    continue
                ratio = r.rps / base.rps if base.rps else 0.0
                line = r.row(name)
                if name != "baseline GET /":
                    passed = ratio >= RATIO_TARGET and r.p99_ms < P99_TARGET_MS and r.errors == 0
                    ok &= passed
                    line += f"  {ratio:.2f}  {'PASS' if passed else 'FAIL'} (>= {RATIO_TARGET}, p99 < "
                    line += f"{P99_TARGET_MS:g} ms)"
                print(line)

            if args.servers:
                slow = best["h11+asyncio"]
                print("\nnode-a's agent app, GET /mesh/status, by uvicorn server (pyproject.toml's claim):")
                for name in SERVERS:
                    print(best[name].row(name))
                for name in ("httptools+uvloop", "httptools+asyncio"):
                    fast = best[name]
                    print(
                        f"{name} / h11+asyncio: req/s {fast.rps / slow.rps:.2f}x, "
                        f"p99 {fast.p99_ms:.2f} vs {slow.p99_ms:.2f} ms"
                    )

            stop = threading.Event()
            poller = threading.Thread(
                target=background_poller, args=([n.agent_url for n in mesh.nodes], stop), daemon=True
            )
            poller.start()
            print(f"\nkeeping the mesh up {args.rss_after:g} s, every agent polled once a second ...", flush=True)
            start_rss = {n.id: rss_mb(mesh.agent_pid(n.id) or 0) for n in mesh.nodes}
            time.sleep(args.rss_after)
            stop.set()
            poller.join(5)
            end_rss = {n.id: rss_mb(mesh.agent_pid(n.id) or 0) for n in mesh.nodes}
            print(f"{'agent':<10} {'RSS now MB':>11} {'after MB':>9}")
            for node_id in end_rss:
                print(f"{node_id:<10} {start_rss[node_id]:>11.1f} {end_rss[node_id]:>9.1f}")
            worst = max(end_rss.values())
            rss_ok = worst < RSS_TARGET_MB
            print(
                f"baseline app RSS {baseline_rss:.1f} MB; worst agent {worst:.1f} MB after {args.rss_after:g} s "
                f"(ratio {worst / baseline_rss:.2f}): {'PASS' if rss_ok else 'FAIL'} (< {RSS_TARGET_MB:g} MB)"
            )
            ok &= rss_ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
