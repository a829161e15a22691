"""The agent's garbage-collector settings (agent.memory)."""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.memory import GC_THRESHOLDS, prepare_gc_for_serving

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_start_up_objects_are_out_of_full_collections(restored_gc: None) -> None:
    # This test process has imported the agent, as the agent has when it calls this. What is alive, not the garbage
    # the tests before this one left (it was 10 % of the tracked objects once, and the ratio below failed).
    gc.collect()
    tracked = len(gc.get_objects())
    frozen = prepare_gc_for_serving()
    assert frozen > 0.9 * tracked, (frozen, tracked)
    # What a full collection walks now: the objects made since, not the imported world (70-195 ms of the event
    # loop per pass at 1,000 members before).
    assert len(gc.get_objects()) < 0.05 * frozen, (len(gc.get_objects()), frozen)
    assert gc.get_threshold() == GC_THRESHOLDS
    # Garbage made after start-up is still collected: a reference cycle dropped now is found by the next pass.
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1


def test_the_built_app_does_not_load_example_generators() -> None:
    # polyfactory and Faker (Litestar's generated OpenAPI examples) cost ~7 MB of every agent's RSS for random
    # example values; agent.openapi.response_spec turns them off. A fresh interpreter, as the agent starts.
    code = (
        "import sys\n"
        "from agent.api.app import create_app\n"
        "from agent.settings import Settings\n"
        "app = create_app(Settings.from_env({'NODE_ID': 'node-a', 'YGGDRASIL_ADMIN': 'unix:///nonexistent.sock'}))\n"
        "app.openapi_schema\n"
        "print(sorted(m for m in ('faker', 'polyfactory') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_the_agent_does_not_load_httpx_command_line_client() -> None:
    # httpx imports its CLI (click, rich, pygments: ~4.5 MB per agent) whenever they are installed, and Textual
    # installs them; agent/__init__.py keeps it out. httpx itself still works. A fresh interpreter, as the agent
    # starts (agent.cli imports the agent package before anything imports httpx).
    code = (
        "import sys\n"
        "import agent.cli\n"
        "from agent.api.app import create_app\n"
        "from agent.settings import Settings\n"
        "create_app(Settings.from_env({'NODE_ID': 'node-a', 'YGGDRASIL_ADMIN': 'unix:///nonexistent.sock'}))\n"
        "import httpx\n"
        "httpx.Client(trust_env=False).close()\n"
        "print(sorted(m for m in ('click', 'pygments', 'rich') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_large_blocks_get_their_own_mappings() -> None:
    # In a fresh interpreter (the setting is process-wide): after map_large_blocks_apart, a freed 1 MiB block
    # goes back to the system at once instead of staying in the heap.
    code = (
        "import ctypes, ctypes.util\n"
        "from agent.memory import map_large_blocks_apart\n"
        "def rss():\n"
        "    return int(open('/proc/self/statm').read().split()[1])\n"
        "libc = ctypes.CDLL(ctypes.util.find_library('c'))\n"
        "libc.malloc.restype = ctypes.c_void_p\n"
        "libc.free.argtypes = [ctypes.c_void_p]\n"
        "def churn():\n"
        "    # free a 16 MiB mapped block once: glibc raises its threshold to 16 MiB\n"
        "    big = libc.malloc(16 << 20); ctypes.memset(big, 1, 16 << 20); libc.free(big)\n"
        "    blocks = [libc.malloc(1 << 20) for _ in range(32)]\n"
        "    for b in blocks: ctypes.memset(b, 1, 1 << 20)\n"
        "    before = rss()\n"
        "    keep = blocks[-1]\n"  # the heap's top stays in use, so only mappings can give the rest back
        "    for b in blocks[:-1]: libc.free(b)\n"
        "    return before - rss()\n"
        "import sys\n"
        "if sys.argv[1] == 'on': assert map_large_blocks_apart()\n"
        "print(churn() * 4096 >> 20)\n"
    )

    def freed_mib(mode: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", code, mode], capture_output=True, text=True, timeout=60, cwd=REPO
        )
        assert out.returncode == 0, out.stderr
        return int(out.stdout.strip())

    assert freed_mib("on") >= 28  # the 31 freed blocks went back
    assert freed_mib("off") < 8  # glibc's default: they stay in the heap
