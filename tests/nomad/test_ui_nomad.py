"""x0dash's Nomad drills through the real TUI (App.run_test): the fake Nomad serves recorded shapes and plays
the scheduler's side of each write on a real mesh (real daemons, real agents, real MAPE-K), so the drill engine
measures a real fault. Asserted: the exact requests x0dash sent to Nomad (method, path, body), what the
confirmation said, and the report.

The mesh runs in network namespaces (root): a drill needs the steady state, which includes every member
answering over the overlay, and a loopback mesh has no TUN to carry that.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from textual.widgets import Input, RadioButton, Select, Static

from agent.localmesh import LocalMesh, MeshOptions
from dashboard.app import X0Dash
from dashboard.cli import run_headless
from dashboard.drills.engine import DrillPlan
from dashboard.drills.scoring import DrillReport
from dashboard.nomad.backoff import Backoff
from dashboard.nomad.settings import load_settings
from dashboard.nomad.view import AGENT_SERVICE
from dashboard.providers.nomad import NomadProvider
from dashboard.screens.confirm import ConfirmDrillScreen
from dashboard.screens.drills import DrillScreen
from dashboard.screens.help import HelpScreen
from dashboard.screens.overview import OverviewScreen
from tests.dashboard.conftest import until
from tests.nomad import shapes
from tests.nomad.fake_nomad import FakeNomad, Seen, closed_port_url

pytestmark = [pytest.mark.yggdrasil, pytest.mark.root]

LOOSE = {"slo-detect": "10", "slo-repair": "20"}  # these tests check the measuring, not MAPE-K's speed
# The simulated scheduler's delay before it places or restarts an allocation. A real Nomad takes seconds (an
# evaluation, placement, the tasks starting); at 0.1 s a node loss lasted less than the agents' 1 s snapshot
# interval, and a suite pass had node-b record no incident about node-a at all.
SCHEDULE_S = 2.0


@pytest.fixture(scope="module")
def mesh(
    require_yggdrasil: str, require_root: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalMesh]:
    options = MeshOptions(nodes=2, topology="full", mode="netns", run_dir=tmp_path_factory.mktemp("nomadui"))
    with LocalMesh(options) as m:
        yield m


class NomadSim:
    """What a Nomad cluster does to a loopback mesh, over the fake server: one Nomad client per mesh node;
    stopping an allocation or draining its node kills that node's agent and daemon (LocalMesh.stop_node) and
    the replacement allocation (new ID, placed after the stop, or after the drain is undone) starts them again;
    a restart kills and starts them under the same allocation. Each change is announced on the event stream as
    an Allocation event, as Nomad does."""

    def __init__(self, fake: FakeNomad, mesh: LocalMesh, *, same_host: bool = False) -> None:
        self.fake, self.mesh = fake, mesh
        self.lock = threading.RLock()
        self.index = 200
        self.serial = 0
        self.nodes: dict[str, dict[str, Any]] = {}  # mesh node id -> NodeListStub of its Nomad client
        self.allocs: list[dict[str, Any]] = []
        self.regs: list[dict[str, Any]] = []  # registered now (a stopped allocation's are gone)
        self.owner: dict[str, str] = {}  # allocation ID -> mesh node id
        # Where each agent listens (its namespace's address): what its service registration says.
        self.addrs = {h.id: urlsplit(h.agent_url) for h in mesh.nodes}
        for i, handle in enumerate(mesh.nodes):
            host = mesh.nodes[0].id if same_host else handle.id
            self.nodes[handle.id] = shapes.node(
                f"{(0 if same_host else i) + 1:08d}-aaaa-4bbb-8ccc-000000000000", host
            )
            self._place(handle.id)
        # Another job's allocation on node-b's client: a drain stops it too, and the confirmation must say so.
        web = shapes.alloc_stub(
            "0000000f-dddd-4eee-8fff-000000000000",
            self.nomad_node("node-b")["ID"],
            self.nomad_node("node-b")["Name"],
            job_type="service",
        )
        self.web = shapes.allocation(web, api_port=1, peer_port=2)
        self.web.update(
            JobID="web", Name="web.cache[0]", Job=dict(self.web["Job"], ID="web", Name="web", Type="service")
        )
        self.timers: list[threading.Timer] = []
        fake.on_request = self._on_request
        self.serve()

    # State ----------------------------------------------------------------------------------------------------
    def nomad_node(self, mesh_id: str) -> dict[str, Any]:
        return self.nodes[mesh_id]

    def current(self, mesh_id: str) -> dict[str, Any]:
        """The mesh node's newest allocation."""
        return max((a for a in self.allocs if self.owner[a["ID"]] == mesh_id), key=lambda a: a["CreateIndex"])

    def _mesh_id(self, alloc: dict[str, Any]) -> str:
        return self.owner[alloc["ID"]]

    def _place(self, mesh_id: str) -> dict[str, Any]:
        """A new running allocation for mesh_id, with its agent service registration."""
        self.serial += 1
        self.index += 1
        nd = self.nomad_node(mesh_id)
        stub = shapes.alloc_stub(
            f"{self.serial:08d}-dddd-4eee-8fff-000000000000",
            nd["ID"],
            nd["Name"],
            index=sorted(self.addrs).index(mesh_id),
            create_index=self.index,
        )
        addr = self.addrs[mesh_id]
        reg = shapes.registration(
            stub, service=AGENT_SERVICE, port=addr.port, address=addr.hostname, node_name=mesh_id
        )
        self.allocs.append(stub)
        self.regs.append(reg)
        self.owner[stub["ID"]] = mesh_id
        return stub

    def _stop(self, alloc: dict[str, Any]) -> None:
        """The allocation ends: its processes die, its service is deregistered."""
        self.mesh.stop_node(self._mesh_id(alloc))
        alloc.update(DesiredStatus="stop", ClientStatus="complete")
        self.regs = [r for r in self.regs if r["AllocID"] != alloc["ID"]]

    def _later(self, delay_s: float, fn: Any) -> None:
        t = threading.Timer(delay_s, fn)
        t.daemon = True
        self.timers.append(t)
        t.start()

    def _replace(self, mesh_id: str) -> None:
        """The scheduler places a new allocation: the node starts again (same keys and ports)."""
        self.mesh.start_node(mesh_id)
        with self.lock:
            stub = self._place(mesh_id)
            self.serve()
        self.announce(stub)

    def announce(self, stub: dict[str, Any]) -> None:
        with self.lock:
            self.index += 1
            self.fake.events.put(shapes.alloc_event_frame(self.index, stub))

    # What Nomad answers -----------------------------------------------------------------------------------
    def serve(self) -> None:
        f = self.fake
        f.set("GET", "/v1/job/x0-mesh", shapes.job())
        f.set("GET", "/v1/job/x0-mesh/allocations", [dict(a) for a in self.allocs])
        f.set("GET", "/v1/nodes", list({n["ID"]: n for n in self.nodes.values()}.values()))
        f.set("GET", f"/v1/service/{AGENT_SERVICE}", list(self.regs))
        f.set("GET", "/v1/var/nomad/jobs/x0-mesh", "variable not found", status=404)
        for nd in self.nodes.values():
            on_node = [
                shapes.allocation(a, api_port=1, peer_port=2)
                for a in self.allocs
                if a["NodeID"] == nd["ID"] and a["DesiredStatus"] == "run"
            ]
            if nd["Name"] == "node-b":
                on_node.append(self.web)
            f.set("GET", f"/v1/node/{nd['ID']}/allocations", on_node)
            f.set("POST", f"/v1/node/{nd['ID']}/drain", shapes.drain_response(self.index))
        for a in self.allocs:
            f.set("POST", f"/v1/allocation/{a['ID']}/stop", shapes.stop_response(self.index))
            f.set("POST", f"/v1/client/allocation/{a['ID']}/restart", shapes.generic_response(self.index))

    def _on_request(self, seen: Seen) -> None:
        reply = self.fake.routes.get((seen.method, seen.path))
        if seen.method != "POST" or reply is None or reply.status != 200:
            return  # a read, or a write Nomad refuses: no side effect
        with self.lock:
            parts = seen.path.strip("/").split("/")
            if parts[1] == "allocation" and parts[-1] == "stop":
                alloc = next(a for a in self.allocs if a["ID"] == parts[2])
                mesh_id = self._mesh_id(alloc)
                self._stop(alloc)
                self.serve()
                self._later(SCHEDULE_S, lambda: self._replace(mesh_id))
            elif parts[1:3] == ["client", "allocation"] and parts[-1] == "restart":
                alloc = next(a for a in self.allocs if a["ID"] == parts[3])
                mesh_id = self._mesh_id(alloc)
                self.mesh.stop_node(mesh_id)
                self._later(SCHEDULE_S, lambda: (self.mesh.start_node(mesh_id), self.announce(alloc)))
            elif parts[1] == "node" and parts[-1] == "drain":
                body = json.loads(seen.body)
                nd = next(n for n in self.nodes.values() if n["ID"] == parts[2])
                if body["DrainSpec"] is not None:
                    nd.update(SchedulingEligibility="ineligible", Drain=True)
                    for a in [a for a in self.allocs if a["NodeID"] == nd["ID"] and a["DesiredStatus"] == "run"]:
                        self._stop(a)
                        self.announce(a)
                else:
                    nd["Drain"] = False
                    if body.get("MarkEligible"):
                        nd["SchedulingEligibility"] = "eligible"
                        # The system scheduler places the job again on every eligible client it lacks.
                        for mesh_id in [m for m, n in self.nodes.items() if n["ID"] == nd["ID"]]:
                            if not self.mesh.is_running(mesh_id):
                                self._later(SCHEDULE_S, lambda m=mesh_id: self._replace(m))
                self.serve()

    def close(self) -> None:
        for t in self.timers:
            t.cancel()
        for t in self.timers:
            t.join(10)
        self.fake.on_request = None
        for handle in self.mesh.nodes:  # leave the shared mesh whole for the next test
            if not self.mesh.is_running(handle.id):
                self.mesh.start_node(handle.id)


