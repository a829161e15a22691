"""Self-healing on a real namespace mesh (issue 3): real daemons, real agents, real nftables faults.

Meshes are shared per module where the scenarios leave the mesh healthy again; the flapping test gets its own
mesh because a quarantine outlives the test on purpose.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from itertools import combinations
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.drills import faults
from agent.localmesh import LocalMesh, MeshOptions, NodeHandle
from tests.localmesh.support import http_client, peers_up, post_drill, wait_until

pytestmark = [pytest.mark.root, pytest.mark.yggdrasil, pytest.mark.slow]

TOKEN = "x0t-mapek-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Correctness bounds, not the speed targets: issue 3's targets (detect 2 s, repair 2 s, route around 5 s) are
# measured by bench/heal_bench.py beside the daemons alone. These only say MAPE-K did it, with wide margins on a
# shared 2-core machine, and still tell MAPE-K from the daemons alone (those never route around and need their
# ~34-60 s retry loop to repair a partition).
DETECT_S = 8.0  # an observer opens an incident while the fault still lasts (faults here last 10 s or more)
REPAIR_S = 15.0  # the mesh is whole again well before the daemons' own retry would do it
AROUND_S = 15.0  # with a node gone, the survivors link around it while it is gone


def _mesh(tmp: Path, topology: str) -> LocalMesh:
    return LocalMesh(MeshOptions(nodes=3, topology=topology, mode="netns", run_dir=tmp, api_token=TOKEN))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with http_client() as c:
        yield c


@pytest.fixture(scope="module")
def chain(
    require_root: None, require_yggdrasil: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalMesh]:
    with _mesh(tmp_path_factory.mktemp("x0t-mapek-chain"), "chain") as mesh:
        yield mesh


@pytest.fixture(scope="module")
def full(
    require_nft: str, require_yggdrasil: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalMesh]:
    with _mesh(tmp_path_factory.mktemp("x0t-mapek-full"), "full") as mesh:
        yield mesh


def incidents(client: httpx.Client, node: NodeHandle, since: float) -> list[dict[str, Any]]:
    return client.get(f"{node.agent_url}/mapek/incidents", params={"since": since}).json()["incidents"]


def actions(client: httpx.Client, node: NodeHandle, since: float) -> list[dict[str, Any]]:
    return client.get(f"{node.agent_url}/mapek/actions", params={"since": since}).json()["actions"]


def first_incident(client: httpx.Client, node: NodeHandle, subject: str, since: float, kinds: set[str]) -> float:
    """Seconds from `since` to the agent's first incident about `subject` of one of `kinds` (waits up to
    DETECT_S)."""
    found: list[float] = []

    def seen() -> bool:
        found[:] = [
            i["detected_at"] - since
            for i in incidents(client, node, since)
            if i["subject"] == subject and i["kind"] in kinds
        ]
        return bool(found)

    wait_until(f"{node.id} records an incident about {subject}", seen, timeout=DETECT_S)
    return min(found)


def peer_table(client: httpx.Client, node: NodeHandle) -> dict[str, tuple[bool, bool, bool]]:
    """node_id -> (up, planned, temporary) from the agent's /mesh/peers."""
    body = client.get(f"{node.agent_url}/mesh/peers").json()
    return {p["node_id"]: (p["up"], p["planned"], p["temporary"]) for p in body["peers"] if p["node_id"]}


def settled(client: httpx.Client, mesh: LocalMesh) -> bool:
    """Every agent's loop has seen every member answer (it knows the healthy state a fault departs from)."""
    for n in mesh.nodes:
        st = client.get(f"{n.agent_url}/mapek").json()
        if st["state"] != "running" or st["members_reachable"] != st["members_total"] or st["active_incidents"]:
            return False
    return True


def all_pairs_up(client: httpx.Client, mesh: LocalMesh) -> bool:
    up = {n.id: set(peers_up(client, n.agent_url)) for n in mesh.nodes}
    return all(b in up[a] and a in up[b] for a, b in combinations(sorted(up), 2))


