"""Real `x0-agent` processes beside real yggdrasil daemons: a 3-node full mesh on loopback (LocalMesh).

One mesh per module: every agent reports its two peers, routes to every other member, truthful /mesh/peers, a
killed daemon turns /health 503 naming `yggdrasil` and back to 200 after the supervisor restarts it, a bad
members file keeps the previous members, members changes are applied, /metrics passes `promtool check metrics`,
and agents stop with their daemons. MAPE-K is off: this is the agent's own behaviour (MAPE-K has its tests).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest

from agent.localmesh import LocalMesh, MeshOptions
from agent.mesh.schemas import Health, MeshPeers, MeshRoutes, MeshStatus
from tests.agent.service.agentproc import wait_for

pytestmark = [pytest.mark.yggdrasil, pytest.mark.slow]

IDS = ["node-a", "node-b", "node-c"]


@pytest.fixture(scope="module")
def mesh(require_yggdrasil: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    options = MeshOptions(
        nodes=3,
        topology="full",
        mode="loopback",
        run_dir=tmp_path_factory.mktemp("x0t-h2-mesh"),
        agent_env={"X0_DAEMON_RESTART_DELAY": "1", "X0_MAPEK_ENABLED": "false"},
        start_timeout=30,
    )
    with LocalMesh(options) as m:
        yield m


def get(mesh: LocalMesh, node_id: str, path: str) -> httpx.Response:
    return httpx.get(mesh.node(node_id).agent_url + path, timeout=5, trust_env=False)


def logs(mesh: LocalMesh) -> str:
    return "\n".join(f"--- {n.id}\n{n.log_path.read_text(errors='replace')[-3000:]}" for n in mesh.nodes)


def test_every_agent_reports_its_two_peers(mesh: LocalMesh) -> None:
    # How fast (the 5 s from process start target) is bench/heal_bench.py's "formation" figure, not this test's.
    reached: dict[str, float] = {}
    deadline = time.monotonic() + 15
    while len(reached) < len(IDS) and time.monotonic() < deadline:
        for node_id in IDS:
            if node_id in reached:
                continue
            s = msgspec.json.decode(get(mesh, node_id, "/mesh/status").content, type=MeshStatus)
            if s.peers_up == 2:
                reached[node_id] = time.time() - mesh.started_at(node_id)
        time.sleep(0.05)
    assert set(reached) == set(IDS), f"only {reached} reported 2 peers\n{logs(mesh)}"
    print(
        f"\n2 peers up, seconds from each agent's process start: { {n: round(t, 2) for n, t in reached.items()} }"
    )


def test_status_and_health(mesh: LocalMesh) -> None:
    for node_id in IDS:
        r = get(mesh, node_id, "/health")
        health = msgspec.json.decode(r.content, type=Health)
        assert r.status_code == 200, r.text
        assert health.status == "ok" and health.node_id == node_id and health.peers_up == 2
        assert health.yggdrasil.reachable and health.yggdrasil.api_version == "0.4"
        assert {c.name for c in health.checks} == {"yggdrasil", "monitor", "members", "peers"}
        s = msgspec.json.decode(get(mesh, node_id, "/mesh/status").content, type=MeshStatus)
        node = mesh.node(node_id)
        assert s.key == node.public_key and s.address == node.yggdrasil_address
        assert (s.peers_expected, s.members_known) == (2, 3)
        assert s.snapshot_age_s is not None and s.snapshot_age_s < 3


def test_peers_name_members_and_nothing_is_missing(mesh: LocalMesh) -> None:
    for node_id in IDS:
        peers = msgspec.json.decode(get(mesh, node_id, "/mesh/peers").content, type=MeshPeers)
        others = sorted(set(IDS) - {node_id})
        assert sorted(p.node_id for p in peers.peers) == others, peers
        for p in peers.peers:
            assert p.up and p.planned and not p.temporary and p.key == mesh.node(p.node_id).public_key
            assert p.bytes_recvd is not None and p.bytes_recvd > 0
        assert peers.missing == []


def test_routes_list_the_other_members(mesh: LocalMesh) -> None:
    def routes_complete() -> bool:
        for node_id in IDS:
            routes = msgspec.json.decode(get(mesh, node_id, "/mesh/routes").content, type=MeshRoutes)
            if {r.node_id for r in routes.routes} != set(IDS) - {node_id}:
                return False
        return True

    # 0.4's DHT lists only key-space neighbours; route discovery fills in the rest within a few monitor ticks.
    assert wait_for(routes_complete, timeout=15, interval=0.25), logs(mesh)
    routes = msgspec.json.decode(get(mesh, "node-a", "/mesh/routes").content, type=MeshRoutes)
    hops = {r.node_id: r.next_hop_node_id for r in routes.routes if r.kind == "path"}
    # 0.4 source routes follow the spanning tree, so even in a full mesh the next hop can be the other peer;
    # it is always one of node-a's peers, named by member id.
    assert set(hops) == {"node-b", "node-c"} and set(hops.values()) <= {"node-b", "node-c"}, routes


def test_metrics_pass_promtool(mesh: LocalMesh, require_prometheus: tuple[str, str]) -> None:
    _, promtool = require_prometheus
    r = get(mesh, "node-a", "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    check = subprocess.run([promtool, "check", "metrics"], input=r.content, capture_output=True, timeout=30)
    assert check.returncode == 0 and check.stdout == b"" and check.stderr == b"", check
    text = r.text
    for line in [
        'x0_peer_up{peer="node-b",planned="true"} 1.0',
        'x0_peer_up{peer="node-c",planned="true"} 1.0',
        "x0_peers_up 2.0",
        "x0_peers_planned 2.0",
        "x0_members_known 3.0",
        "x0_yggdrasil_up 1.0",
        'x0_build_info{version="0.1.0"} 1.0',
        'x0_mapek_incidents_active{kind="peer_lost"} 0.0',
        'x0_drill_active{kind="kill-daemon"} 0.0',
    ]:
        assert line in text, line
    assert 'x0_http_request_duration_seconds_count{method="GET",route="/mesh/status",status="200"}' in text
    assert "_created" not in text  # disabled in the agent process (see agent.cli)


def test_killed_daemon_turns_health_503_then_back(mesh: LocalMesh) -> None:
    assert get(mesh, "node-b", "/health").status_code == 200
    pid = mesh.daemon_pid("node-b")
    assert pid is not None, logs(mesh)
    os.kill(pid, signal.SIGKILL)

    def failing() -> tuple[Health, str] | None:
        # /health and /metrics read together while the daemon is down: the supervisor restarts it 1 s after its
        # exit, so a /metrics read after the 503 was seen might already show the new daemon.
        r = get(mesh, "node-b", "/health")
        if r.status_code != 503:
            return None
        metrics = get(mesh, "node-b", "/metrics").text
        return (msgspec.json.decode(r.content, type=Health), metrics) if "x0_yggdrasil_up 0.0" in metrics else None

    down = wait_for(failing, timeout=10, interval=0.02)
    assert down is not None, f"no 503 with x0_yggdrasil_up 0 seen while the daemon was down\n{logs(mesh)}"
    health, metrics = down
    failed = [c for c in health.checks if not c.ok]
    assert failed[0].name == "yggdrasil" and health.yggdrasil.reachable is False
    assert "daemon exited with -9" in failed[0].detail, failed[0].detail
    assert 'x0_peer_up{peer="node-a",planned="true"} 0.0' in metrics and "x0_peers_up 0.0" in metrics

    back = wait_for(lambda: get(mesh, "node-b", "/health").status_code == 200, timeout=15, interval=0.1)
    assert back, f"no 200 after restart\n{logs(mesh)}"
    new_pid = mesh.daemon_pid("node-b")
    assert new_pid is not None and new_pid != pid

    # The restarted daemon re-dials its planned link (node-b dials node-c).
    def c_up() -> bool:
        peers = msgspec.json.decode(get(mesh, "node-b", "/mesh/peers").content, type=MeshPeers)
        return "node-c" in {p.node_id for p in peers.peers if p.up}

    assert wait_for(c_up, timeout=5), logs(mesh)


def test_hung_daemon_turns_health_503_then_back(mesh: LocalMesh) -> None:
    """SIGSTOP: the socket still accepts but nothing answers. The snapshot ages past two monitor intervals and the
    pending call times out; /health says so. SIGCONT brings 200 back (kept short: the peers' 6 s link timeout
    never fires, so no link is lost)."""
    pid = mesh.daemon_pid("node-c")
    assert pid is not None and get(mesh, "node-c", "/health").status_code == 200
    stopped = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:

        def failing() -> Health | None:
            r = get(mesh, "node-c", "/health")
            return msgspec.json.decode(r.content, type=Health) if r.status_code == 503 else None

        health = wait_for(failing, timeout=6, interval=0.05)
        detected = time.monotonic() - stopped
        assert health is not None, logs(mesh)
        check = next(c for c in health.checks if c.name == "yggdrasil")
        assert not check.ok and ("daemon hung?" in check.detail or "AdminTimeout" in check.detail), check
        assert detected < 3.0, f"hang reported after {detected:.2f} s"
    finally:
        os.kill(pid, signal.SIGCONT)
    assert wait_for(lambda: get(mesh, "node-c", "/health").status_code == 200, timeout=6), logs(mesh)


def _bump_mtime(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_bad_members_file_keeps_previous_members_and_shows_in_health(mesh: LocalMesh) -> None:
    path = mesh.members_path
    assert path is not None
    good = path.read_bytes()
    try:
        path.write_text('{"members": [{"node_id": "BAD"')

        def members_check_fails(node_id: str) -> dict | None:
            r = get(mesh, node_id, "/health")
            checks = {c["name"]: c for c in r.json()["checks"]}
            return checks["members"] if r.status_code == 503 and not checks["members"]["ok"] else None

        for node_id in IDS:
            check = wait_for(lambda node_id=node_id: members_check_fails(node_id), timeout=5)
            assert check is not None, logs(mesh)
            assert "not valid JSON" in check["detail"] and "keeping the previous 3 members" in check["detail"]
            status = get(mesh, node_id, "/mesh/status").json()
            assert status["members_known"] == 3 and status["peers_expected"] == 2
    finally:
        path.write_bytes(good)
        _bump_mtime(path)  # a new mtime even if the write lands within the same clock tick
    for node_id in IDS:
        assert wait_for(lambda node_id=node_id: get(mesh, node_id, "/health").status_code == 200, timeout=8)


def test_members_change_is_picked_up(mesh: LocalMesh) -> None:
    """Dropping the planned link a-c: both stop expecting it, node-a (the dialer) removes the peer it added, and
    a remaining a-c link is no longer shown as planned. (0.4.7 may re-dial a removed runtime peer once on its own,
    reference §1.5, so the link itself is not asserted gone.) Restoring the file restores the plan."""
    path = mesh.members_path
    assert path is not None
    good = path.read_bytes()
    doc = json.loads(good)
    doc["links"] = [link for link in doc["links"] if set(link) != {"node-a", "node-c"}]
    try:
        path.write_text(json.dumps(doc))
        _bump_mtime(path)
        for node_id in ("node-a", "node-c"):
            expected_one = wait_for(
                lambda node_id=node_id: get(mesh, node_id, "/mesh/status").json()["peers_expected"] == 1, timeout=5
            )
            assert expected_one, logs(mesh)
        peers = get(mesh, "node-a", "/mesh/peers").json()["peers"]
        assert all(not p["planned"] for p in peers if p["node_id"] == "node-c"), peers
        assert wait_for(lambda: "removePeer" in mesh.node("node-a").log_path.read_text(), timeout=5), logs(mesh)
    finally:
        path.write_bytes(good)
        _bump_mtime(path)

    def a_planned_peers_up() -> bool:
        peers = get(mesh, "node-a", "/mesh/peers").json()["peers"]
        return {p["node_id"] for p in peers if p["up"] and p["planned"]} == {"node-b", "node-c"}

    assert wait_for(a_planned_peers_up, timeout=8), logs(mesh)


def test_agents_stop_with_their_daemons(mesh: LocalMesh) -> None:
    """Last (it takes nodes down): SIGTERM stops agent and daemon; a SIGKILLed agent takes its daemon with it."""
    for node_id, sig in [("node-a", signal.SIGTERM), ("node-b", signal.SIGKILL)]:
        agent, daemon = mesh.agent_pid(node_id), mesh.daemon_pid(node_id)
        assert agent and daemon
        os.kill(agent, sig)
        assert wait_for(lambda daemon=daemon: not _alive(daemon), timeout=8), (
            f"{node_id}: daemon {daemon} survived"
        )
        assert wait_for(lambda agent=agent: not _alive(agent), timeout=8)
    log = mesh.node("node-a").log_path.read_text()
    assert "Application shutdown complete" in log and "Traceback" not in log
    # SIGTERM to the agent stops its daemon gracefully (the daemon logs its own orderly stop).
    daemon_log = (mesh.node("node-a").config_path.parent / "yggdrasil.log").read_text()
    assert "Stopping..." in daemon_log and "Stopped" in daemon_log, daemon_log[-500:]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"  # a zombie has exited; its parent just has not reaped it yet