@pytest.fixture
def sim(fake_nomad: FakeNomad, mesh: LocalMesh) -> Iterator[NomadSim]:
    s = NomadSim(fake_nomad, mesh)
    try:
        yield s
    finally:
        s.close()


Dash = Callable[..., X0Dash]


@pytest.fixture
def dash(tmp_path: Path) -> Iterator[Dash]:
    """Makes apps on a Nomad provider, and afterwards stops what they started (the session, the provider's
    event stream thread, the background loop): run_test leaves without the app's own quit."""
    made: list[X0Dash] = []

    def make(provider: NomadProvider, **kw: Any) -> X0Dash:
        app = X0Dash(provider, reports_dir=tmp_path / "reports", **{"timeout": 1.0, **kw})
        made.append(app)
        return app

    yield make
    for app in made:
        if app.background._loop is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(app.session.close(), app.background.loop).result(10)
            app.background.stop()
        app.session.provider.stop()


def make_app(dash: Dash, fake: FakeNomad) -> X0Dash:
    provider = NomadProvider(env={"NOMAD_ADDR": fake.url}, events=True, resync_s=3600, backoff=Backoff(0.2, 1.0))
    app = dash(provider, interval=0.5)
    app.engine.steady_timeout = 20
    app.engine.follow_interval = 0.25  # two agents: following closely costs little and keeps the tests short
    return app