def overlay_get(mesh: LocalMesh, src: str, dst: NodeHandle) -> bool:
    assert dst.overlay_url is not None
    r = mesh.run_in_node(
        src, ["curl", "-sf", "-m", "1", "-o", "/dev/null", f"{dst.overlay_url}/health"], timeout=5
    )
    # 503 (-f fails on it) would still be an answer over the overlay; curl exit 22 means exactly that.
    return r.returncode in (0, 22)


def drill_tables(mesh: LocalMesh, node_id: str) -> list[str]:
    out = mesh.run_in_node(node_id, ["nft", "list", "tables"], check=True).stdout
    return [line.split()[-1] for line in out.splitlines() if line.startswith("table") and "x0_" in line]


def start_drill(client: httpx.Client, node: NodeHandle, kind: str, duration: float) -> dict[str, Any]:
    r = post_drill(client, node.agent_url, {"kind": kind, "duration_s": duration}, AUTH)
    assert r.status_code == 202, r.text
    return r.json()


# --- chain A-B-C: node B lost and back ------------------------------------------------------------------------


def test_chain_node_loss_route_around_and_restore(chain: LocalMesh, client: httpx.Client) -> None:
    a, c = chain.node("node-a"), chain.node("node-c")
    wait_until("planned chain up", lambda: peer_table(client, a) == {"node-b": (True, True, False)}, 10)
    wait_until("MAPE-K settled", lambda: settled(client, chain), 10)
    t0 = time.time()
    chain.stop_node("node-b")
    for observer in (a, c):
        took = first_incident(client, observer, "node-b", t0, {"peer_lost", "peer_silent"})
        assert took <= DETECT_S, f"{observer.id} noticed node-b's loss after {took:.2f} s"
    # A dials C as a stand-in (lower id dials); a request from A to C's agent over the overlay gets through.
    wait_until("node-a reaches node-c over the overlay", lambda: overlay_get(chain, "node-a", c), AROUND_S)
    # /mesh/peers is served from the agent's 1 s snapshot: allow it one more refresh.
    wait_until(
        "node-a flags node-c as a stand-in", lambda: peer_table(client, a).get("node-c") == (True, False, True), 5
    )
    wait_until(
        "node-c flags node-a as a stand-in", lambda: peer_table(client, c).get("node-a") == (True, False, True), 5
    )
    # One stand-in link, dialled once. A tick before node-c answered node-a's underlay ping records the add as
    # skipped ("not confirmed alive on the underlay yet"): that is the plan waiting for evidence, not a dial.
    adds = [x for x in actions(client, a, t0) if x["action"] == "add_peer"]
    assert [(x["target"], x["outcome"]) for x in adds if x["outcome"] != "skipped"] == [("node-c", "ok")], adds
    assert not [x for x in actions(client, c, t0) if x["outcome"] != "skipped"]  # only one side dials

    t1 = time.time()
    chain.start_node("node-b")

    def planned_only() -> bool:
        return peer_table(client, a) == {"node-b": (True, True, False)} and peer_table(client, c) == {
            "node-b": (True, True, False)
        }

    wait_until("planned topology back, stand-in gone at both ends", planned_only, timeout=15)
    done = [(x["action"], x["target"], x["outcome"]) for x in actions(client, a, t1)]
    assert ("restore", "node-c", "ok") in done
    assert all(outcome in ("ok", "skipped") for _, _, outcome in done), done
    # The stand-in stays gone (0.4 would redial a removed link if the agent did not hold it off).
    time.sleep(3)
    assert planned_only()


# --- full mesh: drills on node C -----------------------------------------------------------------------------


