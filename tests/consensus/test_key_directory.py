"""The key directory's records (`x0/keys/<node_id>`, contracts §7) without sockets: what a node writes, and what
a reader trusts. The live path (publishing through Raft, admission from it): tests/nomad/test_sidecar_admission.py.
"""

from __future__ import annotations

import msgspec

from agent.consensus.key_directory import parse_record, record_for
from agent.yggdrasil.address import address_for_key

KEY = "a14a5fe9f87ba3480a83e6529ea7d26fcb86a6aea59deb97712c68d6a491d576"


def test_a_record_carries_the_key_its_address_and_when() -> None:
    raw = record_for(KEY.upper(), 1700000000.5)
    assert msgspec.json.decode(raw) == {
        "public_key": KEY,
        "address": address_for_key(KEY),
        "updated_at": 1700000000.5,
    }
    rec = parse_record(raw)
    assert rec is not None and rec.public_key == KEY


def test_records_that_are_not_a_key_are_ignored() -> None:
    good = msgspec.json.decode(record_for(KEY, 1.0))
    for bad in (
        b"",
        b"not json",
        b"[]",
        msgspec.json.encode({**good, "public_key": KEY[:-1]}),  # 63 digits
        msgspec.json.encode({**good, "public_key": KEY.upper()}),  # stored lower-case only
        msgspec.json.encode({**good, "address": "200::1"}),  # an address that is not the key's
        msgspec.json.encode({k: v for k, v in good.items() if k != "updated_at"}),
    ):
        assert parse_record(bad) is None, bad