def whole(app: X0Dash) -> bool:
    v = app.view
    return v is not None and v.source_ok and v.nodes_healthy == 2 and v.links_up == 1 and v.incidents_active == 0


def posts(fake: FakeNomad) -> list[tuple[str, str, Any]]:
    """Every write x0dash sent to Nomad: (method, path, JSON body)."""
    return [(r.method, r.path, json.loads(r.body) if r.body else None) for r in fake.requests if r.method != "GET"]


async def open_form(pilot: Any, app: X0Dash, kind: str, target: str, **fields: str) -> DrillScreen:
    await pilot.press("d")
    screen = app.screen
    assert isinstance(screen, DrillScreen)
    screen.query_one(f"#kind-{kind}", RadioButton).value = True
    await pilot.pause()
    screen.query_one("#target", Select).value = target
    for name, value in {**LOOSE, **fields}.items():
        screen.query_one(f"#{name}", Input).value = value
    return screen


async def wait_report(pilot: Any, app: X0Dash) -> DrillReport:
    """The finished drill's report; on failure the drill's own timeline says where it stuck."""
    try:
        await until(
            pilot,
            "drill finished",
            lambda: app.last_report is not None or app.last_drill_error is not None,
            within=60,
        )
    except AssertionError as exc:
        raise AssertionError(
            "\n".join([str(exc), *(f"{s.t_s} {s.node} {s.what}" for s in app.drill_steps)])
        ) from None
    assert app.last_report is not None, app.last_drill_error
    return app.last_report