def test_blackhole_detected_and_mesh_whole_right_after(full: LocalMesh, client: httpx.Client) -> None:
    a, b, c = (full.node(n) for n in ("node-a", "node-b", "node-c"))
    wait_until("full mesh up", lambda: all_pairs_up(client, full) and settled(client, full), 15)
    drill = start_drill(client, c, "blackhole", 10)
    assert drill["state"] == "active" and drill["node_id"] == "node-c"
    for observer in (a, b):
        took = first_incident(client, observer, "node-c", drill["started_at"], {"peer_silent", "peer_lost"})
        assert took <= DETECT_S, f"{observer.id} noticed the blackhole after {took:.2f} s"
    # Observers still read node-c's own view through the underlay during the drill.
    assert client.get(f"{c.agent_url}/mesh/peers").status_code == 200

    def reverted() -> bool:
        past = client.get(f"{c.agent_url}/drills").json()["past"]
        return any(d["id"] == drill["id"] and d["reverted_at"] for d in past)

    wait_until("blackhole reverted by its timer", reverted, timeout=15, interval=0.05)
    past = next(d for d in client.get(f"{c.agent_url}/drills").json()["past"] if d["id"] == drill["id"])
    assert past["state"] == "reverted"
    wait_until("every pair connected again", lambda: all_pairs_up(client, full), timeout=REPAIR_S, interval=0.05)
    took = time.time() - past["reverted_at"]
    assert took <= REPAIR_S, f"mesh whole {took:.2f} s after the blackhole ended"
    assert "x0_drill" not in drill_tables(full, "node-c")
    metrics_a = client.get(f"{a.agent_url}/metrics").text
    assert metric(metrics_a, 'x0_mapek_incidents_total{kind="peer_silent"}') >= 1
    assert metric(metrics_a, 'x0_mapek_time_to_detect_seconds_count{kind="peer_silent"}') >= 1
    wait_until(
        "node-c reports its recovery time",
        lambda: (
            metric(client.get(f"{c.agent_url}/metrics").text, 'x0_drill_recovery_seconds{kind="blackhole"}') > 0
        ),
        5,
    )


