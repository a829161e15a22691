"""Re-record what the drill-history and logs snapshots draw (run by hand, as root, when those payloads change):

    .venv/bin/python -m tests.dashboard.record_history

Starts a real 3-node netns mesh, runs two headless drills through x0dash (each report filed in the mesh-wide
history) and one plain `POST /drills` (the agent's own record, no report), then saves the mesh-wide history as
node-a serves it (`GET /drills/history`) and the tail of node-a's agent.log and yggdrasil.log. Snapshots built from
these files never change between runs.
"""

from __future__ import annotations

import asyncio
import io
import json
import tempfile
import time
from pathlib import Path

import httpx

from dashboard.cli import run_headless
from dashboard.drills.engine import DrillPlan
from dashboard.drills.scoring import SLO
from dashboard.providers.inventory import InventoryProvider

DATA = Path(__file__).parent / "data"
HISTORY_FILE = DATA / "history_3node.json"
LOGS_DIR = DATA / "mesh"  # <node>/agent.log, yggdrasil.log: what the logs view reads from a run dir
LOG_LINES = 120


def _tail(path: Path, lines: int) -> str:
    return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:])


async def _drills(inventory: Path, tmp: Path) -> None:
    loose = SLO(detect_s=10, repair_s=20)
    for kind, target in (("blackhole", "node-b"), ("partition", "node-c")):
        code = await run_headless(
            InventoryProvider(inventory),
            DrillPlan(kind=kind, target=target, duration_s=4, slo=loose),
            reports_dir=None,
            report_file=tmp / f"{kind}.json",
            as_json=True,
            out=io.StringIO(),
        )
        print(f"{kind} on {target}: exit {code}")


def record() -> None:
    from agent.localmesh import LocalMesh, MeshOptions

    with tempfile.TemporaryDirectory(prefix="x0dash-record-history-") as tmp:
        with LocalMesh(MeshOptions(nodes=3, topology="full", mode="netns", run_dir=Path(tmp))) as mesh:
            asyncio.run(_drills(mesh.inventory_path, Path(tmp)))
            token = json.loads(mesh.inventory_path.read_text())["api_token"]
            url = mesh.node("node-a").agent_url
            with httpx.Client(trust_env=False, timeout=5, headers={"authorization": f"Bearer {token}"}) as c:
                drill = c.post(f"{url}/drills", json={"kind": "kill-daemon", "duration_s": 3}).json()
                history: dict = {}
                for _ in range(60):  # its own record lands in the history once it ends (and Raft has a leader)
                    time.sleep(1)
                    history = c.get(f"{url}/drills/history").json()
                    if any(d["id"] == drill["id"] for d in history.get("drills", [])):
                        break
            DATA.mkdir(exist_ok=True)
            HISTORY_FILE.write_text(json.dumps(history, indent=1) + "\n")
            node_dir = Path(json.loads(mesh.inventory_path.read_text())["mesh_dir"]) / "node-a"
            out = LOGS_DIR / "node-a"
            out.mkdir(parents=True, exist_ok=True)
            for name in ("agent.log", "yggdrasil.log"):
                (out / name).write_text(_tail(node_dir / name, LOG_LINES))
            print(f"wrote {HISTORY_FILE} ({len(history['drills'])} drills) and {out}/*.log")


if __name__ == "__main__":
    record()
