"""The subcommand registry and the shared run/report flow."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from perf.__main__ import COMMANDS
from perf.cli import Command, PerfError, RunContext, build_parser, main
from perf.harness import ManualClock
from perf.report import Measurement, RunResult, load_json


def _command(outcome: RunResult | Exception) -> Command:
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--records", type=int, default=10)

    def run(args: argparse.Namespace, context: RunContext) -> RunResult:
        if isinstance(outcome, Exception):
            raise outcome
        context.progress.phase("fake", args.records).advance(args.records)
        return outcome

    return Command("fake", "a fake command", "fake", add_arguments, run)


def _one_measurement() -> RunResult:
    return RunResult(
        measurements=[
            Measurement("x.produce", "x", "produce", 10, 1000, 1.0, record_bytes=100)
        ]
    )


@pytest.mark.parametrize("name", [c.name for c in COMMANDS])
def test_every_subcommand_has_help_with_the_common_options(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser(COMMANDS).parse_args([name, "--help"])

    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert f"python -m perf {name}" in text
    for option in ("--out", "--no-plot", "--no-progress", "--seconds"):
        assert option in text


def test_registry_holds_every_perf_command() -> None:
    assert [c.name for c in COMMANDS] == [
        "limits",
        "peers",
        "produce",
        "consume",
        "latency",
        "compare",
        "scale",
    ]


def test_main_writes_a_valid_result_file_and_returns_zero(tmp_path: Path) -> None:
    code = main(
        ["fake", "--records", "5", "--out", str(tmp_path), "--name", "r", "--no-plot"],
        [_command(_one_measurement())],
        clock=ManualClock(),
    )

    assert code == 0
    document = load_json(tmp_path / "r.json")
    assert document["command"] == "fake"
    assert document["measurements"][0]["records_per_s"] == 10.0
    assert not (tmp_path / "r.png").exists()


def test_main_returns_one_and_keeps_the_file_when_the_result_has_errors(
    tmp_path: Path,
) -> None:
    result = _one_measurement()
    result.errors.append("nats: server would not start")

    code = main(
        ["fake", "--out", str(tmp_path), "--name", "r", "--no-plot"],
        [_command(result)],
    )

    assert code == 1
    assert load_json(tmp_path / "r.json")["errors"] == ["nats: server would not start"]


def test_main_returns_one_and_writes_nothing_when_the_command_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["fake", "--out", str(tmp_path), "--name", "r"],
        [_command(PerfError("count mismatch: 9 of 10"))],
    )

    assert code == 1
    assert "count mismatch: 9 of 10" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["limits", "--bytes", "lots"], "not a size: 'lots'"),
        (["limits", "--seconds", "0"], "must be > 0"),
        (["limits", "--repeat", "0"], "must be >= 1"),
        (["peers", "--sizes", "100,big"], "not a size: 'big'"),
        (["peers", "--records", "many"], "not an integer"),
    ],
)
def test_bad_options_exit_two_with_a_clear_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv, COMMANDS)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
