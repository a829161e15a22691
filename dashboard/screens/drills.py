"""Drills (`d`): pick kind, target and duration, confirm, watch the live timeline, abort with `a`, read the
report. The drill itself runs in the app (it keeps running if you leave this screen).

With a Nomad source two more kinds are offered: restart the target's allocation, and drain its Nomad node (with a
deadline). The drain's confirmation asks Nomad first and says exactly what will stop; the drain is undone when the
drill ends or is aborted, and `u` undoes it at any time."""

from __future__ import annotations

import asyncio

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widget import Widget
from textual.widgets import (
    Button,
    Input,
    Label,
    Markdown,
    RadioButton,
    RadioSet,
    Select,
    Static,
)

from dashboard.drills.engine import (
    DEADLINE_RANGE,
    DEFAULT_DRAIN_DEADLINE_S,
    DURATION_RANGE,
    DrillPlan,
    describe,
)
from dashboard.drills.report import to_markdown
from dashboard.drills.scoring import SLO
from dashboard.nomad.view import AGENT_TASK, YGGDRASIL_TASK
from dashboard.providers.base import ProviderError
from dashboard.screens.base import MeshScreen
from dashboard.screens.confirm import ConfirmDrillScreen
from dashboard.session import MeshUpdate
from dashboard.widgets.fields import NumberField
from dashboard.widgets.screen_footer import ScreenFooter
from dashboard.widgets.timeline import DrillTimeline, rows_from_events, rows_from_report, rows_from_steps

KIND_LABELS = {
    "blackhole": "blackhole",
    "partition": "partition",
    "node-loss": "node loss",
    "leader-loss": "leader loss (Raft)",
    "restart-alloc": "restart allocation (Nomad)",
    "drain": "drain Nomad node",
}
ALL_TASKS = "all"


class KindButton(RadioButton):
    """The picked kind shows a dot and the others an empty slot, so the choice reads without colour."""

    @property
    def BUTTON_INNER(self) -> str:  # type: ignore[override]
        return "●" if self.value else " "


