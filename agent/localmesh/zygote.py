"""Agents forked from one process that has already imported them, instead of N interpreters importing them anew.

Starting an agent costs about 0.9 CPU-s, half or more of it importing Litestar, uvicorn, pysyncobj and our own
modules: 20 agents on a 2-core machine kept both cores busy for 10-12 s before the last one answered /health.
Like a forking server's preload (gunicorn's `--preload`, Android's zygote), this process imports what
`x0-agent serve` imports once, then forks one child per node: each child enters its node's network namespace,
takes the node's environment, working directory and log, and runs `agent.cli.serve` exactly as `x0-agent serve`
would. Measured on that machine: `LocalMesh.start()` of 20 netns nodes 5.8-6.0 s instead of 10.6-12.5 s, the agents
having used 6.8-8.0 CPU-s instead of 17.6-20.8 by then.

Protocol, one JSON object per line: the mesh writes `{"node", "env", "cwd", "log", "netns"}` on our stdin; we
answer `{"node", "pid"}` (or `{"node", "error"}`) on stdout, and `{"exit": pid, "code": n}` whenever a child ends
(we are its parent, so only we can reap it). End of stdin (the mesh stopped, or died) ends this process; the
children then get SIGTERM from the kernel (PR_SET_PDEATHSIG), as agents started by the mesh itself do.

Fork-safe by construction: this process starts no thread and no event loop; it only imports, reads and forks.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from typing import Any

from agent.localmesh import procs

CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
NETNS_DIR = "/run/netns"


def preload() -> None:
    """Import what `agent.cli.serve` imports (and nothing else: every child carries it)."""
    import uvicorn  # noqa: F401
    from prometheus_client import disable_created_metrics  # noqa: F401

    import agent.api.app
    import agent.api.server
    import agent.cli
    import agent.memory  # noqa: F401


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def enter_netns(name: str) -> None:
    """Move this (single-threaded) process into the named network namespace, as `ip netns exec` does."""
    fd = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc().setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into network namespace {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _child(request: dict[str, Any], parent: int, keep_out: list[int]) -> None:
    """In the forked child: become the node's agent. Never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the zygote ignores it; an agent does not
        for fd in keep_out:  # 0 and 1 (our pipes to the mesh) are replaced below
            with contextlib.suppress(OSError):
                os.close(fd)
        log_fd = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.setsid()  # as the mesh's own launches: a Ctrl-C in the operator's terminal does not reach agents
        _libc().prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the zygote died between fork and prctl
            os._exit(1)
        if request.get("netns"):
            enter_netns(str(request["netns"]))
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in request["env"].items()})
        sys.argv = ["x0-agent", "serve"]
        from agent.cli import main

        try:
            code = main(["serve"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _send(obj: dict[str, Any]) -> None:
    data = (json.dumps(obj) + "\n").encode()
    while data:
        data = data[os.write(1, data) :]


def _reap() -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send({"exit": pid, "code": os.waitstatus_to_exitcode(status)})


def serve_requests() -> int:
    if threading.active_count() != 1:  # a thread started by an import would not survive fork
        print(f"x0 zygote: {threading.active_count()} threads after preload; cannot fork safely", file=sys.stderr)
        return 1
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getpid()
    buf = b""
    while True:
        try:
            ready, _, _ = select.select([0, wake_r], [], [])
        except InterruptedError:
            ready = []
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(wake_r, 512):
                    pass
        _reap()
        if 0 not in ready:
            continue
        chunk = os.read(0, 65536)
        if not chunk:
            return 0
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if not line.strip():
                continue
            try:
                request = json.loads(line)
                node = str(request["node"])
            except (ValueError, KeyError, TypeError) as exc:
                _send({"node": None, "error": f"bad request: {exc}"})
                continue
            try:
                pid = os.fork()
            except OSError as exc:
                _send({"node": node, "error": f"fork: {exc}"})
                continue
            if pid == 0:
                _child(request, parent, [wake_r, wake_w])
            _send({"node": node, "pid": pid})


def main() -> int:
    try:
        preload()
    except Exception:
        traceback.print_exc()
        return 1
    import gc

    gc.freeze()  # what preload built stays shared between the children instead of being copied by the collector
    _send({"ready": os.getpid()})
    return serve_requests()


if __name__ == "__main__":
    sys.exit(main())


# --- the mesh's end ---------------------------------------------------------------------------------------------


class ZygoteError(RuntimeError):
    pass


class ForkedAgent:
    """An agent the zygote forked: the part of `subprocess.Popen` the mesh uses (pid, poll, wait)."""

    def __init__(self, zygote: Zygote, pid: int) -> None:
        self._zygote = zygote
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            code = self._zygote.exit_code(self.pid)
            if code is None and not self._zygote.alive and not procs.alive(self.pid):
                code = -signal.SIGTERM  # the zygote died first and took its children with it (PR_SET_PDEATHSIG)
            self.returncode = code
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"agent pid {self.pid}", timeout or 0.0)
            self._zygote.wait_exit(0.05)
        return code


class Zygote:
    """Start the zygote (`python -m agent.localmesh.zygote`, this interpreter) and ask it for agents."""

    def __init__(self, env: dict[str, str], log_path: str, argv_prefix: list[str] | None = None) -> None:
        self._env = env
        self.log_path = log_path
        self._prefix = list(argv_prefix or [])
        self._proc: subprocess.Popen[bytes] | None = None
        self._cond = threading.Condition()
        self._replies: list[dict[str, Any]] = []
        self._exits: dict[int, int] = {}
        self._ready = False
        self._eof = False
        self._lock = threading.Lock()  # one spawn request at a time: replies come back in order

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and not self._eof and self._proc.poll() is None

    def start(self, timeout: float = 60.0) -> Zygote:
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [*self._prefix, sys.executable, "-m", "agent.localmesh.zygote"],
                env=self._env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        threading.Thread(target=self._read, name="x0-zygote-reader", daemon=True).start()
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._ready and not self._eof and time.monotonic() < deadline:
                self._cond.wait(max(0.0, deadline - time.monotonic()))
            if self._ready:
                return self
            exited = self._eof
        self.close()
        if exited and self._proc is not None:
            raise ZygoteError(
                f"the agent zygote exited before it was ready (code {self._proc.returncode}): {self._tail()}"
            )
        raise ZygoteError(f"the agent zygote did not start within {timeout:g} s: {self._tail()}")

    def _tail(self) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                lines = [ln for ln in fh.read().decode(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return "(no log)"
        return " | ".join(lines[-4:]) or "(empty log)"

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for raw in self._proc.stdout:
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            with self._cond:
                if "ready" in msg:
                    self._ready = True
                elif "exit" in msg:
                    self._exits[int(msg["exit"])] = int(msg["code"])
                else:
                    self._replies.append(msg)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def spawn(
        self, node: str, *, env: dict[str, str], cwd: str, log: str, netns: str | None, timeout: float = 10.0
    ) -> ForkedAgent:
        request = json.dumps({"node": node, "env": env, "cwd": cwd, "log": log, "netns": netns}) + "\n"
        with self._lock:
            if not self.alive or self._proc is None or self._proc.stdin is None:
                raise ZygoteError(f"the agent zygote is not running: {self._tail()}")
            try:
                self._proc.stdin.write(request.encode())
                self._proc.stdin.flush()
            except OSError as exc:
                raise ZygoteError(f"cannot reach the agent zygote: {exc}") from exc
            deadline = time.monotonic() + timeout
            with self._cond:
                while not self._replies and not self._eof and time.monotonic() < deadline:
                    self._cond.wait(max(0.0, deadline - time.monotonic()))
                if not self._replies:
                    raise ZygoteError(f"the agent zygote did not fork {node}: {self._tail()}")
                reply = self._replies.pop(0)
        if "pid" not in reply:
            raise ZygoteError(f"the agent zygote could not fork {node}: {reply.get('error')}")
        return ForkedAgent(self, int(reply["pid"]))

    def exit_code(self, pid: int) -> int | None:
        with self._cond:
            return self._exits.get(pid)

    def wait_exit(self, timeout: float) -> None:
        """Sleep until the zygote reports something (or `timeout`)."""
        with self._cond:
            self._cond.wait(timeout)

    def close(self, timeout: float = 3.0) -> None:
        """End the zygote (its stdin closes); children still running get SIGTERM from the kernel."""
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
