"""x0dash test plumbing: one real 3-node mesh per module, and waiting on the app without sleeping blindly."""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

S = TypeVar("S")


@pytest.fixture(scope="module")
def mesh(require_yggdrasil: str, require_root: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real netns mesh (agents, daemons, MAPE-K, drills) for every test of the module."""
    if shutil.which("nft") is None and not Path("/usr/sbin/nft").exists():
        pytest.skip("nft not found (apt-get install nftables): drills need it")
    from agent.localmesh import LocalMesh, MeshOptions

    run_dir = tmp_path_factory.mktemp("x0dash-mesh")
    with LocalMesh(MeshOptions(nodes=3, topology="full", mode="netns", run_dir=run_dir)) as m:
        yield m


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(pilot: object, what: str, cond: Callable[[], bool], within: float = 20.0) -> float:
    """Let the app run until cond() holds; AssertionError naming `what` otherwise. Returns seconds waited."""
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > within:
            raise AssertionError(f"{what}: not within {within:g} s")
        await pilot.pause(0.1)  # type: ignore[attr-defined]
    return time.monotonic() - start


def app_error(app: object) -> BaseException | None:
    """The exception that killed the app, if any. Textual keeps it on the app (run_test re-raises it, run() and
    run_async() only print it): a picture or a return value alone does not show that the app died."""
    return app._exception  # type: ignore[attr-defined]


async def until_screen(
    pilot: object, kind: type[S], what: str, cond: Callable[[S], bool], within: float = 10.0
) -> S:
    """Let the app run until its top screen is a composed `kind` and cond(screen) holds; fail at once if the app
    died on the way."""
    app = pilot.app  # type: ignore[attr-defined]

    def shown() -> bool:
        if app_error(app) is not None or not app.is_running:
            raise AssertionError(f"the app died waiting for {kind.__name__} ({what}): {app_error(app)!r}")
        screen = app.screen
        return isinstance(screen, kind) and getattr(screen, "composed", True) and cond(screen)

    await until(pilot, f"{kind.__name__}: {what}", shown, within)
    return app.screen