def check_report(report: DrillReport, target: str) -> None:
    assert report.target == target and report.fault.clock == "dashboard"
    assert [o.observer for o in report.observers] == [o for o in ("node-a", "node-b") if o != target]
    obs = report.observers[0]
    assert obs.detected_at is not None and obs.detected_at >= report.fault.started_at - 0.5
    assert report.fault.source_brings_back and report.fault.back_at is not None
    assert report.fault.back_at >= report.fault.started_at
    assert report.recovered and report.after is not None and report.after.links_up == 1
    timeline = [e.what for e in report.timeline]
    if report.kind == "drain":  # we undid it: reverted, then back
        assert report.fault.ended_at is not None and report.fault.ended_at < report.fault.back_at
        assert "fault reverted" in timeline and f"back: {report.fault.back_what}" in timeline
    else:  # Nomad undid it: the fault is over when the node is back, and repair is timed from there
        assert report.fault.ended_at == report.fault.back_at
        assert f"fault over, back: {report.fault.back_what}" in timeline and "fault reverted" not in timeline
        assert obs.repair_s is not None and obs.repaired_at is not None
        assert obs.repair_s == pytest.approx(obs.repaired_at - report.fault.back_at)


async def test_drain_with_confirmation_then_undo_at_the_end(
    sim: NomadSim, fake_nomad: FakeNomad, dash: Dash
) -> None:
    app = make_app(dash, fake_nomad)
    node_b = sim.nomad_node("node-b")
    alloc_b = sim.current("node-b")
    async with app.run_test(size=(150, 48)) as pilot:
        await until(pilot, "mesh whole", lambda: whole(app), within=30)
        screen = await open_form(pilot, app, "drain", "node-b", duration="1", deadline="45")
        assert screen.query_one("#deadline").display and not screen.query_one("#task").display
        await pilot.press("s")
        await until(pilot, "confirmation", lambda: isinstance(app.screen, ConfirmDrillScreen))
        confirm = app.screen
        assert isinstance(confirm, ConfirmDrillScreen)
        assert confirm.title_text == "Drain Nomad node node-b (runs node-b)?"
        text = confirm.description
        # Exactly what happens: which Nomad node, every allocation on it (any job), the deadline, the undo.
        assert f"Nomad node node-b (id {node_b['ID'][:8]}, dc1, ready, eligible)" in text
        assert "drained with a deadline of 45 s" in text
        assert f"x0-mesh.node[1] ({alloc_b['ID'][:8]}, job x0-mesh, running) = mesh node node-b" in text
        assert "web.cache[0] (0000000f, job web, running)" in text
        assert "after 45 s it stops whatever still runs there" in text
        assert "Undo cancels the drain and makes the node eligible again" in text
        assert "The drain stays on for 1 s" in text
        assert fake_nomad.seen("GET", f"/v1/node/{node_b['ID']}/allocations")
        assert posts(fake_nomad) == []  # nothing written before the answer
        await pilot.press("y")
        report = await wait_report(pilot, app)
    drain_path = f"/v1/node/{node_b['ID']}/drain"
    assert posts(fake_nomad) == [
        (
            "POST",
            drain_path,
            {"NodeID": node_b["ID"], "DrainSpec": {"Deadline": 45_000_000_000, "IgnoreSystemJobs": False}},
        ),
        ("POST", drain_path, {"NodeID": node_b["ID"], "DrainSpec": None, "MarkEligible": True}),
    ]
    check_report(report, "node-b")
    assert report.fault.method.startswith("source: draining Nomad node node-b (deadline 45 s")
    assert not report.fault.aborted and report.fault.ended_at is not None
    assert "on replacement allocation" in report.fault.back_what
    assert sim.current("node-b")["ID"] != alloc_b["ID"]
    assert app.engine.undo_pending is None
    steps = [s.what for s in app.drill_steps]
    assert any(s.startswith("drain of Nomad node node-b cancelled; eligible") for s in steps)


