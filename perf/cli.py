"""The perf command line: the subcommand registry and the shared run/report flow.

A subcommand is a ``Command``: a name, help text, a function that adds its
own options, and a function that runs it and returns a ``RunResult``. This
module adds the options every subcommand shares (output directory, progress,
plot, log level), holds the builders of options several subcommands take
(``--records``, ``--seconds``, ``--acks``...), runs the command, then writes
the JSON result, draws the PNG and prints the table - so a new load
generator (``produce``, ``consume``, ``latency`` against Ringbus) is one
module exposing a ``COMMAND`` and one line in ``perf/__main__.py``.

Exit codes: 0 when the run finished (skipped peers included), 2 for bad
options (argparse), 1 when a command raised ``PerfError`` (no result file)
or finished with errors in its ``RunResult`` (result file written).

Imported by ``perf/__main__.py`` and by tests.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from broker import logs
from perf.harness import Clock, MonotonicClock, parse_size
from perf.report import (
    LiveProgress,
    RunResult,
    machine_info,
    plot_png,
    result_document,
    results_table,
    utc_now_iso,
    write_json,
)

DEFAULT_OUT = Path("perf/results")


class PerfError(RuntimeError):
    """A run could not produce its figures (a server failed, a count did not
    match); the message says which and why."""


@dataclass
class RunContext:
    """What a command gets besides its options."""

    progress: LiveProgress
    clock: Clock
    argv: list[str]


@dataclass(frozen=True)
class Command:
    """One ``python -m perf <name>`` subcommand."""

    name: str
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, RunContext], RunResult]


def size_argument(text: str) -> int:
    """argparse type for byte sizes (``100``, ``1KiB``, ``256MiB``)."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def size_list_argument(text: str) -> list[int]:
    """argparse type for comma-separated byte sizes (``100,1KiB``)."""
    return [size_argument(part) for part in text.split(",") if part.strip()]


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


# -- options several subcommands take -------------------------------------------
# Each builder fixes an option's name and type once; the default and help stay
# with the subcommand, since they say what the option bounds there.


def add_record_bytes_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--record-bytes", type=size_argument, default="100", help="record value size"
    )


def add_partitions_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--partitions", type=positive_int, default=1, help="partitions of the topic"
    )


def add_sizes_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes",
        type=size_list_argument,
        default="100,1KiB",
        help="record value sizes, comma-separated",
    )


def add_systems_argument(
    parser: argparse.ArgumentParser, systems: Sequence[str]
) -> None:
    names = ",".join(systems)
    parser.add_argument("--systems", default=names, help=f"subset of {names}")


def add_records_argument(
    parser: argparse.ArgumentParser, default: int, help: str
) -> None:
    parser.add_argument("--records", type=positive_int, default=default, help=help)


def add_seconds_argument(
    parser: argparse.ArgumentParser, default: float, help: str
) -> None:
    parser.add_argument("--seconds", type=positive_float, default=default, help=help)


def add_rate_argument(
    parser: argparse.ArgumentParser, default: float | None, help: str
) -> None:
    parser.add_argument("--rate", type=positive_float, default=default, help=help)


def add_acks_argument(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--acks", type=int, choices=(-1, 0, 1), default=1, help=help)


def add_topic_argument(
    parser: argparse.ArgumentParser, default: str, help: str = "topic name prefix"
) -> None:
    parser.add_argument("--topic", default=default, help=help)


def _add_common_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="directory for the JSON result and PNG plot (default: %(default)s)",
    )
    group.add_argument(
        "--name",
        default=None,
        help="file name stem for the outputs (default: <command>-<UTC time>)",
    )
    group.add_argument("--no-plot", action="store_true", help="do not draw the PNG")
    group.add_argument(
        "--no-progress", action="store_true", help="no live progress bar"
    )
    group.add_argument(
        "--log-level",
        default="WARNING",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="log level for server lifecycle events (default: %(default)s)",
    )


class _HelpFormatter(
    argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter
):
    """Defaults shown after each option; the description kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        # An option without a default explains its own fallback in its help.
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser(commands: Sequence[Command]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m perf",
        description="Ringbus load generators, machine limits and peer comparisons.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in commands:
        sub = subparsers.add_parser(
            command.name,
            help=command.help,
            description=command.description,
            formatter_class=_HelpFormatter,
        )
        command.add_arguments(sub)
        _add_common_arguments(sub)
    return parser


def main(
    argv: Sequence[str], commands: Sequence[Command], clock: Clock | None = None
) -> int:
    """Parse ``argv``, run the chosen command, write its outputs."""
    parser = build_parser(commands)
    args = parser.parse_args(list(argv))
    command = next(c for c in commands if c.name == args.command)
    logs.configure(args.log_level, "perf")

    stem = args.name or (
        f"{command.name}-"
        f"{datetime.datetime.now(datetime.UTC).strftime('%Y%m%dT%H%M%SZ')}"
    )
    json_path = args.out / f"{stem}.json"
    png_path = args.out / f"{stem}.png"

    started_at = utc_now_iso()
    progress_console = Console(stderr=True, soft_wrap=True)
    load = os.getloadavg()
    progress_console.print(
        f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
        f"on {os.cpu_count()} CPUs",
        highlight=False,
    )
    with LiveProgress(
        enabled=not args.no_progress, console=progress_console
    ) as progress:
        context = RunContext(
            progress=progress, clock=clock or MonotonicClock(), argv=list(argv)
        )
        try:
            result = command.run(args, context)
        except PerfError as exc:
            progress.note(f"[bold red]perf {command.name} failed:[/] {exc}")
            return 1
    finished_at = utc_now_iso()

    machine = machine_info()
    machine["load_average_start"] = list(load)
    document = result_document(
        command.name, list(argv), result, started_at, finished_at, machine
    )
    write_json(json_path, document)
    drawn = False
    if not args.no_plot:
        title = f"perf {command.name} ({started_at})"
        if result.plot is not None:
            drawn = result.plot(png_path, title)
        else:
            drawn = plot_png(png_path, result, title)

    # The table goes to stdout, wide enough not to fold when piped to a file.
    out = Console(width=None if sys.stdout.isatty() else 160)
    out.print(results_table(result, f"perf {command.name}"))
    for text in result.text:
        out.print(text, markup=False, highlight=False)
    for skipped in result.skipped:
        progress.note(f"skipped {skipped.name}: {skipped.reason}")
    for error in result.errors:
        progress.note(f"[bold red]error:[/] {error}")
    progress.note(f"result: {json_path}" + (f"  plot: {png_path}" if drawn else ""))
    return 1 if result.errors else 0


def run_from_command_line(commands: Sequence[Command]) -> None:
    sys.exit(main(sys.argv[1:], commands))
