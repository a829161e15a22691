"""x0dash, the Textual app: one session (provider + poller), one drill engine, screens that draw what the
workers hand them.

The poll loop is a single worker: refresh the source, poll every agent, merge, post `MeshUpdated`, sleep the
rest of the interval. The next cycle starts only when the last one ended, so polls never overlap and a slow
agent costs at most its timeout; the UI keeps running between awaits and the header's data age keeps growing
if a cycle stalls. A source that reports changes (Nomad's event stream) cuts that sleep short, so a Nomad event
shows within a fraction of a second instead of at the next interval.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

from textual import on, work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from agent.memory import prepare_gc_for_serving
from dashboard.background import BackgroundLoop
from dashboard.drills import lease
from dashboard.drills.engine import DrillEngine, DrillPlan, DrillRefused, DrillStep
from dashboard.drills.filing import RETRY_FOR_S as FILING_RETRY_S
from dashboard.drills.filing import Filed, file_report, filing_nodes, holder
from dashboard.drills.report import DEFAULT_REPORTS_DIR, save
from dashboard.drills.scoring import SLO, DrillReport
from dashboard.events import Event, step_event
from dashboard.history import SessionHistory
from dashboard.messages import DrillFinished, DrillStepped, MeshUpdated, ReportFiled, SourceFailed
from dashboard.models import AgentData, MeshView
from dashboard.providers.base import Provider, ProviderError
from dashboard.screens.base import MeshScreen
from dashboard.screens.drills import DrillScreen
from dashboard.screens.help import HelpScreen
from dashboard.screens.node_detail import NodeDetailScreen
from dashboard.screens.overview import OverviewScreen
from dashboard.screens.source_error import SourceErrorScreen
from dashboard.session import MeshSession, MeshUpdate
from dashboard.terminal import detach_terminal, terminal_alive
from dashboard.wire import Drill

STYLES = Path(__file__).parent / "styles"
CHANGE_COALESCE_S = 0.2  # least time between two poll cycles (or the interval if shorter), also on source changes
# Closing the terminal (SIGHUP: tmux kill-session, an SSH drop), `kill` and `kill -INT` end the session like `q`:
# the drill's fault reverted and a --local mesh stopped, never orphaned.
EXIT_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
FILING_ON_QUIT_S = 10.0  # quitting waits this long for the last report's filing in the mesh history


class X0Dash(App[int]):
    TITLE = "x0dash"
    CSS_PATH = [STYLES / "app.tcss", STYLES / "drills.tcss"]
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        # Like k9s and every TUI operators use (Textual's default only shows a toast saying to press q).
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
        # Declaring any command_palette binding drops Textual's own ctrl+p one: keep it, and add k9s's `:`.
        Binding("ctrl+p", "command_palette", "palette", show=False, priority=True),
        Binding("colon", "command_palette", "Palette", show=False, key_display=":"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("d", "drills", "Drills"),
        Binding("D", "drill_history", "History"),
    ]

    def __init__(
        self,
        provider: Provider,
        *,
        interval: float = 1.0,
        timeout: float = 1.5,
        down_after: float = 10.0,
        reports_dir: Path = DEFAULT_REPORTS_DIR,
        slo: SLO | None = None,
        default_duration: int = 10,
        clock: Callable[[], float] = time.time,
        autopoll: bool = True,
        handle_signals: bool = False,
        tune_gc: bool = False,
    ) -> None:
        super().__init__()
        self.handle_signals = handle_signals  # the real command only: tests run the app inside pytest's process
        # The real command only too: freezing would keep every earlier test's app (cycles) alive for good.
        self.tune_gc = tune_gc
        self.exit_signal: str | None = None
        self.clock = clock
        self.interval = interval
        self.reports_dir = reports_dir
        self.slo = slo or SLO()
        self.default_duration = default_duration
        self.autopoll = autopoll
        self.session = MeshSession(provider, timeout=timeout, down_after=down_after, clock=clock)
        self.engine = DrillEngine(self.session, clock=clock)
        # The session and the engine live on this loop, never on the UI's (see dashboard/background.py).
        self.background = BackgroundLoop()
        self.session.listeners.append(lambda update: self.post_message(MeshUpdated(update)))
        self.engine.listeners.append(lambda step: self.post_message(DrillStepped(step)))
        self.view: MeshView | None = None
        self.agents: dict[str, AgentData] = {}  # copies handed over with each update (UI thread only)
        self.history = SessionHistory()
        self.recent_events: deque[Event] = deque(maxlen=2000)  # what the event log got (a drill elsewhere's steps)
        self._drills_were_active = False
        self.status_note: str | None = "starting the source…"
        self.source_error: str | None = None
        self.drill_steps: list[DrillStep] = []
        self.last_report: DrillReport | None = None
        self.last_report_paths: list[Path] = []
        self.last_drill_error: str | None = None
        # The last report's filing in the mesh-wide history: None while it runs (or before any report).
        self.last_filing: Filed | None = None
        self.filing_retry_s = FILING_RETRY_S  # how long a mesh without a Raft leader may take to accept it
        self._quitting = False  # (not `_closing`: Textual's MessagePump uses that name and drops messages)

    # ------------------------------------------------------------------------------------------------ setup
    def get_default_screen(self) -> Screen[None]:
        return OverviewScreen()

    def on_mount(self) -> None:
        if self.handle_signals:
            self._install_exit_signals()
        if self.autopoll:
            self.start_polling()
        if self.tune_gc:
            # Once the first frame is drawn: what exists then (modules, screens, widgets, styles) is frozen out of
            # the collector's reach and the youngest generation is collected less often. Full collections walked
            # all of it: 13 in ~15 s of '?' presses over a polling overview, up to 94 ms each, and they were the
            # slowest presses (bench/dash_poll.py).
            self.call_after_refresh(prepare_gc_for_serving)

    def start_polling(self) -> None:
        self.source_error = None
        self.status_note = "starting the source…"
        self._poll_loop()

    @work(exclusive=True, group="poll", exit_on_error=False)
    async def _poll_loop(self) -> None:
        if not self.session.started:
            try:
                await self.background.run(self.session.start())
            except ProviderError as exc:
                self.post_message(SourceFailed(str(exc)))
                return
        self.status_note = None
        while True:
            started = time.monotonic()
            try:
                await self.background.run(self.session.update())
            except Exception as exc:  # keep polling: the next cycle may work, the operator sees why
                self.log.error(f"poll cycle failed: {exc!r}")
                self.notify(f"poll cycle failed: {type(exc).__name__}: {exc}", severity="error", timeout=5)
            # A short pause first, even when a change is pending: a burst of Nomad events becomes one refresh.
            await asyncio.sleep(min(CHANGE_COALESCE_S, max(0.05, self.interval)))
            rest = self.interval - (time.monotonic() - started)
            if rest > 0:
                await self.background.run(self.session.wait_change(rest))

    # ------------------------------------------------------------------------------------------------ data in
    def apply_update(self, message: MeshUpdated) -> None:
        """Hand a poll result to every screen (also used by tests to feed recorded data)."""
        self.view = message.update.view
        self.agents = message.update.agents or self.agents
        self.history.record(message.update.view)
        self.recent_events.extend(message.update.events)
        active = bool(message.update.view.active_drills)
        if active or self._drills_were_active or self.engine.running is not None:
            self._drill_changed()  # the drills screen follows a drill started elsewhere, too (and its end)
        self._drills_were_active = active
        for screen in self.screen_stack:
            if isinstance(screen, MeshScreen):
                screen.receive(message.update)

    @on(MeshUpdated)
    def _mesh_updated(self, message: MeshUpdated) -> None:
        self.apply_update(message)

    @on(SourceFailed)
    def _source_failed(self, message: SourceFailed) -> None:
        self.source_error = message.error
        self.status_note = f"source failed: {message.error}"
        self.push_screen(SourceErrorScreen(message.error))

    @on(DrillStepped)
    def _drill_stepped(self, message: DrillStepped) -> None:
        self.drill_steps.append(message.step)
        self._drill_changed()

    @on(DrillFinished)
    def _drill_finished(self, message: DrillFinished) -> None:
        self.last_report, self.last_report_paths = message.report, message.paths
        self.last_drill_error = message.error
        if message.error:
            self.notify(message.error, title="drill refused", severity="error", timeout=8)
        elif message.report is not None:
            verdict = "PASS" if message.report.passed else "FAIL"
            self.notify(
                f"{verdict}; report saved to {message.paths[0].parent}",
                title="drill finished",
                severity="information" if message.report.passed else "error",
                timeout=8,
            )
        self._drill_changed()

    @on(ReportFiled)
    def _report_filed(self, message: ReportFiled) -> None:
        if message.report is not self.last_report:
            return  # a newer drill started meanwhile
        filed = self.last_filing = message.filed
        if filed.ok:
            self.notify(filed.detail, title="drill report", timeout=6)
        else:
            self.notify(
                f"{filed.detail}. The report is saved here only ({self.reports_dir}).",
                title="drill report NOT filed in the mesh history",
                severity="error",
                timeout=12,
            )
        event = step_event(
            self.clock(),
            ("report " if filed.ok else "report NOT filed in the mesh history: ") + filed.detail,
            "ok" if filed.ok else "error",
            None,
        )
        self.recent_events.append(event)
        if self.view is not None:  # to the event log now, not with the next poll (a recorded app never polls)
            update = MeshUpdate(view=self.view, events=[event], poll=None)
            for screen in self.screen_stack:
                if isinstance(screen, MeshScreen):
                    screen.receive(update)
        self._drill_changed()

    def _drill_changed(self) -> None:
        for screen in self.screen_stack:
            # Not composed yet: its on_mount shows the drill. Torn down (a report filed as the app exits): nothing
            # to draw on (a whole-suite pass died here with NoMatches '#drill-status').
            if isinstance(screen, DrillScreen) and screen.composed and not screen.torn_down():
                screen.drill_changed()
            if isinstance(screen, MeshScreen):
                screen.receive(None)

    # ------------------------------------------------------------------------------------------------ queries
    @property
    def external_drills(self) -> list[Drill]:
        """Drills running on the agents that this x0dash did not start (another x0dash, headless, POST /drills)."""
        view = self.view
        if view is None:
            return []
        own = self.session.poller.own_drills
        found = [d for d in view.active_drills if d.id not in own]
        by_source = lease.elsewhere(view.drill_lease, holder(), self.clock())  # another x0dash's source-made fault
        return found + ([by_source] if by_source is not None else [])

    @property
    def drill_banner(self) -> str | None:
        plan = self.engine.running
        if plan is None:
            others = self.external_drills
            if not others:
                return None
            d = others[0]
            more = f" (+{len(others) - 1} more)" if len(others) > 1 else ""
            length = f"{d.duration_s:g} s" if d.duration_s else d.detail
            return (
                f"{d.kind} on {d.node_id} ({length}) t+{max(0.0, self.clock() - d.started_at):.0f} s, "
                f"started elsewhere{more}"
            )
        started = next((s.at - (s.t_s or 0.0) for s in self.drill_steps if s.t_s is not None), None)
        since = f" t+{self.clock() - started:.0f} s" if started is not None else " preparing"
        return f"{plan.kind} on {plan.target} ({plan.duration_s} s){since}"

    def agent_data(self, node_id: str) -> AgentData | None:
        return self.agents.get(node_id)

    def watch_routes(self, node_id: str, on: bool) -> None:
        if on:
            self.session.poller.detail_nodes.add(node_id)
        else:
            self.session.poller.detail_nodes.discard(node_id)

    # ------------------------------------------------------------------------------------------------ navigation
    def open_node(self, node_id: str) -> None:
        top = self.screen
        if isinstance(top, NodeDetailScreen) and top.node_id == node_id:
            return
        self.push_screen(NodeDetailScreen(node_id))  # it draws the current data once composed

    def open_drills(self, target: str | None = None) -> None:
        if isinstance(self.screen, DrillScreen):
            return
        # One drills screen for the session, composed once: it also keeps the form as the operator left it.
        if not self.is_screen_installed("drills"):
            self.install_screen(DrillScreen(target), "drills")
        elif target is not None:
            self.get_screen("drills").preselect(target)  # type: ignore[attr-defined]
        self.push_screen("drills")

    def action_drills(self) -> None:
        if self.source_error is not None:
            self.notify("no source: drills need a running mesh", severity="error")
            return
        self.open_drills()

    def action_drill_history(self) -> None:
        from dashboard.screens.drill_history import DrillHistoryScreen

        if not isinstance(self.screen, DrillHistoryScreen):
            self.push_screen(DrillHistoryScreen())

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        # Installed once and reused: composing it again on every `?` costs tens of ms at 100 nodes.
        if not self.is_screen_installed("help"):
            self.install_screen(HelpScreen(), "help")
        self.push_screen("help")

    def _install_exit_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in EXIT_SIGNALS:
            loop.add_signal_handler(sig, self._on_exit_signal, sig)
        # A terminal that hangs up sends SIGCONT with the SIGHUP; Textual's driver answers SIGCONT by resuming its
        # terminal mode on the dead terminal, starting new threads that deadlock the exit (seen: x0dash hung
        # after tmux kill-session, its mesh already stopped). Resume only on a terminal that is still there.
        resume = signal.getsignal(signal.SIGCONT)
        if callable(resume):

            def on_cont(signum: int, frame: object) -> None:
                if terminal_alive():
                    resume(signum, frame)  # type: ignore[arg-type]

            signal.signal(signal.SIGCONT, on_cont)

    def _on_exit_signal(self, sig: signal.Signals) -> None:
        if self.exit_signal is None:
            self.exit_signal = sig.name
        if sig == signal.SIGHUP and not terminal_alive():
            detach_terminal()
        self.action_quit()

    def action_quit(self) -> None:
        if self._quitting:
            return
        self._quitting = True
        self.status_note = "stopping…"
        if self.engine.running is not None:
            self.notify("aborting the running drill before quitting…", severity="warning")
        # In a worker, not in this handler: closing awaits the network and the provider, and the app must keep
        # processing messages meanwhile (awaiting here can stall the exit).
        self.run_worker(self._close_and_exit(), group="quit", exit_on_error=False)

    async def _close_and_exit(self) -> None:
        try:
            if self.engine.running is not None:
                self.background.call(self.engine.abort)
                try:
                    await self.background.run(asyncio.wait_for(self.engine.fault_reverted.wait(), timeout=15))
                except TimeoutError:
                    self.log.error("the drill's fault could not be confirmed reverted")
            filing = [w for w in self.workers if w.group == "filing" and not w.is_finished]
            if filing:
                # The last report is saved; give its filing in the mesh history a moment to finish.
                self.status_note = "stopping: filing the last drill report in the mesh history…"
                try:
                    await asyncio.wait_for(asyncio.gather(*(w.wait() for w in filing)), timeout=FILING_ON_QUIT_S)
                except Exception:  # timed out, or the worker failed: the report stays saved here
                    self.log.error("quit before the last drill report was filed in the mesh history")
            self.workers.cancel_group(self, "poll")
            self.workers.cancel_group(self, "drill")
            try:
                await self.background.run(asyncio.wait_for(self.session.close(), timeout=30))
            except TimeoutError:
                self.log.error("stopping the source took longer than 30 s")
            self.background.stop()
        finally:
            code = 0 if self.source_error is None else 3
            self.exit(code, return_code=code)

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand(
            "Drills", "pick a fault, a target and a duration; watch the mesh heal", self.action_drills
        )
        yield SystemCommand(
            "Drill history", "every drill of the mesh, its report, trends per kind", self.action_drill_history
        )
        yield SystemCommand("Help", "keys, states, sources, headless drills", self.action_help)
        if self.view is not None:
            for n in self.view.nodes:
                yield SystemCommand(
                    f"Node {n.id}",
                    f"{n.state}: peers, routes, incidents and heal actions",
                    lambda node=n.id: self.open_node(node),
                )
                yield SystemCommand(
                    f"Drill {n.id}",
                    f"open drills with {n.id} as the target",
                    lambda node=n.id: self.open_drills(node),
                )

    # ------------------------------------------------------------------------------------------------ drills
    def abort_drill(self) -> None:
        """Revert the running drill's fault now (the engine lives on the background loop)."""
        self.background.call(self.engine.abort)

    def start_drill(self, plan: DrillPlan) -> None:
        if self.engine.running is not None:
            self.notify("a drill is already running", severity="error")
            return
        self.drill_steps = []
        self.last_report, self.last_report_paths, self.last_drill_error = None, [], None
        self.last_filing = None
        self._drill_changed()
        self._run_drill(plan)

    @work(group="undo", exit_on_error=False)
    async def undo_drain(self, target: str) -> None:
        """Undo the drain of `target`'s Nomad node now (restores its eligibility), outside a drill's own end."""
        try:
            done = await self.background.run(self.engine.undo_drain(target))
        except ProviderError as exc:
            self.notify(str(exc), title="undo drain failed", severity="error", timeout=8)
            return
        self.notify(done, title="drain undone", timeout=6)
        self._drill_changed()

    @work(exclusive=True, group="drill", exit_on_error=False)
    async def _run_drill(self, plan: DrillPlan) -> None:
        try:
            report = await self.background.run(self.engine.run(plan))
        except DrillRefused as exc:
            self.post_message(DrillFinished(None, error=str(exc)))
            return
        await self.finish_report(report)

    async def finish_report(self, report: DrillReport) -> None:
        """Save the report here, then file it in the mesh-wide drill history; each outcome is shown."""
        try:
            paths = await asyncio.to_thread(save, report, self.reports_dir)
        except OSError as exc:
            self.post_message(DrillFinished(report, error=f"drill done but the report could not be saved: {exc}"))
        else:
            self.post_message(DrillFinished(report, paths=paths))
        self._file(report)

    @work(group="filing", exit_on_error=False)
    async def _file(self, report: DrillReport) -> None:
        # Its own worker: a drill started meanwhile must not cancel it, and quitting waits for it (bounded).
        nodes = filing_nodes(self.view.nodes if self.view is not None else (), report.target)
        try:
            filed = await self.background.run(
                file_report(self.session.client, nodes, report, retry_for_s=self.filing_retry_s)
            )
        except Exception as exc:  # never silent: whatever went wrong is the operator's to read
            filed = Filed(ok=False, detail=f"{type(exc).__name__}: {exc}")
        self.post_message(ReportFiled(report, filed))