async def test_undo_key_aborts_a_running_drain_and_undoes_a_leftover_one(
    sim: NomadSim, fake_nomad: FakeNomad, dash: Dash
) -> None:
    app = make_app(dash, fake_nomad)
    node_a = sim.nomad_node("node-a")
    drain_path = f"/v1/node/{node_a['ID']}/drain"
    async with app.run_test(size=(150, 48)) as pilot:
        await until(pilot, "mesh whole", lambda: whole(app), within=30)
        screen = await open_form(pilot, app, "drain", "node-a", duration="300", deadline="20")
        await pilot.press("s")
        await until(pilot, "confirmation", lambda: isinstance(app.screen, ConfirmDrillScreen))
        await pilot.press("y")
        await until(pilot, "drained", lambda: len(fake_nomad.seen("POST", drain_path)) == 1, within=30)
        await until(pilot, "fault injected", lambda: any(s.t_s is not None for s in app.drill_steps))
        assert app.engine.undo_pending == "node-a"
        await pilot.press("u")  # during the drill: the drill's own revert, at once
        report = await wait_report(pilot, app)
        assert report.fault.aborted
        assert report.fault.ended_at is not None and report.fault.ended_at - report.fault.started_at < 30
        assert "aborted by the operator" in report.failures
        assert json.loads(fake_nomad.seen("POST", drain_path)[1].body) == {
            "NodeID": node_a["ID"],
            "DrainSpec": None,
            "MarkEligible": True,
        }
        assert report.recovered and report.fault.back_at is not None

        # A drain left on outside any drill (another operator, a crashed session): shown, and `u` undoes it.
        with sim.lock:
            node_a.update(SchedulingEligibility="ineligible", Drain=True)
            sim.serve()
        sim.announce(sim.current("node-a"))
        state = screen.query_one("#nomad-state", Static)
        await until(
            pilot,
            "draining shown",
            lambda: "Nomad node node-a is draining (node-a): u undoes it" in str(state.render()),
        )
        screen.query_one("#target", Select).value = "node-a"
        await pilot.press("u")
        await until(pilot, "undo sent", lambda: len(fake_nomad.seen("POST", drain_path)) == 3)
        assert json.loads(fake_nomad.seen("POST", drain_path)[2].body) == {
            "NodeID": node_a["ID"],
            "DrainSpec": None,
            "MarkEligible": True,
        }
        sim.announce(sim.current("node-a"))
        await until(pilot, "drain gone", lambda: "draining" not in str(state.render()))
        assert any(s.what.startswith("drain of Nomad node node-a cancelled") for s in app.drill_steps)


