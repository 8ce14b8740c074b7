"""The subcommand registry and the shared run/report flow."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from perf.__main__ import COMMANDS
from perf.cli import (
    Command,
    PerfError,
    RunContext,
    add_acks_argument,
    add_partitions_argument,
    add_rate_argument,
    add_record_bytes_argument,
    add_records_argument,
    add_seconds_argument,
    add_sizes_argument,
    add_systems_argument,
    add_topic_argument,
    build_parser,
    main,
)
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
        "hops",
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


def _shared_options_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_record_bytes_argument(parser)
    add_partitions_argument(parser)
    add_records_argument(parser, 500, "records per run")
    add_seconds_argument(parser, 2.5, "time bound per phase")
    add_rate_argument(parser, None, "records/s")
    add_acks_argument(parser, "acks while filling")
    add_topic_argument(parser, "perf-x")
    add_sizes_argument(parser)
    add_systems_argument(parser, ("redis", "nats"))
    return parser


def test_shared_option_builders_keep_each_callers_default_and_help() -> None:
    parser = _shared_options_parser()

    args = parser.parse_args([])

    assert vars(args) == {
        "record_bytes": 100,
        "partitions": 1,
        "records": 500,
        "seconds": 2.5,
        "rate": None,
        "acks": 1,
        "topic": "perf-x",
        "sizes": [100, 1024],
        "systems": "redis,nats",
    }
    helps = {a.dest: a.help for a in parser._actions}
    assert helps["records"] == "records per run"
    assert helps["seconds"] == "time bound per phase"
    assert helps["acks"] == "acks while filling"
    assert helps["topic"] == "topic name prefix"
    assert helps["systems"] == "subset of redis,nats"


def test_shared_option_builders_parse_sizes_counts_and_choices() -> None:
    parser = _shared_options_parser()

    args = parser.parse_args(
        [
            "--record-bytes=1KiB",
            "--partitions=3",
            "--records=1_000",
            "--seconds=0.5",
            "--rate=250",
            "--acks=-1",
            "--sizes=100,2KiB",
        ]
    )

    assert args.record_bytes == 1024
    assert args.partitions == 3
    assert args.records == 1000
    assert args.seconds == 0.5
    assert args.rate == 250.0
    assert args.acks == -1
    assert args.sizes == [100, 2048]


@pytest.mark.parametrize(
    "bad",
    ["--seconds=0", "--records=0", "--partitions=-1", "--acks=2", "--rate=x"],
)
def test_shared_option_builders_refuse_bad_values(bad: str) -> None:
    with pytest.raises(argparse.ArgumentError):
        _shared_options_parser().parse_args([bad])
