"""Run one Yggdrasil daemon as a child process: start, wait until its admin socket answers, stop, kill.

Used by the agent's supervisor (YGGDRASIL_CONFIG) and by the local mesh. Methods are synchronous and short; from
async code call `await wait_ready_async()`, and `stop()` via `asyncio.to_thread` (it may wait `timeout` seconds).

`die_with_parent=True` makes the kernel SIGKILL the daemon when the thread that started it dies (prctl
PR_SET_PDEATHSIG), so a killed agent never leaves a daemon behind. The death signal is tied to the starting
*thread*: call `start()` from a long-lived thread (the main/event-loop thread), not a short-lived worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from agent.yggdrasil.client import AdminClient, parse_endpoint
from agent.yggdrasil.daemon_config import DaemonConfigError, find_yggdrasil_binary, public_key_of
from agent.yggdrasil.errors import AdminError
from agent.yggdrasil.models import SelfInfo

_PR_SET_PDEATHSIG = 1
_READY_POLL_S = 0.05
_LOG_TAIL_LINES = 5


class DaemonStartError(RuntimeError):
    """The daemon exited during start-up or its admin socket did not answer in time (message has the log tail)."""


def _pdeathsig_preexec(parent_pid: int) -> Callable[[], None]:
    # Load libc before fork: dlopen in the child of a threaded parent can deadlock.
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died between fork and prctl: then no signal will ever come.
        if os.getppid() != parent_pid:
            os._exit(1)

    return preexec


def _ip_binary() -> str:
    found = shutil.which("ip") or ("/usr/sbin/ip" if os.access("/usr/sbin/ip", os.X_OK) else None)
    if found is None:
        raise DaemonStartError("`ip` (iproute2) not found: needed to run the daemon in a network namespace")
    return found


def _read_config(config_path: Path) -> dict[str, object]:
    try:
        config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DaemonStartError(f"cannot read config {config_path}: {exc}") from exc
    if not isinstance(config, dict):
        raise DaemonStartError(f"config {config_path} is not a JSON object")
    return config


def admin_endpoint_of(config_path: Path) -> str:
    """The `AdminListen` of a JSON config file."""
    try:
        endpoint = _read_config(config_path)["AdminListen"]
    except KeyError as exc:
        raise DaemonStartError(f"config {config_path} has no AdminListen") from exc
    if not isinstance(endpoint, str):
        raise DaemonStartError(f"AdminListen in {config_path} is not a string")
    return endpoint


class DaemonProcess:
    """One `yggdrasil -useconffile CONFIG` child, optionally inside `ip netns exec NETNS`."""

    def __init__(
        self,
        config_path: Path,
        *,
        log_path: Path,
        binary: str | None = None,
        netns: str | None = None,
        die_with_parent: bool = True,
        admin_endpoint: str | None = None,
    ) -> None:
        self.config_path = Path(config_path)
        self.log_path = Path(log_path)
        self.binary = binary
        self.netns = netns
        self.die_with_parent = die_with_parent
        # Validate early: a config without a usable admin socket cannot be supervised.
        self.admin_endpoint = admin_endpoint or admin_endpoint_of(self.config_path)
        self._endpoint = parse_endpoint(self.admin_endpoint)
        self._proc: subprocess.Popen[bytes] | None = None
        self._expected_key: str | None = None

    # --- lifecycle --------------------------------------------------------------------------------------------

    def command(self) -> list[str]:
        exe = find_yggdrasil_binary(self.binary)
        cmd = [exe, "-useconffile", str(self.config_path)]
        if self.netns:
            cmd = [_ip_binary(), "netns", "exec", self.netns, *cmd]
        return cmd

    def start(self) -> None:
        """Spawn the daemon (returns at once; use wait_ready). Raises if this instance already runs one."""
        if self.is_running():
            raise DaemonStartError(f"daemon for {self.config_path} already running (pid {self.pid})")
        cmd = self.command()
        try:
            # Read now, not at construction: a supervisor may rewrite the config between runs.
            self._expected_key = public_key_of(_read_config(self.config_path))
        except DaemonConfigError:
            self._expected_key = None  # PrivateKeyPath (0.5 PEM): readiness cannot check the key
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"--- x0: starting {' '.join(cmd)} at {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_pdeathsig_preexec(os.getpid()) if self.die_with_parent else None,
                # Own process group: a Ctrl-C in the agent's terminal must not reach the daemon directly;
                # the agent decides when it stops.
                start_new_session=True,
            )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """Exit status once it has exited (negative = killed by that signal), else None."""
        return self._proc.poll() if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait_ready(self, timeout: float = 10.0) -> SelfInfo:
        """Block until the admin socket answers getSelf. Not from inside a running event loop."""
        return asyncio.run(self.wait_ready_async(timeout))

    async def wait_ready_async(self, timeout: float = 10.0) -> SelfInfo:  # noqa: ASYNC109 (same API as wait_ready)
        """Poll getSelf until it answers; DaemonStartError if the process exits or `timeout` passes."""
        deadline = time.monotonic() + timeout
        last_error = "never polled"
        while True:
            if self._proc is None:
                raise DaemonStartError("daemon was never started")
            if self._proc.poll() is not None:
                raise DaemonStartError(
                    f"yggdrasil exited with {self._proc.returncode} during start-up; log {self.log_path}: "
                    f"{self.log_tail()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DaemonStartError(
                    f"admin socket {self.admin_endpoint} not answering after {timeout:g} s ({last_error}); "
                    f"log {self.log_path}: {self.log_tail()}"
                )
            try:
                info = await AdminClient(self.admin_endpoint, timeout=min(1.0, remaining)).get_self()
            except AdminError as exc:
                last_error = exc.message
            else:
                # Another daemon may own this socket (ours will then exit with "already in use"): not ready.
                if self._expected_key is None or info.key == self._expected_key:
                    return info
                last_error = f"socket answered by another daemon (key {info.key[:16]}…)"
            await asyncio.sleep(min(_READY_POLL_S, max(0.0, deadline - time.monotonic())))

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout` s; reap; remove a stale admin socket file. Returns the exit
        code (negative = signal)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        self._remove_stale_socket()
        return proc.returncode

    def kill(self) -> int | None:
        """SIGKILL and reap, like a crash: the admin socket file is left behind as a real crash leaves it
        (the next start, or `stop()`, removes it)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        return proc.returncode

    def _remove_stale_socket(self) -> None:
        """Unlink the socket file only if nobody answers on it: it may belong to another live daemon (ours
        may have exited because the socket was in use). Same test the daemon itself makes."""
        ep = self._endpoint
        if ep.kind != "unix" or ep.path.startswith("\0") or not os.path.exists(ep.path):
            return
        with socket.socket(socket.AF_UNIX) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(ep.path)
            except ConnectionRefusedError:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(ep.path)
            except OSError:
                pass  # not a socket, no permission, ...: not ours to delete

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(ln for ln in text.splitlines()[-lines:] if ln.strip()) or "(empty log)"

    def __enter__(self) -> DaemonProcess:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
