"""Messages workers send to the UI: data is fetched off the widgets and handed over by these (harlequin
style), so widgets never do I/O."""

from __future__ import annotations

from pathlib import Path

from textual.message import Message

from dashboard.drills.engine import DrillStep
from dashboard.drills.filing import Filed
from dashboard.drills.scoring import DrillReport
from dashboard.session import MeshUpdate


class MeshUpdated(Message):
    def __init__(self, update: MeshUpdate) -> None:
        super().__init__()
        self.update = update


class SourceFailed(Message):
    """The provider could not start; `error` is the operator-facing reason."""

    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class DrillStepped(Message):
    def __init__(self, step: DrillStep) -> None:
        super().__init__()
        self.step = step


class DrillFinished(Message):
    """A drill ended: with a report (saved at `paths`), or refused/failed before one could be made (`error`)."""

    def __init__(
        self, report: DrillReport | None, *, error: str | None = None, paths: list[Path] | None = None
    ) -> None:
        super().__init__()
        self.report = report
        self.error = error
        self.paths = paths or []


class ReportFiled(Message):
    """The last report's filing in the mesh-wide drill history is done: filed, or why not."""

    def __init__(self, report: DrillReport, filed: Filed) -> None:
        super().__init__()
        self.report = report
        self.filed = filed
