"""Membership on live netns meshes: 5 -> 3 -> 5 voters as the members file shrinks and grows (the way Nomad's
template rewrites it), and on 7 nodes (5 voters, 2 forwarding clients) the loss of a voter for good, replaced
by the next member. Every acknowledged write survives; no term ever has two leaders."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.localmesh import LocalMesh, MeshOptions
from tests.consensus.support import (
    client,
    cluster,
    put,
    replica,
    views,
    voters_of,
    wait_converged,
    wait_leader,
)
from tests.localmesh.support import wait_until

pytestmark = [pytest.mark.root, pytest.mark.yggdrasil, pytest.mark.slow]


@dataclass
class Watch:
    """A writer and an observer running while membership changes: acknowledged writes, leaders per term."""

    mesh: LocalMesh
    writer_nodes: list[str]
    acked: dict[str, bytes] = field(default_factory=dict)
    statuses: list[int] = field(default_factory=list)
    leaders: dict[int, set[str]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> Iterator[None]:
        def write() -> None:
            with client() as c:
                i = 0
                while not self.stop.is_set():
                    i += 1
                    node = self.writer_nodes[i % len(self.writer_nodes)]
                    key, value = f"w/{i:05d}", f"{node}:{i}".encode()
                    try:
                        r = put(c, self.mesh, node, key, value)
                    except httpx.HTTPError:
                        continue
                    self.statuses.append(r.status_code)
                    if r.status_code == 200:
                        self.acked[key] = value
                    time.sleep(0.05)

        def observe() -> None:
            with client() as c:
                while not self.stop.is_set():
                    for n in self.mesh.node_ids:
                        try:
                            v = cluster(c, self.mesh, n)
                        except httpx.HTTPError:
                            continue
                        if v["role"] == "leader":
                            self.leaders.setdefault(v["term"], set()).add(n)
                    time.sleep(0.1)

        threads = [threading.Thread(target=write), threading.Thread(target=observe)]
        for t in threads:
            t.start()
        try:
            yield
        finally:
            self.stop.set()
            for t in threads:
                t.join(10)

    def check(self, c: httpx.Client, voters: list[str]) -> None:
        two = {t: ls for t, ls in self.leaders.items() if len(ls) > 1}
        assert not two, f"two leaders in one term: {two}"
        held = wait_converged(c, self.mesh, voters, "w/", 30)
        missing = [k for k in self.acked if k not in held]
        assert not missing, f"acknowledged writes lost: {missing[:10]}"
        assert self.acked, "no write was acknowledged while membership changed"


def _write_members(mesh: LocalMesh, keep: list[str], original: dict) -> None:
    doc = dict(original)
    doc["members"] = [m for m in original["members"] if m["node_id"] in keep]
    doc["links"] = [pair for pair in original["links"] if pair[0] in keep and pair[1] in keep]
    assert mesh.members_path is not None
    tmp = mesh.members_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(mesh.members_path)


@pytest.fixture(scope="module")
def mesh5(
    require_root: None, require_yggdrasil: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalMesh]:
    with LocalMesh(MeshOptions(nodes=5, mode="netns", run_dir=tmp_path_factory.mktemp("raft5"))) as mesh:
        yield mesh


def saved_voters(mesh: LocalMesh, node_id: str) -> list[str]:
    try:
        return list(json.loads((mesh.node(node_id).dir / "raft" / "voters.json").read_text())["voters"])
    except (OSError, ValueError):
        return []


def test_5_to_3_to_5_voters_without_losing_a_write_or_two_leaders_in_a_term(mesh5: LocalMesh) -> None:
    mesh = mesh5
    with client() as c:
        leader = wait_leader(c, mesh, mesh.node_ids, 10)
        assert voters_of(c, mesh, leader) == sorted(mesh.node_ids)
        assert mesh.members_path is not None
        original = json.loads(mesh.members_path.read_text())
        # Keep the leader and two others: the two that leave are followers.
        keep = [leader, *[n for n in mesh.node_ids if n != leader][:2]]
        gone = [n for n in mesh.node_ids if n not in keep]
        watch = Watch(mesh, writer_nodes=keep)
        runner = watch.run()
        next(runner)
        try:
            _write_members(mesh, keep, original)
            wait_until("3 voters", lambda: voters_of(c, mesh, wait_leader(c, mesh, keep, 10)) == sorted(keep), 30)
            wait_until(
                "the members that left stop voting",
                lambda: all(cluster(c, mesh, n)["role"] == "client" for n in gone),
                30,
            )
            # A voter restarted now must start with the 3 voters it has, not the 5 it was started with.
            wait_until(
                "voters.json follows the configuration",
                lambda: all(len(saved_voters(mesh, n)) == 3 for n in keep),
                10,
            )
            _write_members(mesh, mesh.node_ids, original)
            wait_until(
                "5 voters again",
                lambda: voters_of(c, mesh, wait_leader(c, mesh, mesh.node_ids, 10)) == sorted(mesh.node_ids),
                45,
            )
        finally:
            next(runner, None)
        watch.check(c, mesh.node_ids)
        ok = watch.statuses.count(200)
        assert ok >= 0.8 * len(watch.statuses), f"{ok} of {len(watch.statuses)} writes acknowledged"


@pytest.fixture(scope="module")
def mesh7(
    require_root: None, require_yggdrasil: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalMesh]:
    opts = MeshOptions(
        nodes=7,
        mode="netns",
        run_dir=tmp_path_factory.mktemp("raft7"),
        agent_env={"X0_RAFT_REPLACE_AFTER": "3"},
    )
    with LocalMesh(opts) as mesh:
        yield mesh


def _connections_to_agents(mesh: LocalMesh, node_id: str, port: int) -> set[str]:
    """This node's established TCP connections to an agent port elsewhere, as 'local -> remote'."""
    out = mesh.run_in_node(node_id, ["ss", "-tnH", "state", "established"], check=True).stdout
    found = set()
    for line in out.splitlines():
        cols = line.split()
        if len(cols) >= 4 and cols[-1].rsplit(":", 1)[-1] == str(port):
            found.add(f"{cols[-2]} -> {cols[-1]}")
    return found


