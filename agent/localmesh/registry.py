"""Who owns which mesh: one record per running mesh in a machine-wide state directory.

Several meshes run at once on one machine (parallel tests, an operator's `just mesh`, x0dash). A mesh id and a
10.213.N.0/24 subnet are reserved under a file lock and written down *before* anything is created, with the
owner's pid and process start time. So:
- two meshes never pick the same id or subnet;
- `--cleanup` can tell a leftover (owner gone, or its pid reused by another program) from a live mesh, and
  never touches a live one.

State directory: /run/x0tta6bl4/localmesh as root, else $XDG_RUNTIME_DIR/x0tta6bl4/localmesh or
/tmp/x0tta6bl4-<uid>/localmesh. It is deliberately not configurable: `--cleanup` treats our namespaces without a
record as leftovers, which is only safe when every mesh of this user records itself in the same place.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec

from agent.localmesh import naming

log = logging.getLogger(__name__)

SUBNET_BASE = ipaddress.IPv4Network("10.213.0.0/16")


class MeshRecord(msgspec.Struct, kw_only=True):
    id: str
    mode: str
    letters: list[str]
    owner_pid: int
    owner_start: int | None  # /proc/<pid>/stat starttime (clock ticks since boot): detects pid reuse
    created_at: float
    mesh_dir: str
    subnet: int | None = None  # N of 10.213.N.0/24 (netns)
    # Sockets outside mesh_dir (short paths when mesh_dir is too deep for a UNIX socket path).
    socket_dir: str | None = None
    # Files outside mesh_dir we wrote and remove on teardown (inventory, file_sd) when they still name this mesh.
    owned_files: list[str] = []

    @property
    def mesh(self) -> str:
        return naming.mesh_name(self.id)

    @property
    def netns(self) -> list[str]:
        return [naming.netns_name(self.id, letter) for letter in self.letters] if self.mode == "netns" else []

    @property
    def veths(self) -> list[str]:
        return [naming.veth_name(self.id, letter) for letter in self.letters] if self.mode == "netns" else []

    @property
    def bridge(self) -> str | None:
        return naming.bridge_name(self.id) if self.mode == "netns" else None


def state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/run/x0tta6bl4/localmesh")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "x0tta6bl4" / "localmesh"
    return Path(f"/tmp/x0tta6bl4-{os.geteuid()}") / "localmesh"


def process_start_time(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot, None when there is no such process (or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def owner_alive(record: MeshRecord) -> bool:
    start = process_start_time(record.owner_pid)
    if start is None:
        return False
    return record.owner_start is None or start == record.owner_start


@contextlib.contextmanager
def locked() -> Iterator[Path]:
    directory = state_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(directory / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield directory
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _path(directory: Path, mesh_id: str) -> Path:
    return directory / f"{mesh_id}.json"


def load_all(directory: Path | None = None) -> list[MeshRecord]:
    directory = directory or state_dir()
    records: list[MeshRecord] = []
    if not directory.is_dir():
        return records
    for path in sorted(directory.glob("*.json")):
        try:
            records.append(msgspec.json.decode(path.read_bytes(), type=MeshRecord))
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("ignoring unreadable mesh record %s: %s", path, exc)
    return records


def save(record: MeshRecord) -> None:
    directory = state_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = _path(directory, record.id)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(msgspec.json.encode(record))
    os.replace(tmp, path)


def remove(mesh_id: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        _path(state_dir(), mesh_id).unlink()


def pick_subnet(taken: set[int], overlaps: Callable[[ipaddress.IPv4Network], bool]) -> int:
    """Lowest N whose 10.213.N.0/24 is neither reserved by a live mesh nor overlapping a host network."""
    for n in range(256):
        if n in taken:
            continue
        if not overlaps(ipaddress.IPv4Network(f"10.213.{n}.0/24")):
            return n
    raise RuntimeError("no free 10.213.N.0/24 subnet left (256 in use); run `x0-agent local-mesh --cleanup`")


def reserve(
    *,
    mode: str,
    letters: list[str],
    mesh_dir_for: Callable[[str], Path],
    names_in_use: Callable[[], set[str]],
    host_networks: Callable[[], list[ipaddress.IPv4Network]] | None = None,
) -> MeshRecord:
    """Pick a free mesh id (and subnet in netns mode) and record them with this process as owner, atomically
    with respect to every other mesh on the machine."""
    with locked():
        records = load_all()
        live = [r for r in records if owner_alive(r)]
        ids_taken = {r.id for r in records}
        ids_taken |= {i for i in (naming.owner_mesh_id(n) for n in names_in_use()) if i}
        for _ in range(1000):
            mesh_id = naming.new_mesh_id()
            if mesh_id not in ids_taken:
                break
        else:  # pragma: no cover - 65536 ids
            raise RuntimeError("could not find a free mesh id; run `x0-agent local-mesh --cleanup`")
        subnet = None
        if mode == "netns":
            nets = host_networks() if host_networks else []
            subnet = pick_subnet(
                {r.subnet for r in live if r.subnet is not None},
                lambda net: any(net.overlaps(other) for other in nets),
            )
        record = MeshRecord(
            id=mesh_id,
            mode=mode,
            letters=letters,
            owner_pid=os.getpid(),
            owner_start=process_start_time(os.getpid()),
            created_at=time.time(),
            mesh_dir=str(mesh_dir_for(mesh_id)),
            subnet=subnet,
        )
        save(record)
        return record
