"""The supervised event stream against chunked NDJSON from the fake Nomad (heartbeat first, then frames)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from dashboard.nomad.backoff import Backoff
from dashboard.nomad.client import NomadClient
from dashboard.nomad.events import EventStream
from dashboard.nomad.settings import load_settings
from dashboard.providers.nomad import NomadProvider
from tests.nomad import shapes
from tests.nomad.fake_nomad import CLOSE, FakeNomad


def until(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def frame(index: int) -> dict:
    return shapes.alloc_event_frame(index, shapes.alloc_stub("a1", "n1", "node-a"))


def test_stream_resumes_after_the_last_index_and_drops_replays(fake_nomad: FakeNomad) -> None:
    seen: list[int] = []
    client = NomadClient(load_settings({"NOMAD_ADDR": fake_nomad.url}))
    stream = EventStream(
        client, ["Allocation:x0-mesh", "Node"], lambda f: seen.append(f["Index"]), backoff=Backoff(0.05, 0.2)
    )
    stream.start()
    try:
        assert stream.wait_live(5.0), stream.state
        first = fake_nomad.seen("GET", "/v1/event/stream")[0]
        assert first.query["index"] == ["0"]
        assert first.query["topic"] == ["Allocation:x0-mesh", "Node"]
        assert first.query["namespace"] == ["default"]
        fake_nomad.events.put(frame(24))
        fake_nomad.events.put(frame(25))
        assert until(lambda: seen == [24, 25])
        # The server ends the stream (agent restart): we reconnect from index 26, and a replayed old frame
        # (python-nomad's failure mode) is dropped.
        fake_nomad.events.put(CLOSE)
        assert until(lambda: fake_nomad.streams_opened == 2)
        assert until(lambda: stream.live)
        assert fake_nomad.seen("GET", "/v1/event/stream")[1].query["index"] == ["26"]
        fake_nomad.events.put(frame(25))
        fake_nomad.events.put(frame(30))
        assert until(lambda: seen == [24, 25, 30])
        assert stream.duplicates == 1
        assert stream.connects == 2
        assert stream.state == "live (index 30)"
    finally:
        stream.stop()
        client.close()


def test_stream_refused_by_acl_backs_off_and_says_why(fake_nomad: FakeNomad) -> None:
    fake_nomad.stream_status = 403
    client = NomadClient(load_settings({"NOMAD_ADDR": fake_nomad.url}))
    stream = EventStream(client, ["Node"], lambda f: None, backoff=Backoff(0.05, 0.1))
    stream.start()
    try:
        assert until(lambda: fake_nomad.streams_opened >= 3), "the supervisor must keep retrying"
        assert not stream.live
        assert "403 Permission denied" in stream.state and 'node { policy = "read" }' in stream.state
        # Once Nomad lets us in, the same supervisor goes live without anyone restarting it.
        fake_nomad.stream_status = 200
        assert stream.wait_live(5.0)
    finally:
        stream.stop()
        client.close()


def test_stop_returns_promptly_while_the_stream_is_idle(fake_nomad: FakeNomad) -> None:
    client = NomadClient(load_settings({"NOMAD_ADDR": fake_nomad.url}))
    stream = EventStream(client, ["Node"], lambda f: None)
    stream.start()
    assert stream.wait_live(5.0)
    t0 = time.monotonic()
    stream.stop(timeout=3.0)
    assert time.monotonic() - t0 < 2.5
    assert not any(t.name == "x0dash-nomad-events" and t.is_alive() for t in threading.enumerate())
    client.close()


def test_provider_rereads_nomad_on_events_and_polls_while_the_stream_is_down(fake_nomad: FakeNomad) -> None:
    nd = shapes.node("n1", "node-a")
    stub = shapes.alloc_stub("a1", "n1", "node-a")
    fake_nomad.set("GET", "/v1/job/x0-mesh", shapes.job())
    fake_nomad.set("GET", "/v1/job/x0-mesh/allocations", [stub])
    fake_nomad.set("GET", "/v1/nodes", [nd])
    fake_nomad.set("GET", "/v1/service/x0-mesh-agent", [])
    fake_nomad.set("GET", "/v1/allocation/a1", shapes.allocation(stub, api_port=1, peer_port=2))
    changed = threading.Event()
    p = NomadProvider(env={"NOMAD_ADDR": fake_nomad.url}, events=True, resync_s=3600)
    p.add_change_listener(changed.set)
    p.start()
    try:
        assert p._events is not None and p._events.wait_live(5.0)
        p.refresh()
        reads = len(fake_nomad.seen("GET", "/v1/job/x0-mesh/allocations"))
        p.refresh()
        assert len(fake_nomad.seen("GET", "/v1/job/x0-mesh/allocations")) == reads, "live stream: no re-read"
        fake_nomad.events.put(frame(40))
        assert changed.wait(5.0)
        snap = p.refresh()
        assert len(fake_nomad.seen("GET", "/v1/job/x0-mesh/allocations")) == reads + 1
        assert "events live (index 40)" in snap.detail
        # Stream refused from now on: every refresh polls Nomad.
        fake_nomad.stream_status = 403
        fake_nomad.events.put(CLOSE)
        assert until(lambda: not p._events.live)
        before = len(fake_nomad.seen("GET", "/v1/job/x0-mesh/allocations"))
        p.refresh()
        p.refresh()
        assert len(fake_nomad.seen("GET", "/v1/job/x0-mesh/allocations")) == before + 2
    finally:
        p.stop()
