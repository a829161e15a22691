"""x0dash's command line: source selection, option errors, help (no mesh needed)."""

from __future__ import annotations

import re
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
        (["--interval", "nan"], "not a finite number: 'nan'"),
        (["drill", "blackhole", "--target", "a", "--settle", "-1"], "must be >= 0, got -1"),
        (["drill", "blackhole", "--target", "a", "--settle", "soon"], "not a number: 'soon'"),
        (["drill", "blackhole", "--target", "a", "--settle", "inf"], "not a finite number: 'inf'"),
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


# Issue 12 item 7 -------------------------------------------------------------------------------------------------
def test_version_and_a_usage_that_does_not_require_drill(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("x0dash 0.")
    usage = build_parser().format_usage()
    assert "x0dash [options]  " in usage and "drill KIND --target NODE" in usage
    assert not re.search(r"\] drill \.\.\.", usage)  # the dashboard needs no subcommand
    with pytest.raises(SystemExit):
        build_parser().parse_args(["drill", "--help"])
    assert capsys.readouterr().out.startswith("usage: x0dash drill [-h] --target NODE")


def test_report_file_alone_writes_only_that_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dashboard.cli import _headless_reports_dir
    from dashboard.drills.report import from_json, save

    from .record_fixtures import REPORT_FILE

    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["drill", "blackhole", "--target", "node-b", "--report", "out/r.md"])
    assert _headless_reports_dir(args) is None
    report = from_json(REPORT_FILE.read_bytes())
    assert save(report, _headless_reports_dir(args), args.report) == [Path("out/r.md")]
    assert sorted(str(p) for p in tmp_path.rglob("*") if p.is_file()) == [str(tmp_path / "out/r.md")]
    both = build_parser().parse_args(
        ["--reports-dir", "keep", "drill", "blackhole", "--target", "b", "--report", "x"]
    )
    assert _headless_reports_dir(both) == Path("keep")
    no_file = build_parser().parse_args(["drill", "blackhole", "--target", "b"])
    assert _headless_reports_dir(no_file) is not None  # without --report the pair goes to the default dir


def test_help_screen_names_every_exit_code() -> None:
    from dashboard.screens.help import HELP

    for code in ("0 pass", "1 an SLO failed", "2 refused", "3 the source could not start"):
        assert code in HELP


def test_local_source_keeps_its_logs_after_stop(require_yggdrasil: str) -> None:
    # `--local` deleted the mesh's run dir on quit, and with it a failed drill's agent.log.
    provider = LocalProvider(1, mode="loopback")
    try:
        provider.start()
        assert provider.kept_run_dir is None
    finally:
        provider.stop()
    kept = provider.kept_run_dir
    assert kept is not None
    try:
        logs = list(kept.rglob("agent.log"))
        assert logs and "starting" in logs[0].read_text()
    finally:
        import shutil

        shutil.rmtree(kept, ignore_errors=True)
