"""Pure parts of the local mesh: names, subnet and port planning, the files it writes, owner liveness."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from agent.localmesh import files, naming, registry
from agent.localmesh.mesh import daemon_gomaxprocs, loopback_ports
from agent.localmesh.model import LocalMeshError, NodeHandle
from agent.members import parse_members


def _node(letter: str, index: int, *, netns_mode: bool = True) -> NodeHandle:
    ip = f"10.213.7.{index}" if netns_mode else "127.0.0.1"
    port = 8080 if netns_mode else 18000 + index
    addr = f"200:1234::{index}"
    return NodeHandle(
        id=f"node-{letter}",
        letter=letter,
        index=index,
        agent_url=f"http://{ip}:{port}",
        metrics_url=f"http://{ip}:{port}/metrics",
        overlay_url=f"http://[{addr}]:{port}" if netns_mode else None,
        yggdrasil_address=addr,
        yggdrasil_subnet=f"300:1234:{index}::/64",
        public_key=f"{index:x}" * 64,
        listen_uri=f"tls://{ip}:12345",
        admin_endpoint=f"unix:///run/x/node-{letter}/admin.sock",
        netns=f"x0-3f2a-{letter}" if netns_mode else None,
        underlay_ip=ip,
        agent_port=port,
        listen_port=12345,
        dir=Path(f"/run/x/node-{letter}"),
        config_path=Path(f"/run/x/node-{letter}/yggdrasil.conf"),
        log_path=Path(f"/run/x/node-{letter}/agent.log"),
    )


def test_names_fit_linux_limits_and_are_recognised() -> None:
    mesh_id = naming.new_mesh_id()
    assert naming.MESH_ID_RE.match(mesh_id)
    names = naming.letters(naming.MAX_NODES)
    assert names[:3] == ["a", "b", "c"] and names[25:28] == ["z", "aa", "ab"] and len(set(names)) == len(names)
    for letter in names:
        veth, ns = naming.veth_name(mesh_id, letter), naming.netns_name(mesh_id, letter)
        assert len(veth) <= 15 and naming.owner_mesh_id(veth) == mesh_id
        assert naming.owner_mesh_id(ns) == mesh_id
    assert len(naming.bridge_name(mesh_id)) <= 15 and naming.owner_mesh_id(naming.bridge_name(mesh_id)) == mesh_id
    for other in ("x0t-h3-a", "x0-3f2a", "eth0", "x0b3f2a1", "x0-3F2A-a", "x0v3f2aabc"):
        assert naming.owner_mesh_id(other) is None, other
    with pytest.raises(ValueError, match="between 1 and 100"):
        naming.letters(0)
    with pytest.raises(ValueError, match="between 1 and 100"):
        naming.letters(101)


def test_pick_subnet_skips_reserved_and_host_networks() -> None:
    host = [ipaddress.IPv4Network("10.213.1.0/24"), ipaddress.IPv4Network("10.213.3.128/25")]
    pick = registry.pick_subnet({0, 2}, lambda net: any(net.overlaps(h) for h in host))
    assert pick == 4
    with pytest.raises(RuntimeError, match="no free"):
        registry.pick_subnet(set(range(256)), lambda net: False)


def test_loopback_ports_with_base_port_and_busy_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        # Another port of the range may be taken too (an ephemeral port of some other socket on this host):
        # the message names the first one and lists them all.
        with pytest.raises(LocalMeshError, match=rf"is already in use \(busy: [0-9, ]*\b{busy}\b"):
            loopback_ports(3, busy - 2)
    free_agents, free_daemons = loopback_ports(3, None)
    assert len(set(free_agents + free_daemons)) == 6
    with pytest.raises(LocalMeshError, match="must fit"):
        loopback_ports(3, 65533)


def test_members_file_is_what_the_agent_parses_with_links_in_dialer_order() -> None:
    nodes = [_node(x, i) for i, x in enumerate("abc", 1)]
    links = [("node-a", "node-b"), ("node-a", "node-c"), ("node-b", "node-c")]
    doc = files.members_doc("local-3f2a", "netns", nodes, links)
    parsed = parse_members(json.dumps(doc).encode())
    assert parsed.links == tuple(links)
    assert parsed.by_id["node-c"].overlay_url == "http://[200:1234::3]:8080"
    assert parsed.dials("node-a") == ["node-b", "node-c"] and parsed.dials("node-c") == []


def test_loopback_members_file_gives_agents_no_overlay_address() -> None:
    nodes = [_node(x, i, netns_mode=False) for i, x in enumerate("ab", 1)]
    doc = files.members_doc("local-3f2a", "loopback", nodes, [("node-a", "node-b")])
    parsed = parse_members(json.dumps(doc).encode())
    assert all(m.overlay_url is None and m.address is None for m in parsed.members)
    assert parsed.by_key[nodes[1].public_key].node_id == "node-b"


def test_inventory_and_targets_follow_contract_4(tmp_path: Path) -> None:
    nodes = [_node(x, i) for i, x in enumerate("ab", 1)]
    inv_path = tmp_path / "inventory.json"
    sd = files.sd_path_for(inv_path)
    assert sd == tmp_path / "prometheus-targets.json"
    assert files.sd_path_for(tmp_path / "lab.json") == tmp_path / "lab-prometheus-targets.json"
    inv = files.inventory_doc(
        mesh="local-3f2a",
        mode="netns",
        api_token="t",
        members_file=tmp_path / "m.json",
        sd_file=sd,
        links=[("node-a", "node-b")],
        nodes=nodes,
        mesh_dir=tmp_path,
        owner_pid=1,
    )
    contract_keys = {
        "id",
        "agent_url",
        "metrics_url",
        "yggdrasil_address",
        "overlay_url",
        "public_key",
        "listen_uri",
        "admin_endpoint",
        "netns",
        "underlay_ip",
    }
    assert all(set(n) == contract_keys for n in inv["nodes"])
    assert inv["links"] == [["node-a", "node-b"]] and inv["prometheus_sd_file"] == str(sd)
    files.write_json(inv_path, inv)
    assert oct(inv_path.stat().st_mode & 0o777) == "0o600"
    targets = files.file_sd_doc("local-3f2a", nodes)
    assert targets[0] == {"targets": ["10.213.7.1:8080"], "labels": {"node_id": "node-a", "mesh": "local-3f2a"}}
    files.write_json(sd, targets, 0o644)
    assert oct(sd.stat().st_mode & 0o777) == "0o644"


def test_owner_liveness_detects_exit_and_pid_reuse() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        start = registry.process_start_time(proc.pid)
        assert start is not None
        rec = registry.MeshRecord(
            id="0000",
            mode="loopback",
            letters=["a"],
            owner_pid=proc.pid,
            owner_start=start,
            created_at=0.0,
            mesh_dir="/nonexistent",
        )
        assert registry.owner_alive(rec)
        # Same pid, different start time: the pid was reused by another program.
        assert not registry.owner_alive(msgspec.structs.replace(rec, owner_start=start + 1))
    finally:
        proc.kill()
        proc.wait()
    assert not registry.owner_alive(rec)
    assert registry.process_start_time(os.getpid()) is not None


def test_daemons_share_the_hosts_cores() -> None:
    assert daemon_gomaxprocs(20, 2) == 1
    assert daemon_gomaxprocs(3, 2) == 1
    assert daemon_gomaxprocs(3, 16) == 5
    assert daemon_gomaxprocs(2, 4) == 2
    assert daemon_gomaxprocs(1, None) == 1  # os.cpu_count() may not know
