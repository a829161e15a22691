"""Nomad tests: never let the caller's NOMAD_* environment leak into python-nomad or our settings."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.nomad.fake_nomad import FakeNomad

NOMAD_ENV = (
    "NOMAD_ADDR",
    "NOMAD_TOKEN",
    "NOMAD_NAMESPACE",
    "NOMAD_REGION",
    "NOMAD_CACERT",
    "NOMAD_CLIENT_CERT",
    "NOMAD_CLIENT_KEY",
    "NOMAD_SKIP_VERIFY",
    "X0_API_TOKEN",
)


@pytest.fixture(autouse=True)
def _clean_nomad_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NOMAD_ENV:
        monkeypatch.delenv(name, raising=False)
    assert not any(name in os.environ for name in NOMAD_ENV)


@pytest.fixture
def fake_nomad() -> Iterator[FakeNomad]:
    server = FakeNomad()
    try:
        yield server
    finally:
        server.close()
