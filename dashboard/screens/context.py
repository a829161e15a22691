"""What the screens use of the app, as a protocol: screens depend on this, not on `dashboard.app`.

The app composes the screens; if they imported it back (even for types) the two would form an import circle and
every screen would be tied to the whole app. `dashboard.app.X0Dash` satisfies `Dashboard` (checked in
tests/dashboard/test_screen_context.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from dashboard.background import BackgroundLoop
from dashboard.drills.engine import DrillEngine, DrillPlan, DrillStep
from dashboard.drills.filing import Filed
from dashboard.drills.scoring import SLO, DrillReport
from dashboard.events import Event
from dashboard.history import SessionHistory
from dashboard.models import AgentData, MeshView
from dashboard.session import MeshSession
from dashboard.wire import Drill


class Dashboard(Protocol):
    clock: Callable[[], float]
    reports_dir: Path
    slo: SLO
    default_duration: int
    session: MeshSession
    engine: DrillEngine
    background: BackgroundLoop
    view: MeshView | None
    agents: dict[str, AgentData]
    history: SessionHistory
    recent_events: deque[Event]
    status_note: str | None
    drill_steps: list[DrillStep]
    last_report: DrillReport | None
    last_report_paths: list[Path]
    last_drill_error: str | None
    last_filing: Filed | None

    @property
    def external_drills(self) -> list[Drill]: ...

    @property
    def drill_banner(self) -> str | None: ...

    def agent_data(self, node_id: str) -> AgentData | None: ...

    def watch_routes(self, node_id: str, on: bool) -> None: ...

    def open_node(self, node_id: str) -> None: ...

    def open_drills(self, target: str | None = None) -> None: ...

    def abort_drill(self) -> None: ...

    def start_drill(self, plan: DrillPlan) -> None: ...

    def undo_drain(self, target: str) -> Any: ...  # a Textual worker: returns the Worker, not a coroutine