class DrillScreen(MeshScreen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        # Also from inside the form's fields: they are NumberFields, which leave letters to the screen.
        Binding("s", "start", "Start drill"),
        Binding("a", "abort", "Abort drill"),
        Binding("u", "undo_drain", "Undo drain"),
    ]

    def __init__(self, target: str | None = None) -> None:
        super().__init__()
        self.initial_target = target
        self._report_shown: object = None
        self._target_ids: list[str] = []

    def compose(self) -> ComposeResult:
        slo = self.dash.slo
        yield self.header()
        with Horizontal(id="drill-body"):
            with VerticalScroll(id="drill-form"):
                yield Label("kind", classes="field-label")
                with RadioSet(id="kind"):
                    # Only what this source can make: the Nomad-only kinds appear with a Nomad source.
                    for kind in self.dash.engine.kinds:
                        yield KindButton(KIND_LABELS.get(kind, kind), value=kind == "blackhole", id=f"kind-{kind}")
                yield Label("target", classes="field-label")
                yield Select[str]([], id="target", prompt="pick a node")
                yield Label(f"duration, s ({DURATION_RANGE[0]}..{DURATION_RANGE[1]})", classes="field-label")
                yield NumberField(str(self.dash.default_duration), id="duration")
                # The deadline: how long Nomad lets the node's allocations migrate before it stops them.
                yield Label(
                    f"drain deadline, s ({DEADLINE_RANGE[0]}..{DEADLINE_RANGE[1]})",
                    classes="field-label drain-field",
                )
                yield NumberField(str(DEFAULT_DRAIN_DEADLINE_S), id="deadline", classes="drain-field")
                yield Label("restart which task", classes="field-label restart-field")
                yield Select[str](
                    [("all tasks", ALL_TASKS), (AGENT_TASK, AGENT_TASK), (YGGDRASIL_TASK, YGGDRASIL_TASK)],
                    id="task",
                    value=ALL_TASKS,
                    allow_blank=False,
                    classes="restart-field",
                )
                yield Label("SLO: detect within, s", classes="field-label")
                yield NumberField(f"{slo.detect_s:g}", id="slo-detect", integer=False)
                yield Label("SLO: repair within, s (after)", classes="field-label")
                yield NumberField(f"{slo.repair_s:g}", id="slo-repair", integer=False)
                yield Button("Start drill (s)", id="start", variant="error")
                yield Button("Undo drain (u)", id="undo-drain", variant="warning")
                yield Static("", id="nomad-state")
            with Vertical(id="drill-live"):
                # Above everything on the right, not under the form: at 80x24 the form's end is below the fold.
                yield Static("", id="form-error")
                yield Static("", id="drill-status")
                yield DrillTimeline(id="timeline")
                with VerticalScroll(id="report-box"):
                    yield Markdown("", id="report")
        yield ScreenFooter()

    def on_mount(self) -> None:
        self.query_one("#timeline").border_title = "timeline"
        self.query_one("#report-box").display = False
        self.query_one("#undo-drain").display = "drain" in self.dash.engine.kinds
        self._show_kind_fields()
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
        self._show_nomad_state()

    def _kind(self) -> str | None:
        button = self.query_one("#kind", RadioSet).pressed_button
        return button.id.removeprefix("kind-") if button is not None and button.id else None

    def _show_kind_fields(self) -> None:
        kind = self._kind()
        for widget in self.query(".drain-field"):
            widget.display = kind == "drain"
        for widget in self.query(".restart-field"):
            widget.display = kind == "restart-alloc"

    @on(RadioSet.Changed, "#kind")
    def _kind_changed(self) -> None:
        self._show_kind_fields()

    def _show_nomad_state(self) -> None:
        """Nomad nodes draining now (by this drill, an earlier one, or someone else): `u` undoes them."""
        state = self.query_one("#nomad-state", Static)
        view = self.dash.view
        if "drain" not in self.dash.engine.kinds or view is None:
            state.update("")
            return
        hosts: dict[str, list[str]] = {}
        for n in view.nodes:
            if n.nomad is not None and n.nomad.drain:
                hosts.setdefault(n.nomad.node_name or n.nomad.node_id[:8], []).append(n.id)
        pending = self.dash.engine.undo_pending
        lines = [f"Nomad node {host} is draining ({', '.join(ids)}): u undoes it" for host, ids in hosts.items()]
        if pending and not any(pending in ids for ids in hosts.values()):
            lines.append(f"the drain of {pending}'s Nomad node is not undone yet: u undoes it")
        state.update(Text("\n".join(lines), "bold yellow"))

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
            status.update(
                Text(
                    f"running: {KIND_LABELS.get(running.kind, running.kind)} on {running.target} for "
                    f"{running.duration_s} s   (a: abort, reverts the fault at once)",
                    "bold red",
                )
            )
        elif dash.external_drills:
            d = dash.external_drills[0]
            length = f"for {d.duration_s:g} s" if d.duration_s else f"({d.detail})"
            status.update(
                Text(
                    f"running elsewhere: {d.kind} on {d.node_id} {length} (drill {d.id}); its steps "
                    "are what the agents record",
                    "bold red",
                )
            )
        elif dash.last_drill_error:
            status.update(Text(f"refused: {dash.last_drill_error}", "bold red"))
        elif dash.last_report is not None:
            r = dash.last_report
            verdict = Text("PASS", "bold green") if r.passed else Text("FAIL", "bold red")
            saved = ", ".join(map(str, dash.last_report_paths))
            filed = dash.last_filing
            if filed is None:
                history = Text("mesh history: filing the report…", "grey50")
            elif filed.ok:
                history = Text(
                    f"mesh history: filed via {filed.via}" + (" (trimmed)" if filed.trimmed else ""), "green"
                )
            else:
                history = Text(f"mesh history: NOT filed: {filed.detail}", "bold red")
            status.update(Text.assemble("last drill: ", verdict, f"  saved: {saved}\n", history))
        else:
            status.update(Text("no drill yet: pick kind, target and duration, then s", "grey50"))
        self._show_nomad_state()
        self.query_one("#start", Button).disabled = running is not None
        timeline = self.query_one(DrillTimeline)
        if dash.last_report is not None and running is None:
            # One timeline: the report's (what the saved Markdown says), not the live steps as they arrived.
            timeline.border_title = "timeline (report)"
            timeline.show(rows_from_report(dash.last_report))
        elif running is None and dash.external_drills:
            # Someone else's drill: its steps are the agents' events about it since it began.
            d = dash.external_drills[0]
            timeline.border_title = f"timeline (drill {d.id}, started elsewhere)"
            timeline.show(rows_from_events(dash.recent_events, d.started_at, d.node_id))
        else:
            timeline.border_title = "timeline"
            timeline.show(rows_from_steps(dash.drill_steps))
        box = self.query_one("#report-box")
        if dash.last_report is not None and running is None:
            if self._report_shown is not dash.last_report:
                self._report_shown = dash.last_report
                self.query_one("#report", Markdown).update(to_markdown(dash.last_report))
            box.display = True
        else:
            box.display = False

    # ------------------------------------------------------------------------------------------------ actions
    def _seconds(self, field_id: str, what: str, bounds: tuple[int, int]) -> int:
        try:
            value = int(self.query_one(f"#{field_id}", Input).value)
        except ValueError as exc:
            raise ValueError(f"{what} must be a whole number of seconds") from exc
        lo, hi = bounds
        if not lo <= value <= hi:
            raise ValueError(f"{what} must be {lo}..{hi} s")
        return value

    def _plan(self) -> DrillPlan:
        kind = self._kind()
        if kind is None:
            raise ValueError("pick a kind")
        target = self.query_one("#target", Select).value
        if not isinstance(target, str):
            raise ValueError("pick a target node")
        duration = self._seconds("duration", "duration", DURATION_RANGE)
        try:
            detect = float(self.query_one("#slo-detect", Input).value)
            repair = float(self.query_one("#slo-repair", Input).value)
        except ValueError as exc:
            raise ValueError("SLOs must be numbers") from exc
        if detect <= 0 or repair <= 0:
            raise ValueError("SLOs must be positive")
        slo = SLO(detect_s=detect, repair_s=repair, recover_timeout_s=self.dash.slo.recover_timeout_s)
        deadline = DEFAULT_DRAIN_DEADLINE_S
        if kind == "drain":
            deadline = self._seconds("deadline", "drain deadline", DEADLINE_RANGE)
        task = self.query_one("#task", Select).value if kind == "restart-alloc" else ALL_TASKS
        return DrillPlan(
            kind=kind,
            target=target,
            duration_s=duration,
            slo=slo,
            deadline_s=deadline,
            task=None if task == ALL_TASKS or not isinstance(task, str) else task,
        )

    def action_start(self) -> None:
        error = self.query_one("#form-error", Static)
        if self.dash.engine.running is not None:
            error.update(Text("a drill is already running; abort it with a first", "red"))
            return
        try:
            plan = self._plan()
        except ValueError as exc:
            error.update(Text(str(exc), "red"))
            field = self._field_for(str(exc))
            if field is not None:
                field.focus()  # and scrolled into view
            return
        if plan.kind == "drain":
            # Ask Nomad what runs on that node first: the confirmation names every allocation the drain stops.
            error.update(Text("asking Nomad what the drain would stop…", "grey50"))
            self._confirm_drain(plan)
            return
        error.update("")
        self._confirm(plan, None)

    @work(exclusive=True, group="drain-preview", exit_on_error=False)
    async def _confirm_drain(self, plan: DrillPlan) -> None:
        error = self.query_one("#form-error", Static)
        try:
            preview = await asyncio.to_thread(
                self.dash.session.provider.drain_preview, plan.target, plan.deadline_s
            )
        except ProviderError as exc:
            error.update(Text(f"cannot drain: {exc}", "red"))
            return
        error.update("")
        self._confirm(plan, preview)

    def _confirm(self, plan: DrillPlan, preview: str | None) -> None:
        engine = self.dash.engine
        node = self.dash.view.node(plan.target) if self.dash.view is not None else None
        placement = node.nomad if node is not None else None
        text = describe(plan, via_source=engine.via_source(plan.kind), placement=placement, preview=preview)
        text += (
            f"\n\nSLOs: detect <= {plan.slo.detect_s:g} s, repair <= {plan.slo.repair_s:g} s after the fault "
            f"ends. Abort with a at any time."
        )
        if plan.kind == "drain" and placement is not None:
            title = f"Drain Nomad node {placement.node_name or placement.node_id[:8]} (runs {plan.target})?"
        else:
            title = f"Run a {KIND_LABELS.get(plan.kind, plan.kind)} drill on {plan.target}?"

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.dash.start_drill(plan)

        self.app.push_screen(ConfirmDrillScreen(title, text), confirmed)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "undo_drain" and "drain" not in self.dash.engine.kinds:
            return False  # not offered (nor shown) without a source that drains
        return True

    def action_undo_drain(self) -> None:
        engine = self.dash.engine
        running = engine.running
        if running is not None and running.kind == "drain":
            # The running drill's own revert is the undo; it also ends the fault window in the report.
            self.dash.abort_drill()
            self.query_one("#drill-status", Static).update(
                Text("undoing the drain (aborting the drill)…", "bold yellow")
            )
            return
        value = self.query_one("#target", Select).value
        selected = value if isinstance(value, str) else None
        node = self.dash.view.node(selected) if selected and self.dash.view is not None else None
        # The selected node when its Nomad node drains now, else the drain this session left on.
        draining = node is not None and node.nomad is not None and bool(node.nomad.drain)
        target = selected if draining else (engine.undo_pending or selected)
        if target is None:
            self.notify("pick the node whose Nomad node to undrain", severity="warning")
            return
        self.dash.undo_drain(target)

    @on(Button.Pressed, "#undo-drain")
    def _undo_pressed(self) -> None:
        self.action_undo_drain()

    @on(Button.Pressed, "#start")
    def _start_pressed(self) -> None:
        self.action_start()

    @on(Input.Submitted, "#drill-form Input")
    def _field_submitted(self) -> None:
        self.action_start()  # Enter in a field starts, as the footer's `s` does

    def _field_for(self, error: str) -> Widget | None:
        for needle, selector in (
            ("target", "#target"),
            ("kind", "#kind"),
            ("duration", "#duration"),
            ("deadline", "#deadline"),
            ("SLO", "#slo-detect"),
        ):
            if needle in error:
                return self.query_one(selector)
        return None

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
