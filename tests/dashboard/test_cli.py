"""x0dash's command line: source selection, option errors, help (no mesh needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dashboard.cli import build_parser, build_provider, build_slo, main
from dashboard.providers.base import ProviderError
from dashboard.providers.inventory import InventoryProvider
from dashboard.providers.local import LocalProvider


def test_default_source_is_a_local_mesh_of_three_unless_nomad_addr() -> None:
    p = build_provider(build_parser().parse_args([]), env={})
    assert isinstance(p, LocalProvider) and p.nodes == 3
    p = build_provider(
        build_parser().parse_args(["--local", "5", "--mode", "loopback"]),
        env={"NOMAD_ADDR": "http://127.0.0.1:4646"},
    )
    assert isinstance(p, LocalProvider) and (p.nodes, p.mode) == (5, "loopback")
    nomad = build_provider(build_parser().parse_args([]), env={"NOMAD_ADDR": "http://127.0.0.1:4646"})
    assert nomad.name == "nomad"


def test_source_options_before_or_after_drill() -> None:
    for argv in (
        ["--inventory", "inv.json", "drill", "blackhole", "--target", "node-b"],
        ["drill", "blackhole", "--target", "node-b", "--inventory", "inv.json"],
    ):
        args = build_parser().parse_args(argv)
        p = build_provider(args, env={})
        assert isinstance(p, InventoryProvider) and p.path == Path("inv.json")
        assert (args.kind, args.target, args.duration) == ("blackhole", "node-b", 10)
    args = build_parser().parse_args(
        ["--detect-slo", "0.5", "drill", "partition", "--target", "a", "--repair-slo", "3"]
    )
    slo = build_slo(args)
    assert (slo.detect_s, slo.repair_s, slo.recover_timeout_s) == (0.5, 3.0, 60.0)


def test_conflicting_sources_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ProviderError, match="choose one source, not --local and --inventory"):
        build_provider(build_parser().parse_args(["--local", "3", "--inventory", "x.json"]), env={})
    with pytest.raises(ProviderError, match="--job applies to the Nomad source only"):
        build_provider(build_parser().parse_args(["--inventory", "x.json", "--job", "j"]), env={})
    assert main(["--local", "2", "--inventory", "x.json"]) == 2
    assert "choose one source" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--local", "0"], "node count must be 1..26"),
        (["drill", "blackhole", "--target", "a", "--duration", "601"], "duration (s) must be 1..600"),
        (["drill", "meteor", "--target", "a"], "invalid choice: 'meteor'"),
        (["drill", "blackhole"], "the following arguments are required: --target"),
        (["--interval", "-1"], "must be > 0"),
    ],
)
def test_bad_options_name_the_problem(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_help_answers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    for needle in (
        "--local N",
        "--inventory FILE",
        "NOMAD_ADDR",
        "enter node detail",
        "ctrl+p",
        "exit status: 0",
        "X0_API_TOKEN",
        "x0dash drill blackhole --target node-b",
    ):
        assert needle in out


def test_headless_drill_against_a_missing_inventory_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "--inventory",
            str(tmp_path / "nope.json"),
            "--reports-dir",
            str(tmp_path),
            "drill",
            "blackhole",
            "--target",
            "node-b",
        ]
    )
    assert code == 3
    assert "the source could not start" in capsys.readouterr().err


def test_headless_drill_with_an_unreachable_nomad_exits_3_cannot_connect(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Issue 12 item 6: this said "drill refused: no node 'node-b' (nodes: none)" and exited 2.
    from .conftest import closed_port

    addr = f"http://127.0.0.1:{closed_port()}"
    code = main(["--nomad", addr, "--reports-dir", str(tmp_path), "drill", "blackhole", "--target", "node-b"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "the source could not start" in err and "cannot connect" in err.lower() and addr in err
    assert "drill refused" not in err
    assert not any(tmp_path.iterdir())  # nothing measured, nothing saved
