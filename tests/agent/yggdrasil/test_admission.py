"""Peer admission without sockets: parsing the daemon's refusals, the keys to admit, the bounded refusal log,
and following a log file that grows, is truncated or replaced."""

from __future__ import annotations

import json
from pathlib import Path

from agent.admission import LogFollower
from agent.members import parse_members
from agent.yggdrasil.admission import (
    RESTART_LATE_S,
    RESTART_SLOT_S,
    Refusal,
    RefusalLog,
    admitted_keys,
    configured_keys,
    keyless,
    parse_refusal,
    restart_colours,
    restart_needed,
    restart_time,
)

KEY = "a14a5fe9f87ba3480a83e6529ea7d26fcb86a6aea59deb97712c68d6a491d576"


def test_the_refusal_line_of_0_4_7_names_key_and_dialler() -> None:
    # Verbatim from a Debian 0.4.7 listener with AllowedPublicKeys set, dialled by another key.
    line = (
        "2026/12/04 02:29:34 Link handler tls://127.0.0.1:41984 error (127.0.0.1:41984): "
        f'node public key "{KEY}" is not in AllowedPublicKeys'
    )
    assert parse_refusal(line) == Refusal(key=KEY, remote="127.0.0.1:41984")


def test_other_wordings_still_name_the_key_and_other_lines_are_not_refusals() -> None:
    # 0.5.x returns the same error text; how it prefixes it is not pinned here, so only the key is relied on.
    assert parse_refusal(f'... node public key "{KEY.upper()}" is not in AllowedPublicKeys') == Refusal(KEY, None)
    assert parse_refusal("2026/12/04 02:29:41 Connected outbound TLS: 200:7068::1@127.0.0.1:47111") is None
    assert parse_refusal(f'node public key "{KEY[:-2]}" is not in AllowedPublicKeys') is None  # not 64 digits


def members(*entries: tuple[str, str | None]):  # type: ignore[no-untyped-def]
    doc = {
        "members": [
            {"node_id": n, "agent_url": f"http://127.0.0.1:{8000 + i}", **({"public_key": k} if k else {})}
            for i, (n, k) in enumerate(entries)
        ]
    }
    return parse_members(json.dumps(doc).encode())


def test_a_node_admits_exactly_the_other_members_keys_or_everyone_when_one_is_unknown() -> None:
    kb, kc = "b" * 64, "c" * 64
    assert admitted_keys(members(("node-a", "a" * 64), ("node-b", kc), ("node-c", kb)), "node-a") == (kb, kc)
    # Its own key is not needed (a daemon does not dial itself); its own missing key does not matter either.
    assert admitted_keys(members(("node-a", None), ("node-b", kb)), "node-a") == (kb,)
    # node-c's key unknown: it cannot dial in, but admission does not open for it.
    assert admitted_keys(members(("node-a", "a" * 64), ("node-b", kb), ("node-c", None)), "node-a") == (kb,)
    # No other member's key known (a Nomad members file), or no other member: open.
    assert admitted_keys(members(("node-a", "a" * 64), ("node-b", None)), "node-a") is None
    assert admitted_keys(members(("node-a", "a" * 64)), "node-a") is None
    assert configured_keys({"AllowedPublicKeys": [kc.upper(), kb]}) == (kb, kc)
    assert configured_keys({}) == () and configured_keys({"AllowedPublicKeys": "x"}) == ()


def test_only_a_missing_neighbour_key_restarts_the_daemon() -> None:
    ka, kb, kc, kd = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)
    full3 = members(("node-a", ka), ("node-b", kb), ("node-c", kc))
    assert not restart_needed(full3, "node-a", (kb, kc))  # as it runs
    assert restart_needed(full3, "node-a", (kb,))  # node-c joined: a neighbour in a full plan
    assert restart_needed(full3, "node-a", ())  # running open while every key is known
    assert not restart_needed(full3, "node-a", (kb, kc, kd))  # node-d left: dropped at the next start
    assert not restart_needed(members(("node-a", ka), ("node-b", None)), "node-a", (kc,))  # nothing known
    # A member without a key joins (the soak's fake members): nothing to admit, no restart.
    assert not restart_needed(members(("node-a", ka), ("node-b", kb), ("node-x", None)), "node-a", (kb,))
    # 12 members on the expander: a joiner that is not node-a's neighbour does not restart node-a's daemon.
    ids = [f"node-{i:02d}" for i in range(12)]
    big = members(*[(n, f"{i:064x}") for i, n in enumerate(ids)])
    neighbours = set(big.neighbours("node-00"))
    assert 0 < len(neighbours) < 11
    outsider = next(n for n in ids[1:] if n not in neighbours)
    running = tuple(sorted(big.by_id[n].public_key for n in ids[1:] if n != outsider))  # type: ignore[misc]
    assert not restart_needed(big, "node-00", running)
    insider = next(iter(neighbours))
    running = tuple(sorted(big.by_id[n].public_key for n in ids[1:] if n != insider))  # type: ignore[misc]
    assert restart_needed(big, "node-00", running)