async def test_restart_allocation_drill(sim: NomadSim, fake_nomad: FakeNomad, dash: Dash) -> None:
    app = make_app(dash, fake_nomad)
    alloc = sim.current("node-b")
    async with app.run_test(size=(150, 48)) as pilot:
        await until(pilot, "mesh whole", lambda: whole(app), within=30)
        screen = await open_form(pilot, app, "restart-alloc", "node-b", duration="1")
        assert screen.query_one("#task").display and not screen.query_one("#deadline").display
        # Refused by Nomad first: the drill is refused with the capability the token lacks, nothing breaks.
        restart_path = f"/v1/client/allocation/{alloc['ID']}/restart"
        fake_nomad.set("POST", restart_path, "Permission denied", status=403)
        await pilot.press("s")
        await until(pilot, "confirmation", lambda: isinstance(app.screen, ConfirmDrillScreen))
        await pilot.press("y")
        await until(pilot, "refusal", lambda: app.last_drill_error is not None)
        assert app.last_drill_error == (
            "the source could not restart node-b: Nomad restart allocation: 403 Permission denied; the token "
            'needs namespace "default" { capabilities = ["alloc-lifecycle"] }'
        )
        assert "refused: the source could not restart node-b" in str(screen.query_one("#drill-status").render())
        assert app.engine.running is None and sim.mesh.is_running("node-b")
        sim.serve()  # the token gets alloc-lifecycle
        await pilot.press("s")
        await until(pilot, "confirmation", lambda: isinstance(app.screen, ConfirmDrillScreen))
        confirm = app.screen
        assert isinstance(confirm, ConfirmDrillScreen)
        assert (
            f"Nomad restarts all tasks (Yggdrasil and the agent) of node-b's allocation {alloc['ID'][:8]} "
            "(x0-mesh.node[1]) on Nomad node node-b, in place"
        ) in confirm.description
        await pilot.press("y")
        report = await wait_report(pilot, app)
    assert posts(fake_nomad) == [("POST", restart_path, {})] * 2
    check_report(report, "node-b")
    assert report.fault.method == f"source: restarted all tasks of allocation {alloc['ID'][:8]} on node-b"
    assert report.fault.back_what == f"node-b's allocation {alloc['ID'][:8]} restarted, agent healthy"


