"""Issue 12 item 1: closing the terminal (SIGHUP: tmux kill-session, an SSH drop), SIGTERM and SIGINT end a real
`x0dash --local 3` the way `q` does: no namespace, veth, bridge, daemon or agent of its mesh is left, and its logs
stay. x0dash runs in a real terminal (tmux) as an operator would start it. SIGINT is not run here: the app handles
it exactly as SIGTERM (`_on_exit_signal`), and each run costs the suite 4-6 s."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.localmesh.support import leftovers

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.yggdrasil]

X0DASH = str(Path(sys.executable).parent / "x0dash")


# Our own tmux server: nothing of the operator's (or another test's) is touched.
SOCKET = f"x0dash-test-{os.getpid()}"


def _tmux(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["tmux", "-L", SOCKET, *args], capture_output=True, text=True, timeout=10)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes (tmux reaps it).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _wait(what: str, cond, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(0.2)


@pytest.fixture
def tmux() -> str:
    if shutil.which("tmux") is None:
        pytest.skip("tmux not found (apt-get install tmux): the test runs x0dash in a real terminal")
    return "tmux"


# SIGINT and SIGTERM take the same path in the app (EXIT_SIGNALS); SIGHUP has its own (is the terminal gone?).
@pytest.mark.parametrize("sig", ["SIGHUP", "SIGTERM"])
def test_signal_tears_down_the_local_mesh(
    sig: str, tmux: str, require_root: None, require_yggdrasil: str, tmp_path: Path
) -> None:
    session = f"x0dash-test-{uuid.uuid4().hex[:8]}"
    run_dir = tmp_path / "run"
    cmd = f"exec {X0DASH} --local 3 --run-dir {run_dir} --reports-dir {tmp_path / 'reports'}"
    started = _tmux("new-session", "-d", "-s", session, "-x", "200", "-y", "50", cmd)
    assert started.returncode == 0, started.stderr
    _tmux("set-option", "-t", session, "remain-on-exit", "on")  # read its last words
    mesh_id = mesh_dir = None
    try:
        pid = int(_tmux("list-panes", "-t", session, "-F", "#{pane_pid}").stdout.split()[0])

        def screen() -> str:
            return _tmux("capture-pane", "-p", "-t", session).stdout

        _wait("the dashboard shows the whole mesh", lambda: "nodes 3/3 up" in screen(), 90)
        inventory = json.loads(next(run_dir.glob("local-*/inventory.json")).read_text())
        mesh_dir = Path(inventory["mesh_dir"])
        mesh_id = inventory["mesh"].removeprefix("local-")
        during = leftovers(mesh_id, mesh_dir)
        assert len([x for x in during if x.startswith("netns ")]) == 3 and any("(yggdrasil)" in x for x in during)

        if sig == "SIGHUP":
            _tmux("kill-session", "-t", session)  # the terminal closes: the kernel sends SIGHUP
        else:
            os.kill(pid, getattr(signal, sig))
        _wait("x0dash exits", lambda: not _alive(pid), 60)
        assert leftovers(mesh_id, mesh_dir) == []
        assert (mesh_dir / "node-a" / "agent.log").exists()  # the post-mortem stays
        if sig != "SIGHUP":
            # Its last words, printed after the dashboard gave the terminal back (remain-on-exit keeps them);
            # the exit status is 128+signal (tmux does not always record it, so the line is what is checked).
            last = _tmux("capture-pane", "-p", "-S", "-50", "-t", session).stdout
            assert f"x0dash: {sig} received; stopped cleanly" in last, last
    finally:
        _tmux("kill-session", "-t", session)
        if mesh_id is not None:
            subprocess.run([sys.executable, "-m", "agent.cli", "local-mesh", "--cleanup"], capture_output=True)