# Two /cluster asks (every 5 s) and a key-directory read (every 10 s) per client fall in any window this long.
WINDOW_S = 10.5


def test_an_idle_client_asks_its_voter_over_one_kept_connection(mesh7: LocalMesh) -> None:
    # A client asks a voter's /cluster every 5 s and lists the node keys every 10 s. With a 5 s keep-alive each
    # ask opened a new TCP connection over the overlay: 48-56 of the 20-node mesh's ~430 overlay packets a
    # second, each one passing two or more daemons. Now each client keeps one connection to one voter.
    mesh = mesh7
    port = int(mesh.node(mesh.node_ids[0]).agent_url.rsplit(":", 1)[1])
    with client() as c:
        leader = wait_leader(c, mesh, mesh.node_ids, 20.0)
        clients = [n for n in mesh.node_ids if n not in voters_of(c, mesh, leader)]

        def aware() -> bool:
            for n in mesh.node_ids:
                view = c.get(f"{mesh.node(n).agent_url}/mapek").json()
                if view["members_reachable"] != view["members_total"] or view["active_incidents"]:
                    return False
            return True

        # Idle, as measured: while a mesh forms, an ask that times out on a route not there yet closes its
        # connection, and the client asks the next voter.
        wait_until("every agent sees every member, no incident", aware, 40)
        before = _asked(c, mesh)
        seen: dict[str, list[set[str]]] = {n: [] for n in clients}
        end = time.monotonic() + WINDOW_S
        while time.monotonic() < end:
            for n in clients:
                seen[n].append(_connections_to_agents(mesh, n, port))
            time.sleep(0.25)
        after = _asked(c, mesh)
    assert after - before >= 2 * len(clients), f"the voters answered {after - before:g} asks in {WINDOW_S:g} s"
    for n in clients:
        # Connections opened while the mesh formed may linger for their keep-alive. One new connection is allowed:
        # the key directory's read and the /cluster ask may overlap, and the pool then opens a second one. Each
        # ask opened its own before (3 in 12 s in the run that failed).
        opened = set().union(*seen[n]) - seen[n][0]
        assert len(opened) <= 1, (
            f"{n} opened {len(opened)} connections to voters in {WINDOW_S:g} s: {sorted(opened)}"
        )
        assert all(seen[n]), f"{n} kept no connection to a voter: {seen[n]}"


