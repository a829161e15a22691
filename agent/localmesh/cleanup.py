"""Removing a mesh's resources: by its owner at teardown, or by `x0-agent local-mesh --cleanup` after a crash.

`destroy` is the one teardown of the machine-level resources and runs every step even when an earlier one fails;
it reports what it could not remove instead of raising, so a teardown never stops half way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.localmesh import naming, netns, procs, registry
from agent.localmesh.registry import MeshRecord

_GONE_WAIT_S = 5.0


def _nft_binary() -> str | None:
    return shutil.which("nft") or ("/usr/sbin/nft" if os.access("/usr/sbin/nft", os.X_OK) else None)


def mesh_pids(record: MeshRecord) -> list[int]:
    """Every process that belongs to the mesh, whether or not its parent is still around."""
    pids = set(procs.marked_pids(record.id))
    pids |= set(procs.daemon_pids(Path(record.mesh_dir)))
    for ns in record.netns:
        pids |= set(netns.netns_pids(ns))
    pids.discard(os.getpid())
    return sorted(pids)


def socket_paths(record: MeshRecord) -> list[Path]:
    paths = [Path(record.mesh_dir) / naming.node_id(letter) / "admin.sock" for letter in record.letters]
    if record.socket_dir:
        paths += [Path(record.socket_dir) / f"{letter}.sock" for letter in record.letters]
    return paths


def _remove_nft_tables(mesh_id: str) -> list[str]:
    """Host nftables tables named after this mesh (drills on loopback meshes); tables inside a namespace go
    with the namespace."""
    nft = _nft_binary()
    if nft is None or os.geteuid() != 0:
        return []
    out = subprocess.run([nft, "-j", "list", "tables"], capture_output=True, text=True, timeout=10, check=False)
    if out.returncode != 0:
        return [f"nft list tables failed: {out.stderr.strip()}"]
    problems: list[str] = []
    try:
        entries = json.loads(out.stdout).get("nftables", [])
    except ValueError:
        return ["nft -j list tables printed something that is not JSON"]
    for entry in entries:
        table = entry.get("table") if isinstance(entry, dict) else None
        if not table:
            continue
        name = str(table.get("name", ""))
        if name.startswith("x0") and mesh_id in name:
            res = subprocess.run(
                [nft, "delete", "table", str(table.get("family")), name],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            if res.returncode != 0:
                problems.append(f"nft table {name}: {res.stderr.strip()}")
    return problems


def _owned_file_still_ours(path: Path, mesh: str) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if isinstance(data, dict):
        return data.get("mesh") == mesh
    # file_sd: a list of target groups labelled with the mesh
    return isinstance(data, list) and all(
        isinstance(g, dict) and g.get("labels", {}).get("mesh") == mesh for g in data
    )


def destroy(record: MeshRecord) -> list[str]:
    """Kill the mesh's processes, delete its veths, namespaces, bridge, nft tables, sockets and owned files.
    Every step runs; returns what is left (empty = clean), and drops the registry record only when clean."""
    problems: list[str] = []

    def step(what: str, fn: object) -> None:
        try:
            fn()  # type: ignore[operator]
        except Exception as exc:  # teardown goes on; the failure is reported
            problems.append(f"{what}: {exc}")

    def kill() -> None:
        survivors = procs.kill_all(mesh_pids(record))
        if survivors:
            problems.append(f"processes still alive after SIGKILL: {survivors}")

    step("processes", kill)
    if record.mode == "netns":
        # veth first: deleting it takes its peer inside the namespace with it, synchronously; a namespace's
        # devices otherwise disappear asynchronously after `ip netns delete`.
        for veth in record.veths:
            step(f"veth {veth}", lambda v=veth: netns.delete_link(v))
        for ns in record.netns:
            step(f"namespace {ns}", lambda n=ns: netns.delete_netns(n))
        if record.bridge:
            step(f"bridge {record.bridge}", lambda b=record.bridge: netns.delete_link(b))

        def wait_links_gone() -> None:
            names = set(record.veths) | {record.bridge}
            deadline = time.monotonic() + _GONE_WAIT_S
            left = names & set(netns.list_links())
            while left and time.monotonic() < deadline:
                time.sleep(0.05)
                left = names & set(netns.list_links())
            left_ns = set(record.netns) & set(netns.list_netns())
            if left or left_ns:
                problems.append(f"still present: {sorted(left | left_ns)}")

        step("network", wait_links_gone)
    step("nft", lambda: problems.extend(_remove_nft_tables(record.id)))
    for sock in socket_paths(record):
        step(f"socket {sock}", lambda s=sock: s.unlink(missing_ok=True))
    if record.socket_dir:
        step("socket dir", lambda: Path(record.socket_dir).rmdir() if Path(record.socket_dir).is_dir() else None)
    for owned in record.owned_files:
        path = Path(owned)
        if _owned_file_still_ours(path, record.mesh):
            step(f"file {path}", lambda p=path: p.unlink(missing_ok=True))
    if not problems:
        registry.remove(record.id)
    return problems


@dataclass
class CleanupReport:
    removed: list[str] = field(default_factory=list)  # one line per mesh / resource removed
    kept: list[str] = field(default_factory=list)  # live meshes and anything we would not touch, with why
    problems: list[str] = field(default_factory=list)


def cleanup_leftovers() -> CleanupReport:
    """Remove meshes whose owner process is gone; never touch a mesh whose owner is alive."""
    report = CleanupReport()
    with registry.locked():
        records = registry.load_all()
        for record in records:
            if registry.owner_alive(record):
                report.kept.append(f"{record.mesh}: owner pid {record.owner_pid} is running ({record.mesh_dir})")
                continue
            problems = destroy(record)
            if problems:
                report.problems += [f"{record.mesh}: {p}" for p in problems]
            else:
                report.removed.append(
                    f"{record.mesh} ({record.mode}, {record.mesh_dir}); owner pid {record.owner_pid} was gone"
                )
        known = {r.id for r in registry.load_all()}
        if os.geteuid() == 0:
            _cleanup_unrecorded(known, report)
    return report


def _removal_order(name: str) -> int:
    return 0 if naming.VETH_RE.match(name) else 1 if naming.NETNS_RE.match(name) else 2


def _cleanup_unrecorded(known: set[str], report: CleanupReport) -> None:
    """Namespaces, bridges and veths with our names but no record (e.g. the state dir was wiped). A mesh id with
    a process inside any of its namespaces may be alive under another state dir: it is left alone."""
    by_id: dict[str, list[str]] = {}
    namespaces = netns.list_netns()
    for name in [*namespaces, *netns.list_links()]:
        mesh_id = naming.owner_mesh_id(name)
        if mesh_id and mesh_id not in known:
            by_id.setdefault(mesh_id, []).append(name)
    for _mesh_id, names in sorted(by_id.items()):
        busy = [n for n in names if n in namespaces and netns.netns_pids(n)]
        if busy:
            report.kept.append(f"{', '.join(sorted(names))}: no record, but processes run in {', '.join(busy)}")
            continue
        # veths before namespaces before the bridge, as in destroy()
        order = sorted(names, key=_removal_order)
        for name in order:
            try:
                if naming.NETNS_RE.match(name):
                    netns.delete_netns(name)
                else:
                    netns.delete_link(name)
                report.removed.append(f"{name} (no owner record)")
            except netns.NetnsError as exc:
                report.problems.append(f"{name}: {exc}")