async def test_node_loss_stops_the_allocation_and_waits_for_the_replacement(
    sim: NomadSim, fake_nomad: FakeNomad, dash: Dash, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The agents' token, as an operator gives it: the agents do not see a fault Nomad makes, so x0dash holds the
    # mesh-wide drill lease for it meanwhile (and files the report in the mesh history).
    monkeypatch.setenv("X0_API_TOKEN", sim.mesh.inventory["api_token"])
    # The simulated cluster's agents are on this host's bridge: the operator says the token may go there in clear.
    monkeypatch.setenv("X0_ALLOW_CLEAR_UNDERLAY", "true")
    app = make_app(dash, fake_nomad)
    alloc = sim.current("node-a")
    async with app.run_test(size=(150, 48)) as pilot:
        await until(pilot, "mesh whole", lambda: whole(app), within=30)
        await open_form(pilot, app, "node-loss", "node-a", duration="1")
        await pilot.press("s")
        await until(pilot, "confirmation", lambda: isinstance(app.screen, ConfirmDrillScreen))
        confirm = app.screen
        assert isinstance(confirm, ConfirmDrillScreen)
        assert (
            f"Nomad stops node-a's allocation {alloc['ID'][:8]} (x0-mesh.node[0]) on Nomad node node-a"
            in confirm.description
        )
        assert "the fault lasts until the replacement's agent is healthy" in confirm.description
        await pilot.press("y")
        report = await wait_report(pilot, app)
    assert posts(fake_nomad) == [("POST", f"/v1/allocation/{alloc['ID']}/stop", None)]
    check_report(report, "node-a")
    replacement = sim.current("node-a")["ID"]
    assert replacement != alloc["ID"]
    assert report.fault.back_what == f"node-a on replacement allocation {replacement[:8]} (node-a), agent healthy"
    # Full recovery is declared only once the replacement is back, never on the stopped allocation.
    assert report.steady_confirmed_at is not None and report.steady_confirmed_at >= report.fault.back_at
    steps = [s.what for s in app.drill_steps]
    taken = next((s for s in steps if "mesh-wide drill lease" in s), f"no lease step in {steps}")
    assert " taken, for " in taken, steps  # before the fault, so another x0dash is refused meanwhile
    assert steps.index(taken) < next(i for i, s in enumerate(steps) if s.startswith("fault injected"))
    assert "mesh-wide drill lease released" in steps
    async with httpx.AsyncClient(trust_env=False, timeout=5) as c:
        assert (await c.get(f"{sim.mesh.node('node-b').agent_url}/drills/lease")).status_code == 404  # given back


async def test_headless_drain_refused_when_it_would_take_every_mesh_node(
    fake_nomad: FakeNomad, mesh: LocalMesh, tmp_path: Path
) -> None:
    """`x0dash drill drain` on a Nomad source: both mesh nodes on one Nomad client (a dev agent), so draining it
    leaves nobody to observe; refused before anything is written to Nomad."""
    sim = NomadSim(fake_nomad, mesh, same_host=True)
    provider = NomadProvider(env={"NOMAD_ADDR": fake_nomad.url}, events=True, resync_s=3600)
    err = io.StringIO()
    try:
        provider.start()
        preview = provider.drain_preview("node-b", 30)  # what the UI's confirmation would show
        assert "This also takes down mesh node node-a: it runs on the same Nomad node." in preview
        provider.stop()
        plan = DrillPlan(kind="drain", target="node-b", duration_s=5, deadline_s=30)
        code = await run_headless(
            provider,
            plan,
            reports_dir=tmp_path,
            report_file=None,
            as_json=True,
            poll_timeout=1.0,
            steady_timeout=20,
            out=io.StringIO(),
            err=err,
        )
    finally:
        provider.stop()
        sim.close()
    assert code == 2, err.getvalue()
    assert (
        "drill refused: draining node-b's Nomad node takes every mesh node (node-a, node-b): nobody would be "
        "left to detect it"
    ) in err.getvalue()
    assert "steady state: nodes 2/2 up" in err.getvalue()
    assert posts(fake_nomad) == []


# Live updates ---------------------------------------------------------------------------------------------------
async def test_a_nomad_event_refreshes_at_once_instead_of_at_the_next_poll(
    sim: NomadSim, fake_nomad: FakeNomad, dash: Dash
) -> None:
    provider = NomadProvider(env={"NOMAD_ADDR": fake_nomad.url}, events=True, resync_s=3600)
    app = dash(provider, interval=30)  # no poll of its own for 30 s
    async with app.run_test(size=(150, 48)) as pilot:
        await until(
            pilot,
            "first view, stream live",
            lambda: app.view is not None and provider._events is not None and provider._events.live,
        )
        poller = app.session.poller
        await until(pilot, "polling settled", lambda: poller.cycles >= 1 and not poller.busy)

        def eligibility() -> str | None:
            node = app.view.node("node-b") if app.view is not None else None
            return node.nomad.eligibility if node is not None and node.nomad is not None else None

        assert eligibility() == "eligible"
        with sim.lock:
            sim.nomad_node("node-b")["SchedulingEligibility"] = "ineligible"
            sim.serve()
        reads, cycles = len(fake_nomad.seen("GET", "/v1/nodes")), app.session.poller.cycles
        await pilot.pause(0.5)
        assert eligibility() == "eligible" and len(fake_nomad.seen("GET", "/v1/nodes")) == reads, (
            "without an event nothing re-reads Nomad before the interval"
        )
        for _ in range(5):  # a burst, as a drain produces
            sim.announce(sim.current("node-b"))
        waited = await until(pilot, "the change on screen", lambda: eligibility() == "ineligible", within=5)
        assert waited < 5  # the interval is 30 s: only the event can explain it
        await pilot.pause(0.3)
        assert app.session.source_changes >= 5
        # The burst became at most two refreshes (cycles never overlap; a burst is coalesced).
        assert 1 <= len(fake_nomad.seen("GET", "/v1/nodes")) - reads <= 2
        assert 1 <= app.session.poller.cycles - cycles <= 2


# Nomad failing --------------------------------------------------------------------------------------------------
ERRORS = [
    pytest.param(
        "GET",
        "/v1/job/x0-mesh/allocations",
        "Permission denied",
        403,
        0.0,
        'Nomad list allocations: 403 Permission denied; the token needs namespace "default" { '
        'capabilities = ["read-job"] }',
        id="403-names-the-capability",
    ),
    pytest.param(
        "GET",
        "/v1/job/x0-mesh",
        "job not found",
        404,
        0.0,
        "no job 'x0-mesh' in namespace 'default' (run `nomad job run nomad/mesh.nomad.hcl`, or pass --job)",
        id="404-job",
    ),
    pytest.param(
        "GET", "/v1/nodes", "No cluster leader", 500, 0.0, "Nomad list nodes: HTTP 500 No cluster leader", id="500"
    ),
    pytest.param("GET", "/v1/job/x0-mesh", None, 200, 1.0, "Nomad read job: no answer at", id="timeout"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "delay", "expect"), ERRORS)
async def test_nomad_errors_show_in_the_header_and_the_agents_stay_watched(
    sim: NomadSim,
    fake_nomad: FakeNomad,
    dash: Dash,
    method: str,
    path: str,
    body: str | None,
    status: int,
    delay: float,
    expect: str,
) -> None:
    settings = load_settings({"NOMAD_ADDR": fake_nomad.url}, timeout_s=0.3)
    provider = NomadProvider(settings, events=False, backoff=Backoff(0.1, 0.4))
    app = dash(provider, interval=0.15)
    async with app.run_test(size=(200, 40)) as pilot:
        await until(pilot, "mesh whole", lambda: whole(app))
        header = app.screen.query_one("#header", Static)
        fake_nomad.set(method, path, body if body is not None else shapes.job(), status=status, delay_s=delay)
        await until(pilot, "Nomad failure shown", lambda: not app.view.source_ok)
        line = header.render_header().plain
        assert expect in line and "(retrying in" in line, line
        # Nomad failing says nothing about the agents: the last known nodes are still polled, and up.
        assert app.view.nodes_healthy == 2 and isinstance(app.screen, OverviewScreen)
        sim.serve()  # Nomad answers again: retried with backoff, back to normal
        await until(pilot, "recovered", lambda: app.view.source_ok, within=10)
        assert expect not in header.render_header().plain


async def test_unreachable_nomad_and_a_refused_event_stream(
    fake_nomad: FakeNomad, dash: Dash, sim: NomadSim
) -> None:
    gone = NomadProvider(env={"NOMAD_ADDR": closed_port_url()}, events=True, backoff=Backoff(0.1, 0.4))
    app = dash(gone, interval=0.3, timeout=0.5)
    async with app.run_test(size=(200, 40)) as pilot:
        await until(pilot, "failure shown", lambda: app.view is not None and not app.view.source_ok)
        line = app.screen.query_one("#header", Static).render_header().plain
        assert "Nomad read job: cannot connect at http://127.0.0.1:" in line and "is Nomad running?" in line
        assert app.view.nodes_total == 0 and isinstance(app.screen, OverviewScreen)
        await pilot.press("question_mark")  # the UI answers
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape", "d")  # no crash, no nodes to pick
        assert isinstance(app.screen, DrillScreen)
        await pilot.press("escape")

    # Reads work but the token may not subscribe: say so, and poll Nomad instead.
    fake_nomad.stream_status = 403
    provider = NomadProvider(env={"NOMAD_ADDR": fake_nomad.url}, events=True, backoff=Backoff(0.1, 0.4))
    app = dash(provider, interval=0.3)
    async with app.run_test(size=(250, 40)) as pilot:
        await until(
            pilot,
            "stream refusal shown",
            lambda: (
                app.view is not None
                and bool(app.view.warnings)
                and app.view.warnings[0].startswith("Nomad event stream down")
            ),
        )
        line = app.screen.query_one("#header", Static).render_header().plain
        assert (
            "⚠ Nomad event stream down: Nomad event stream: 403 Permission denied; the token needs namespace "
            '"default" { capabilities = ["read-job"] } and node { policy = "read" }'
        ) in line, line
        assert "polling Nomad on every refresh" in app.view.warnings[0]
        assert app.view.source_ok
        reads = len(fake_nomad.seen("GET", "/v1/job/x0-mesh/allocations"))
        await until(
            pilot,
            "polling fallback",
            lambda: len(fake_nomad.seen("GET", "/v1/job/x0-mesh/allocations")) >= reads + 2,
        )