def test_admission_restarts_take_turns_so_no_two_neighbours_restart_together() -> None:
    # A Nomad mesh learns every key at once and every open daemon must restart: measured on a 3-node mesh, all
    # three restarting within 0.1 s dropped every link and Raft's leader with them (the overlay test's 503).
    for n in (3, 12, 200):
        ids = [f"node-{i:03d}" for i in range(n)]
        big = members(*[(m, f"{i:064x}") for i, m in enumerate(ids)])
        colours = restart_colours(big)
        assert set(colours) == set(ids)
        assert all(colours[a] != colours[b] for a in ids for b in big.neighbours(a)), n
        rounds = max(colours.values()) + 1
        assert rounds <= max(len(big.neighbours(m)) for m in ids) + 1
        # Whenever each node learns the keys, its restart falls in a slot of its own colour within one round, and
        # two neighbours' restarts never share a slot.
        for m, learned in zip(ids, (1_000_000.0 + 0.37 * i for i in range(n)), strict=True):
            at = restart_time(colours, m, learned)
            assert learned - RESTART_LATE_S <= at <= learned + rounds * RESTART_SLOT_S, (m, learned, at)
            assert at % RESTART_SLOT_S == 0 and int(at / RESTART_SLOT_S) % rounds == colours[m]
    # Full 3-node plan: three colours, three different slots.
    full3 = members(("node-a", "a" * 64), ("node-b", "b" * 64), ("node-c", "c" * 64))
    slots = {restart_time(restart_colours(full3), m, 3000.5) for m in full3.ids}
    assert len(slots) == 3
    assert restart_time({}, "node-x", 3000.1) == 3000.0  # not a member: any slot, the current one if just begun
    assert restart_time({}, "node-x", 3000.5) == 3002.0  # but not late in it


def test_the_refusal_log_counts_per_key_and_stays_bounded() -> None:
    log = RefusalLog(limit=3)
    keys = [f"{i:064x}" for i in range(5)]
    for t, k in enumerate(keys):
        log.record(Refusal(k, f"10.0.0.{t}:1"), now=float(t))
    log.record(Refusal(keys[2], None), now=10.0)
    recent = log.recent(since=0.0)
    assert [p.key for p in recent] == [keys[2], keys[4], keys[3]]  # most recent first; 0 and 1 forgotten
    assert recent[0].attempts == 2 and recent[0].remote == "10.0.0.2:1" and recent[0].first_at == 2.0
    assert log.total == 6 and [p.key for p in log.recent(since=4.0)] == [keys[2], keys[4]]


def test_the_follower_reads_new_lines_only_and_starts_over_on_truncation_or_a_new_file(tmp_path: Path) -> None:
    late = tmp_path / "late.log"
    follow_late = LogFollower(late)
    assert follow_late.read_lines() == []  # no file yet
    late.write_text("first line of a daemon started after the agent\n")
    assert follow_late.read_lines() == ["first line of a daemon started after the agent"]

    path = tmp_path / "yggdrasil.log"
    path.write_text("old 1\nold 2\n")
    follow = LogFollower(path)
    assert follow.read_lines() == []  # history before the agent looked is not news
    with path.open("a") as fh:
        fh.write("new 1\nnew 2 with no end")
    assert follow.read_lines() == ["new 1"]
    with path.open("a") as fh:
        fh.write(" yet\n")
    assert follow.read_lines() == ["new 2 with no end yet"]
    path.write_text("after truncation\n")  # shorter than what was read
    assert follow.read_lines() == ["after truncation"]
    path.unlink()
    path.write_text("a new file, longer than the one before it\n")
    assert follow.read_lines() == ["a new file, longer than the one before it"]


def test_keys_published_in_the_store_fill_in_for_a_members_file_without_keys() -> None:
    """A Nomad members file has no keys: the nodes' published keys are admitted instead; the file's own key wins,
    and a published key of a node that is not a member is not admitted."""
    ka, kb, kc, kx = "a" * 64, "b" * 64, "c" * 64, "9" * 64
    nomad = members(("node-a", None), ("node-b", None), ("node-c", None))
    assert admitted_keys(nomad, "node-a") is None  # nothing published yet: open
    published = {"node-a": ka, "node-b": kb, "node-x": kx}
    assert admitted_keys(nomad, "node-a", published) == (kb,)
    assert keyless(nomad, "node-a", published) == ["node-c"]  # not published yet: cannot dial in
    assert restart_needed(nomad, "node-a", (), published)  # running open while a key is known
    assert not restart_needed(nomad, "node-a", (kb,), published)
    assert restart_needed(nomad, "node-a", (kb,), {**published, "node-c": kc})  # node-c published: a neighbour
    mixed = members(("node-a", None), ("node-b", kb))
    assert admitted_keys(mixed, "node-a", {"node-b": "e" * 64}) == (kb,)  # the members file wins
