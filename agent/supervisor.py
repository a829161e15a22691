"""Daemon supervision (YGGDRASIL_CONFIG set): run the daemon as a child, restart it when it exits.

The process itself is `agent.yggdrasil.daemon.DaemonProcess` (dies with the agent through PR_SET_PDEATHSIG); this
module adds the policy: restart `X0_DAEMON_RESTART_DELAY` s after an exit, hold it down for a kill-daemon drill
(`stop_for`), start it again at once (`start`), and stop it with the agent (`close`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from agent.yggdrasil.daemon import DaemonProcess, DaemonStartError
from agent.yggdrasil.daemon_config import YggdrasilBinaryMissing

log = logging.getLogger("x0.supervisor")

SupervisorState = Literal["starting", "running", "restarting", "held", "failed", "stopped"]
_EXIT_POLL_S = 0.1


def daemon_log_path(config: Path) -> Path:
    """Beside the config when that directory is writable (local meshes keep a node's files together)."""
    if os.access(config.parent, os.W_OK):
        return config.parent / f"{config.stem}.log"
    return Path(tempfile.gettempdir()) / f"x0-yggdrasil-{config.stem}-{os.getpid()}.log"


class DaemonSupervisor:
    def __init__(
        self,
        config: Path,
        *,
        binary: str | None,
        admin_endpoint: str,
        restart_delay: float,
        on_change: Callable[[], None] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.process = DaemonProcess(
            config,
            log_path=log_path or daemon_log_path(config),
            binary=binary,
            admin_endpoint=admin_endpoint,
        )
        self.restart_delay = restart_delay
        self._on_change = on_change or (lambda: None)
        self.state: SupervisorState = "starting"
        self.epoch = 0  # number of daemon processes started
        self.last_exit_code: int | None = None
        self.last_exit_mono: float | None = None
        self.last_start_error: str | None = None
        self.held_until_mono: float | None = None
        self._restart_now = False  # restart() asked: the next exit is not a crash, start again without delay
        self._next_start_mono: float | None = None
        self._wake = asyncio.Event()
        self._closing = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process.is_running() else None

    def describe(self) -> str:
        now = time.monotonic()
        if self.state == "running":
            return f"supervised daemon running (pid {self.pid}, start #{self.epoch})"
        if self.state == "held" and self.held_until_mono is not None:
            return f"supervised daemon stopped by a drill for another {max(0.0, self.held_until_mono - now):.1f} s"
        exit_text = ""
        if self.last_exit_code is not None and self.last_exit_mono is not None:
            exit_text = f"daemon exited with {self.last_exit_code} {now - self.last_exit_mono:.1f} s ago"
        if self.state == "failed":
            exit_text = f"daemon failed to start: {self.last_start_error}"
        if self.state == "restarting" and self._next_start_mono is not None:
            wait = max(0.0, self._next_start_mono - now)
            return f"{exit_text or 'daemon not running'}; restarting in {wait:.1f} s; log {self.process.log_path}"
        if self.state == "stopped":
            return "supervised daemon stopped"
        return exit_text or f"supervised daemon {self.state}"

    # --- drill hooks ---------------------------------------------------------------------------------------

    async def stop_for(self, duration: float, *, kill: bool = True) -> None:
        """Stop the daemon now (SIGKILL like a crash, or SIGTERM) and keep it down for `duration` s."""
        if duration <= 0:
            raise ValueError("duration must be > 0 s")
        self.held_until_mono = time.monotonic() + duration
        self.state = "held"
        if kill:
            self.process.kill()
        else:
            await asyncio.to_thread(self.process.stop)
        self._wake.set()
        self._on_change()

    async def restart(self, reason: str) -> None:
        """Stop the daemon gracefully and start it again at once (a config it reads only at start changed)."""
        if self.state != "running":
            return  # it reads the new config whenever it starts next
        log.info("restarting yggdrasil: %s", reason)
        self._restart_now = True
        await asyncio.to_thread(self.process.stop)

    def start(self) -> None:
        """Start the daemon now: ends a hold or skips the rest of a restart delay. No-op while it runs."""
        self.held_until_mono = None
        self._next_start_mono = None
        self._wake.set()

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        await asyncio.to_thread(self.process.stop)
        self.state = "stopped"

    async def _sleep_until(self, when: float) -> None:
        self._wake.clear()
        # asyncio.timeout: wait_for can swallow a cancellation on 3.11 (see AgentState.wait_changed)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, when - time.monotonic())):
                await self._wake.wait()

    async def _wait_exit(self) -> int | None:
        pid = self.process.pid
        fd: int | None = None
        if pid is not None:
            with contextlib.suppress(OSError, AttributeError):
                fd = os.pidfd_open(pid)
        if fd is None:
            # No pidfd (old kernel): nothing to wait on but the process table.
            while self.process.is_running():  # noqa: ASYNC110
                await asyncio.sleep(_EXIT_POLL_S)
            return self.process.returncode
        loop = asyncio.get_running_loop()
        exited = loop.create_future()
        loop.add_reader(fd, lambda: exited.done() or exited.set_result(None))
        try:
            if self.process.is_running():
                await exited
        finally:
            loop.remove_reader(fd)
            os.close(fd)
        # The pidfd turns readable at exit; reaping may lag a moment behind.
        while self.process.returncode is None:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        return self.process.returncode

    async def run(self) -> None:
        """The supervision loop; run as a task, end with `close()`."""
        try:
            while not self._closing:
                if self.held_until_mono is not None and time.monotonic() < self.held_until_mono:
                    self.state = "held"
                    await self._sleep_until(self.held_until_mono)
                    continue
                if self.held_until_mono is not None:
                    self.held_until_mono = None
                    log.info("drill hold over: starting the daemon again")
                try:
                    self.process.start()
                except (DaemonStartError, YggdrasilBinaryMissing, OSError) as exc:
                    self.state = "failed"
                    self.last_start_error = str(exc)
                    log.error("cannot start yggdrasil: %s", exc)
                    self._on_change()
                    await self._sleep_until(time.monotonic() + max(self.restart_delay, 1.0))
                    continue
                self.epoch += 1
                self.state = "running"
                self.last_start_error = None
                log.info("yggdrasil started (pid %s, config %s)", self.process.pid, self.process.config_path)
                self._on_change()
                code = await self._wait_exit()
                self.last_exit_code = code
                self.last_exit_mono = time.monotonic()
                if self._closing:
                    break
                if self.held_until_mono is not None:
                    log.info("yggdrasil stopped for a drill (exit %s)", code)
                    self._on_change()
                    continue
                if self._restart_now:
                    self._restart_now = False
                    self._on_change()
                    continue
                self.state = "restarting"
                self._next_start_mono = time.monotonic() + self.restart_delay
                log.warning(
                    "yggdrasil exited with %s; restarting in %g s (log %s: %s)",
                    code,
                    self.restart_delay,
                    self.process.log_path,
                    self.process.log_tail(3),
                )
                self._on_change()
                await self._sleep_until(self._next_start_mono)
                self._next_start_mono = None
        finally:
            if not self._closing:
                # Cancelled without close(): never leave the daemon running without its supervisor.
                self.process.kill()
            self.state = "stopped"