def _asked(c: httpx.Client, mesh: LocalMesh) -> float:
    """Requests the agents answered on /cluster and /kv, all agents together."""
    total = 0.0
    for n in mesh.node_ids:
        for family in text_string_to_metric_families(c.get(f"{mesh.node(n).agent_url}/metrics").text):
            if family.name == "x0_http_request_duration_seconds":
                total += sum(
                    s.value
                    for s in family.samples
                    if s.name.endswith("_count") and s.labels.get("route") in ("/cluster", "/kv")
                )
    return total


def test_7_nodes_5_voters_2_clients_forward_and_a_lost_voter_is_replaced(mesh7: LocalMesh) -> None:
    mesh = mesh7
    formed = time.monotonic()
    with client() as c:
        # A correctness bound: seven agents starting on two loaded cores once took longer than 3 s; the 3 s
        # target is checked on the 3-node mesh (test_raft3_netns::test_a_leader_within_3s...).
        leader = wait_leader(c, mesh, mesh.node_ids, 10.0, voters_only=True)
        assert time.monotonic() - formed <= 10.5
        # Clients learn it from a voter (every step while they know no leader, then every 5 s).
        leader = wait_leader(c, mesh, mesh.node_ids, 10.0)
        voters = voters_of(c, mesh, leader)
        clients = [n for n in mesh.node_ids if n not in voters]
        assert len(voters) == 5 and len(clients) == 2
        for n in clients:
            view = cluster(c, mesh, n)
            assert view["role"] == "client" and view["leader_id"] == leader
            # Seconds after the daemons start, a client may not reach any voter over the overlay yet (a suite
            # pass: node-g had 1 of its 2 links and no route to the leader for 2 s). The write is then refused
            # with 503 saying why and whether it may apply; the same write goes through once the overlay does.
            deadline = time.monotonic() + 15
            while (r := put(c, mesh, n, f"w/client-{n}", n.encode())).status_code == 503:
                assert r.headers.get("x-x0-outcome") in ("not-applied", "unknown") and r.json()["detail"], r.text
                assert time.monotonic() < deadline, f"{n} forwards no write: {r.text}"
                time.sleep(0.5)
            assert r.status_code == 200, r.text
            r = c.get(f"{mesh.node(n).agent_url}/kv/w/client-{n}")
            assert r.status_code == 200 and r.json()["stale"] is False
        victim = next(v for v in voters if v != leader)
        watch = Watch(mesh, writer_nodes=[*clients, leader])
        runner = watch.run()
        next(runner)
        try:
            mesh.stop_node(victim)
            survivors = [n for n in mesh.node_ids if n != victim]

            def replaced() -> bool:
                lead = wait_leader(c, mesh, [v for v in voters if v != victim], 10)
                now = voters_of(c, mesh, lead)
                return victim not in now and len(now) == 5

            try:
                wait_until("the lost voter replaced by the next member", replaced, 40)
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {views(c, mesh, survivors)}") from None
        finally:
            next(runner, None)
        lead = wait_leader(c, mesh, survivors, 10)
        new_voters = voters_of(c, mesh, lead)
        assert len(set(new_voters) & set(clients)) == 1
        watch.check(c, new_voters)
        # The lost node comes back as a client: it does not displace its replacement.
        mesh.start_node(victim)
        wait_until("the returning node forwards", lambda: cluster(c, mesh, victim)["role"] == "client", 30)
        assert voters_of(c, mesh, wait_leader(c, mesh, survivors, 10)) == new_voters
        assert replica(c, mesh, new_voters[0], "w/client-")
