"""Shared test plumbing: skips for missing root/binaries, said once and clearly.

X0_TESTS_PURE=1 selects the pure-logic tests (`just coverage` measures them alone): every test that needs root,
a Yggdrasil daemon, nft or Prometheus skips through the fixtures below, as on a machine without them.
"""

from __future__ import annotations

import os
import shutil

import pytest

PURE = os.environ.get("X0_TESTS_PURE") == "1"
PURE_REASON = "pure-logic run (X0_TESTS_PURE=1): no root, no daemons"


def yggdrasil_binary() -> str | None:
    if PURE:
        return None
    return shutil.which("yggdrasil") or (
        "/usr/sbin/yggdrasil" if os.access("/usr/sbin/yggdrasil", os.X_OK) else None
    )


def _nft_binary() -> str | None:
    return shutil.which("nft") or ("/usr/sbin/nft" if os.access("/usr/sbin/nft", os.X_OK) else None)


@pytest.fixture(scope="session")  # session scope: module-scoped daemon fixtures depend on it
def require_yggdrasil() -> str:
    path = yggdrasil_binary()
    if path is None:
        pytest.skip(PURE_REASON if PURE else "yggdrasil binary not found (apt-get install yggdrasil)")
    return path


@pytest.fixture(scope="session")  # session scope: module-scoped mesh fixtures depend on it
def require_root() -> None:
    if PURE:
        pytest.skip(PURE_REASON)
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces / nftables")
    if shutil.which("ip") is None and not os.access("/usr/sbin/ip", os.X_OK):
        pytest.skip("iproute2 `ip` not found")


@pytest.fixture(scope="session")  # session: module-scoped mesh fixtures for drills depend on it
def require_nft(require_root: None) -> str:
    path = _nft_binary()
    if path is None:
        pytest.skip("nft not found (apt-get install nftables)")
    return path


@pytest.fixture(scope="session")  # session: module-scoped Prometheus fixtures depend on it
def require_prometheus() -> tuple[str, str]:
    if PURE:
        pytest.skip(PURE_REASON)
    prom, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prom is None or promtool is None:
        pytest.skip("prometheus/promtool not found (apt-get install prometheus)")
    return prom, promtool
