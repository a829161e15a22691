"""Re-record the fixed data the snapshot tests draw (run by hand, as root, when the agent's payloads change):

    .venv/bin/python -m tests.dashboard.record_fixtures

Starts a real 3-node netns mesh, runs a 5 s blackhole drill on node-b through the drill engine, then saves what
the poller holds (every agent's real replies, incidents and heal actions) and the drill report. Snapshots built
from these files never change between runs; live keys and addresses would.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import msgspec

from dashboard.app import X0Dash
from dashboard.drills.engine import DrillEngine, DrillPlan
from dashboard.drills.report import to_json
from dashboard.events import action_event, incident_event
from dashboard.models import AgentData, merge
from dashboard.providers.base import SourceSnapshot
from dashboard.providers.inventory import InventoryProvider
from dashboard.providers.local import LocalProvider
from dashboard.session import MeshSession, MeshUpdate

DATA = Path(__file__).parent / "data"
POLL_FILE = DATA / "poll_3node.json"
REPORT_FILE = DATA / "report_blackhole.json"


class Recording(msgspec.Struct, kw_only=True):
    """A poll result frozen in time: the provider's snapshot, every agent's data, and when it was taken."""

    snapshot: SourceSnapshot
    agents: dict[str, AgentData]
    taken_at: float


def load_recording(path: Path = POLL_FILE) -> Recording:
    return msgspec.json.decode(path.read_bytes(), type=Recording)


def recorded_app() -> tuple[X0Dash, MeshUpdate]:
    """An app that never polls, with a fixed clock, and the recorded poll as the update to feed it."""
    rec = load_recording()
    now = rec.taken_at + 0.4
    # The provider is never started (autopoll=False): the recorded poll stands in for it.
    app = X0Dash(
        InventoryProvider(Path("recorded-inventory.json")),
        autopoll=False,
        clock=lambda: now,
        reports_dir=Path("reports"),
    )
    view = merge(rec.snapshot, rec.agents, now, polled_at=rec.taken_at, poll_duration_s=0.042)
    for _ in range(4):  # plus the one the update itself records: five points per sparkline
        app.history.record(view)
    events = [incident_event(a.node_id, i, "opened") for a in rec.agents.values() for i in a.incidents.values()]
    events += [
        incident_event(a.node_id, i, "resolved")
        for a in rec.agents.values()
        for i in a.incidents.values()
        if i.resolved_at is not None
    ]
    events += [action_event(a.node_id, x) for a in rec.agents.values() for x in a.actions.values()]
    return app, MeshUpdate(view=view, events=events, poll=None, agents=rec.agents)


async def record() -> None:
    with tempfile.TemporaryDirectory(prefix="x0dash-record-") as tmp:
        provider = LocalProvider(3, mode="netns", run_dir=Path(tmp))
        session = MeshSession(provider)
        try:
            await session.start()
            engine = DrillEngine(session)
            report = await engine.run(DrillPlan(kind="blackhole", target="node-b", duration_s=5))
            for _ in range(3):  # routes of node-a too, for the node detail snapshot
                session.poller.detail_nodes.add("node-a")
                update = await session.update()
                await asyncio.sleep(1.0)
            assert session.snapshot is not None
            rec = Recording(snapshot=session.snapshot, agents=session.poller.agents, taken_at=update.view.taken_at)
            DATA.mkdir(exist_ok=True)
            POLL_FILE.write_bytes(msgspec.json.format(msgspec.json.encode(rec), indent=1))
            REPORT_FILE.write_bytes(to_json(report))
            print(f"wrote {POLL_FILE} and {REPORT_FILE} ({'PASS' if report.passed else 'FAIL'})")
        finally:
            await session.close()


if __name__ == "__main__":
    asyncio.run(record())
