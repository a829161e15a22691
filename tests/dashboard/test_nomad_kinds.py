"""The Nomad-only drills (restart-alloc, drain) are offered only by a source that makes them: not on the drills
screen of another source, refused by the headless command with a reason, and their options parsed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from textual.widgets import Button, RadioButton

from dashboard.app import X0Dash
from dashboard.cli import build_parser, main
from dashboard.drills.engine import DrillPlan, describe
from dashboard.providers.base import NomadPlacement, Provider
from dashboard.providers.inventory import InventoryProvider
from dashboard.providers.nomad import NomadProvider
from dashboard.screens.drills import DrillScreen

from .conftest import closed_port, until


def write_inventory(path: Path) -> Path:
    doc = {
        "mesh": "dead",
        "mode": "loopback",
        "api_token": "t0k",
        "links": [["node-a", "node-b"]],
        "nodes": [{"id": f"node-{c}", "agent_url": f"http://127.0.0.1:{closed_port()}"} for c in "ab"],
    }
    path.write_text(json.dumps(doc))
    path.chmod(0o600)
    return path


def test_which_sources_make_the_nomad_kinds(tmp_path: Path) -> None:
    assert InventoryProvider(tmp_path / "x.json").source_drill_kinds == ()
    assert Provider.replaces_lost_nodes is False
    nomad = NomadProvider(env={"NOMAD_ADDR": "http://127.0.0.1:4646"}, events=False)
    assert nomad.source_drill_kinds == ("restart-alloc", "drain") and nomad.replaces_lost_nodes


async def test_drills_screen_of_another_source_offers_no_nomad_kinds(tmp_path: Path) -> None:
    app = X0Dash(
        InventoryProvider(write_inventory(tmp_path / "inv.json")), interval=0.3, timeout=0.3, reports_dir=tmp_path
    )
    async with app.run_test(size=(140, 40)) as pilot:
        await until(pilot, "first poll", lambda: app.view is not None)
        await pilot.press("d")
        screen = app.screen
        assert isinstance(screen, DrillScreen)
        kinds = [b.id for b in screen.query(RadioButton)]
        assert kinds == ["kind-blackhole", "kind-partition", "kind-node-loss", "kind-leader-loss"]
        assert screen.query_one("#undo-drain", Button).display is False
        assert screen.check_action("undo_drain", ()) is False  # `u` neither shown nor run
        assert not any(w.display for w in screen.query(".drain-field, .restart-field"))


def test_headless_nomad_kind_against_another_source_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inv = write_inventory(tmp_path / "inv.json")
    code = main(["--inventory", str(inv), "--reports-dir", str(tmp_path), "drill", "drain", "--target", "node-b"])
    assert code == 2
    assert (
        "drain drills need a Nomad source (--nomad or NOMAD_ADDR); the inventory source cannot make them"
        in capsys.readouterr().err
    )


def test_drill_options_for_the_nomad_kinds(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["drill", "drain", "--target", "node-b", "--deadline", "90"])
    assert (args.kind, args.deadline, args.task) == ("drain", 90, None)
    args = build_parser().parse_args(["drill", "restart-alloc", "--target", "node-b", "--task", "yggdrasil"])
    assert (args.kind, args.deadline, args.task) == ("restart-alloc", 30, "yggdrasil")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["drill", "drain", "--target", "node-b", "--deadline", "0"])
    assert "drain deadline (s) must be 1..3600, got 0" in capsys.readouterr().err


def test_confirmation_texts_say_what_nomad_will_do() -> None:
    p = NomadPlacement(
        alloc_id="0123456789ab",
        alloc_name="x0-mesh.node[1]",
        client_status="running",
        desired_status="run",
        node_id="feedface-0000",
        node_name="client-2",
    )
    stop = describe(DrillPlan(kind="node-loss", target="node-b", duration_s=5), via_source=True, placement=p)
    assert stop.startswith("Nomad stops node-b's allocation 01234567 (x0-mesh.node[1]) on Nomad node client-2")
    assert (
        "the fault lasts until the replacement's agent is healthy (repair is timed from then); waited for at "
        "most 5 s plus the recovery timeout"
    ) in stop
    restart = DrillPlan(kind="restart-alloc", target="node-b", task="yggdrasil")
    one = describe(restart, via_source=True, placement=p)
    assert one.startswith("Nomad restarts task yggdrasil of node-b's allocation 01234567")
    drain = describe(
        DrillPlan(kind="drain", target="node-b", duration_s=20),
        via_source=True,
        placement=p,
        preview="Nomad node client-2 … deadline of 30 s",
    )
    assert drain.startswith("Nomad node client-2 … deadline of 30 s\n\nThe drain stays on for 20 s")
    assert "undone automatically (also on abort with a; u undoes it at any time)" in drain