def metric(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def test_kill_daemon_drill_detected_and_healed(full: LocalMesh, client: httpx.Client) -> None:
    a, b = full.node("node-a"), full.node("node-b")
    wait_until("full mesh up", lambda: all_pairs_up(client, full) and settled(client, full), 15)
    drill = start_drill(client, b, "kill-daemon", 6)
    took = first_incident(client, a, "node-b", drill["started_at"], {"peer_lost"})
    assert took <= 6, f"node-a noticed node-b's daemon gone only after the 6 s drill ({took:.2f} s)"
    assert client.get(f"{b.agent_url}/health").status_code == 503
    wait_until(
        "node-b's own loop reports its daemon down",
        lambda: any(i["kind"] == "daemon_down" for i in incidents(client, b, drill["started_at"])),
        6,
    )

    def reverted() -> bool:
        past = client.get(f"{b.agent_url}/drills").json()["past"]
        return bool(past) and past[0]["id"] == drill["id"] and past[0]["state"] == "reverted"

    wait_until("kill-daemon drill reverted by its timer", reverted, 10)
    wait_until("node-b healthy again", lambda: client.get(f"{b.agent_url}/health").status_code == 200, 10)
    wait_until("mesh whole after the daemon is back", lambda: all_pairs_up(client, full), 15)


def test_partition_aborted_midway_leaves_no_rules(full: LocalMesh, client: httpx.Client) -> None:
    c = full.node("node-c")
    wait_until("full mesh up", lambda: all_pairs_up(client, full) and settled(client, full), 15)
    drill = start_drill(client, c, "partition", 60)
    assert drill_tables(full, "node-c") == ["x0_drill"]
    wait_until("partition cut node-c's links", lambda: peers_up(client, c.agent_url) == [], 8)
    r = client.delete(f"{c.agent_url}/drills/{drill['id']}", headers=AUTH)
    assert r.status_code == 200 and r.json()["state"] == "aborted" and r.json()["reverted_at"] is not None
    assert drill_tables(full, "node-c") == []
    wait_until("mesh whole after the abort", lambda: all_pairs_up(client, full), REPAIR_S, interval=0.05)
    took = time.time() - r.json()["reverted_at"]
    assert took <= REPAIR_S, f"mesh whole {took:.2f} s after the partition was aborted"


def test_agent_killed_mid_drill_restarted_removes_the_rules(full: LocalMesh, client: httpx.Client) -> None:
    c = full.node("node-c")
    wait_until("full mesh up", lambda: all_pairs_up(client, full) and settled(client, full), 15)
    start_drill(client, c, "partition", 120)
    pid = full.agent_pid("node-c")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # no shutdown hook runs: the rules stay behind
    wait_until("agent gone", lambda: not full.is_running("node-c"), 5)
    assert drill_tables(full, "node-c") == ["x0_drill"]
    full.start_node("node-c")
    assert drill_tables(full, "node-c") == []
    assert client.get(f"{c.agent_url}/drills").json() == {"active": [], "past": []}
    wait_until("mesh whole after the restart", lambda: all_pairs_up(client, full), 15)


# --- a flapping link -----------------------------------------------------------------------------------------


def test_flapping_link_rate_limited_quarantined_incidents_merged(
    require_nft: str, require_yggdrasil: str, tmp_path: Path, client: httpx.Client
) -> None:
    # The issue asks for 60 s of flapping; up to 21 s with a 3 s period drops the link up to 7 times, which crosses
    # the same thresholds (3 drops -> quarantine, 6 actions / 10 s rate limit, 60 s merge window) as 60 s at a
    # slower period would, in the test-time budget. It stops two drops after the quarantine: the drops after it
    # show it holding (no action while quarantined); more of them cost the suite time and showed nothing new.
    with _mesh(tmp_path, "full") as mesh:
        a, c = mesh.node("node-a"), mesh.node("node-c")
        wait_until("full mesh up", lambda: all_pairs_up(client, mesh) and settled(client, mesh), 15)
        c_ip = c.agent_url.split("//", 1)[1].rsplit(":", 1)[0]
        table = "x0t_flap"
        cut = (
            f"table inet {table} {{\n chain output {{\n  type filter hook output priority -150; policy accept;\n"
            f"  tcp flags & rst == rst accept\n  ip daddr {c_ip} tcp dport 12345 reject with tcp reset\n }}\n"
            f" chain input {{\n  type filter hook input priority -150; policy accept;\n"
            f"  tcp flags & rst == rst accept\n  ip saddr {c_ip} tcp sport 12345 reject with tcp reset\n }}\n}}\n"
        )
        t0 = time.time()
        after_quarantine = 0
        try:
            while time.time() - t0 < 21 and after_quarantine < 2:
                mesh.run_in_node("node-a", ["nft", "-f", "-"], input=cut, check=True)
                mesh.run_in_node("node-a", ["ss", "-K", "-t", "dst", c_ip, "dport", "=", ":12345"])
                time.sleep(1.5)
                mesh.run_in_node("node-a", ["nft", "delete", "table", "inet", table], check=True)
                time.sleep(1.5)
                if after_quarantine or any(x["action"] == "quarantine" for x in actions(client, a, t0)):
                    after_quarantine += 1
        finally:
            mesh.run_in_node("node-a", ["nft", "delete", "table", "inet", table])
        done = actions(client, a, t0)
        executed = sorted(x["at"] for x in done if x["outcome"] != "skipped" and x["action"] != "quarantine")
        for t in executed:
            window = [u for u in executed if t <= u < t + 10]
            assert len(window) <= 6, f"{len(window)} actions within 10 s: {done}"
        quarantined = [x["at"] for x in done if x["action"] == "quarantine" and x["target"] == "node-c"]
        assert quarantined, done
        redials = [x for x in done if x["action"] in ("redial", "add_peer") and x["target"] == "node-c"]
        assert not [x for x in redials if x["at"] > quarantined[0] and x["outcome"] != "skipped"], done
        assert all(x["reason"] for x in done)
        about_c = [i for i in incidents(client, a, t0) if i["subject"] == "node-c"]
        kinds = [i["kind"] for i in about_c]
        assert kinds and all(kinds.count(k) == 1 for k in kinds), about_c  # merged, not multiplied
        assert max(i["count"] for i in about_c) >= 3, about_c
        assert faults.DRILL_TABLE not in drill_tables(mesh, "node-a")
