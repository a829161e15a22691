"""Drills (`d`): pick kind, target and duration, confirm, watch the live timeline, abort with `a`, read the
report. The drill itself runs in the app (it keeps running if you leave this screen)."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import (
    Button,
    DataTable,
    Footer,
    Input,
    Label,
    Markdown,
    RadioButton,
    RadioSet,
    Select,
    Static,
)

from dashboard.drills.engine import DURATION_RANGE, DrillPlan, describe
from dashboard.drills.report import to_markdown
from dashboard.drills.scoring import SLO
from dashboard.screens.base import MeshScreen
from dashboard.screens.confirm import ConfirmDrillScreen
from dashboard.session import MeshUpdate
from dashboard.widgets.styles import LEVEL_STYLE

KIND_LABELS = {"blackhole": "blackhole", "partition": "partition", "node-loss": "node loss"}


class DrillScreen(MeshScreen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("s", "start", "Start drill"),
        Binding("a", "abort", "Abort drill"),
    ]

    def __init__(self, target: str | None = None) -> None:
        super().__init__()
        self.initial_target = target
        self._steps_shown = 0
        self._report_shown: object = None
        self._target_ids: list[str] = []

    def compose(self) -> ComposeResult:
        slo = self.dash.slo
        yield self.header()
        with Horizontal(id="drill-body"):
            with VerticalScroll(id="drill-form"):
                yield Label("kind", classes="field-label")
                with RadioSet(id="kind"):
                    for kind, label in KIND_LABELS.items():
                        yield RadioButton(label, value=kind == "blackhole", id=f"kind-{kind}")
                yield Label("target", classes="field-label")
                yield Select[str]([], id="target", prompt="pick a node")
                yield Label(f"duration, s ({DURATION_RANGE[0]}..{DURATION_RANGE[1]})", classes="field-label")
                yield Input(str(self.dash.default_duration), id="duration", type="integer")
                yield Label("SLO: detect within, s", classes="field-label")
                yield Input(f"{slo.detect_s:g}", id="slo-detect", type="number")
                yield Label("SLO: repair within, s (after)", classes="field-label")
                yield Input(f"{slo.repair_s:g}", id="slo-repair", type="number")
                yield Button("Start drill (s)", id="start", variant="error")
                yield Static("", id="form-error")
            with Vertical(id="drill-live"):
                yield Static("", id="drill-status")
                yield DataTable(id="timeline", cursor_type="row", zebra_stripes=True)
                with VerticalScroll(id="report-box"):
                    yield Markdown("", id="report")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#timeline", DataTable).add_columns("t", "node", "event")
        self.query_one("#timeline").border_title = "timeline"
        self.query_one("#report-box").display = False
        self._fill_targets()
        self.drill_changed()
        self.query_one("#kind").focus()

    def _fill_targets(self) -> None:
        view = self.dash.view
        select = self.query_one("#target", Select)
        ids = [n.id for n in view.nodes] if view else []
        current = select.value if isinstance(select.value, str) else self.initial_target
        select.set_options([(i, i) for i in ids])
        self._target_ids = ids
        if current in ids:
            select.value = current

    def show_update(self, update: MeshUpdate | None) -> None:
        super().show_update(update)
        view = self.dash.view
        ids = [n.id for n in view.nodes] if view else []
        if self._target_ids != ids:
            self._fill_targets()

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        self.drill_changed()  # the drill went on while this screen was not shown

    # ------------------------------------------------------------------------------------------------ state
    def drill_changed(self) -> None:
        """Redraw from the app's drill state (steps so far, report, error)."""
        dash = self.dash
        running = dash.engine.running
        status = self.query_one("#drill-status", Static)
        if running is not None:
            status.update(Text(f"running: {KIND_LABELS.get(running.kind, running.kind)} on {running.target} for "
                               f"{running.duration_s} s   (a: abort, reverts the fault at once)", "bold red"))
        elif dash.last_drill_error:
            status.update(Text(f"refused: {dash.last_drill_error}", "bold red"))
        elif dash.last_report is not None:
            r = dash.last_report
            verdict = Text("PASS", "bold green") if r.passed else Text("FAIL", "bold red")
            saved = ", ".join(map(str, dash.last_report_paths))
            status.update(Text.assemble("last drill: ", verdict, f"  saved: {saved}"))
        else:
            status.update(Text("no drill yet: pick kind, target and duration, then s", "grey50"))
        self.query_one("#start", Button).disabled = running is not None
        table = self.query_one("#timeline", DataTable)
        steps = dash.drill_steps
        if len(steps) < self._steps_shown:
            table.clear()
            self._steps_shown = 0
        for step in steps[self._steps_shown:]:
            t = "" if step.t_s is None else f"{step.t_s:+.2f} s"
            table.add_row(t, step.node or "", Text(step.what, LEVEL_STYLE.get(step.level, "")))
        if len(steps) != self._steps_shown:
            table.move_cursor(row=len(steps) - 1)
        self._steps_shown = len(steps)
        box = self.query_one("#report-box")
        if dash.last_report is not None and running is None:
            if self._report_shown is not dash.last_report:
                self._report_shown = dash.last_report
                self.query_one("#report", Markdown).update(to_markdown(dash.last_report))
            box.display = True
        else:
            box.display = False

    # ------------------------------------------------------------------------------------------------ actions
    def _plan(self) -> DrillPlan:
        kind_btn = self.query_one("#kind", RadioSet).pressed_button
        if kind_btn is None or kind_btn.id is None:
            raise ValueError("pick a kind")
        kind = kind_btn.id.removeprefix("kind-")
        target = self.query_one("#target", Select).value
        if not isinstance(target, str):
            raise ValueError("pick a target node")
        try:
            duration = int(self.query_one("#duration", Input).value)
            detect = float(self.query_one("#slo-detect", Input).value)
            repair = float(self.query_one("#slo-repair", Input).value)
        except ValueError as exc:
            raise ValueError("duration and SLOs must be numbers") from exc
        lo, hi = DURATION_RANGE
        if not lo <= duration <= hi:
            raise ValueError(f"duration must be {lo}..{hi} s")
        if detect <= 0 or repair <= 0:
            raise ValueError("SLOs must be positive")
        slo = SLO(detect_s=detect, repair_s=repair, recover_timeout_s=self.dash.slo.recover_timeout_s)
        return DrillPlan(kind=kind, target=target, duration_s=duration, slo=slo)

    def action_start(self) -> None:
        error = self.query_one("#form-error", Static)
        if self.dash.engine.running is not None:
            error.update(Text("a drill is already running; abort it with a first", "red"))
            return
        try:
            plan = self._plan()
        except ValueError as exc:
            error.update(Text(str(exc), "red"))
            return
        error.update("")
        via_source = plan.kind == "node-loss" and self.dash.engine.uses_source_for_node_loss
        text = describe(plan.kind, plan.target, plan.duration_s, via_source=via_source)
        text += (f"\n\nSLOs: detect <= {plan.slo.detect_s:g} s, repair <= {plan.slo.repair_s:g} s after the fault "
                 f"ends. Abort with a at any time.")
        title = f"Run a {KIND_LABELS[plan.kind]} drill on {plan.target}?"

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.dash.start_drill(plan)

        self.app.push_screen(ConfirmDrillScreen(title, text), confirmed)

    @on(Button.Pressed, "#start")
    def _start_pressed(self) -> None:
        self.action_start()

    def action_abort(self) -> None:
        if self.dash.engine.running is None:
            self.notify("no drill is running", severity="warning")
            return
        self.dash.abort_drill()
        self.query_one("#drill-status", Static).update(Text("aborting: reverting the fault…", "bold yellow"))

    def preselect(self, target: str) -> None:
        self.initial_target = target
        if target in self._target_ids:
            self.query_one("#target", Select).value = target

    def action_back(self) -> None:
        self.app.pop_screen()
