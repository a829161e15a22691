"""The log view's Nomad side: a task's stdout/stderr tail through GET /v1/client/fs/logs/:alloc_id, asked as
api-docs/client.mdx ("Stream Logs") documents it: task, type, origin=end, offset, plain=true (text/plain, no
base64 frames), no follow; a 404 (the task's logging disabled) or a 403 (no read-logs) is a clear error."""

from __future__ import annotations

import pytest

from dashboard.logs import LogSource
from dashboard.nomad.client import NomadClient
from dashboard.nomad.errors import NomadError
from dashboard.nomad.settings import load_settings
from dashboard.providers.base import ProviderError
from dashboard.providers.nomad import NomadProvider

from .fake_nomad import FakeNomad

ALLOC = "5fc98185-17ff-26bc-a802-0c74fa471c99"  # the docs' sample allocation id


def test_alloc_logs_reads_the_plain_tail(fake_nomad: FakeNomad) -> None:
    text = "2026-12-03 09:00:01 INFO x0.mapek: tick\n2026-12-03 09:00:02 WARNING x0.mapek: peer_silent node-b\n"
    fake_nomad.set("GET", f"/v1/client/fs/logs/{ALLOC}", text)
    client = NomadClient(load_settings({"NOMAD_ADDR": fake_nomad.url}))
    try:
        assert client.alloc_logs(ALLOC, "agent", "stderr", 65536) == text
    finally:
        client.close()
    (seen,) = fake_nomad.seen("GET", f"/v1/client/fs/logs/{ALLOC}")
    assert {k: v[0] for k, v in seen.query.items()} == {
        "task": "agent",
        "type": "stderr",
        "origin": "end",
        "offset": "65536",
        "plain": "true",
    }


@pytest.mark.parametrize(("status", "body"), [(404, "Unknown allocation"), (403, "Permission denied")])
def test_alloc_logs_refused_is_a_clear_error(fake_nomad: FakeNomad, status: int, body: str) -> None:
    fake_nomad.set("GET", f"/v1/client/fs/logs/{ALLOC}", body, status=status)
    provider = NomadProvider(env={"NOMAD_ADDR": fake_nomad.url}, events=False)
    provider._client = NomadClient(provider.settings)  # as start() leaves it (no job needed to read a log)
    source = LogSource(name="agent stderr", where="x", alloc_id=ALLOC, task="agent", stream="stderr")
    try:
        with pytest.raises(ProviderError, match="read logs") as exc:
            provider.read_log(source)
    finally:
        provider.stop()
    assert isinstance(exc.value.__cause__, NomadError)
    assert str(status) in str(exc.value) or body.lower() in str(exc.value).lower()
