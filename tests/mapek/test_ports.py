"""agent.mapek.ports: the peering-port checks MAPE-K runs in a worker thread (real sockets on loopback)."""

from __future__ import annotations

import socket

from agent.mapek.ports import PortProber


def test_answering_refused_and_unresolvable_ports_each_get_their_own_verdict() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, not listening: refused
    try:
        targets = [
            ("127.0.0.1", listener.getsockname()[1]),
            ("127.0.0.1", closed.getsockname()[1]),
            ("x0-no-such-host.invalid", 1),
        ]
        prober = PortProber(timeout=2.0, in_flight=2)
        ok, refused, unresolvable = prober.check(targets)
    finally:
        listener.close()
        closed.close()
    assert ok.ok and ok.rtt_s is not None and ok.error is None
    assert not refused.ok and refused.error == "Connection refused"
    assert not unresolvable.ok and unresolvable.error  # the resolver's own words, never an exception
    assert prober.peak <= 2
