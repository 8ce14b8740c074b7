"""What a perf run reports: measurements, the JSON result file, table, plot, progress.

Every subcommand returns a ``RunResult``; ``perf.cli`` turns it into the three
outputs, so a new load generator only builds ``Measurement`` objects.

Units: MB/s and GB/s are decimal (10**6 and 10**9 bytes per second); latency
is in microseconds; ``records_per_s`` is absent (``null``) for byte-stream
measurements such as memcpy.

JSON result file (``RESULT_SCHEMA``; ``validate_result`` checks it)::

    {"schema": "ringbus.perf.result/1", "command": str, "argv": [str],
     "started_at": ISO-8601 UTC, "finished_at": ISO-8601 UTC,
     "machine": {"load_average": [1, 5, 15 min], "nproc": int,
                 "memory_bytes": int, "cpu_model": str, "kernel": str,
                 "python": str},
     "measurements": [
        {"name": str, "system": str, "workload": str,
         "record_bytes": int | null, "records": int, "bytes": int,
         "seconds": float, "records_per_s": float | null,
         "mb_per_s": float, "gb_per_s": float,
         "latency_us": null | {"count", "min", "mean", "p50", "p90", "p99",
                               "p99_9", "max", "clamped"},
         "timeline": [{"t_s", "records_per_s", "mb_per_s"}],
         "params": {...}, "note": str}],
     "skipped": [{"name": str, "reason": str}],
     "errors": [str],
     "summary": {...}}            (optional: derived figures, e.g. compare's
                                  target verdicts)

Imported by the load-generating process only. The progress bar draws from a
background thread owned by rich; everything else is single-threaded.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from perf.harness import FixedRateReport, LatencySummary, TimelinePoint

RESULT_SCHEMA = "ringbus.perf.result/1"


@dataclass
class Measurement:
    """One figure of a run: a workload against one system at one record size."""

    name: str
    system: str
    workload: str
    records: int
    bytes: int
    seconds: float
    record_bytes: int | None = None
    latency: LatencySummary | None = None
    timeline: list[TimelinePoint] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def records_per_s(self) -> float | None:
        if self.record_bytes is None:
            return None
        return self.records / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0

    @property
    def gb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e9 if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        latency = None
        if self.latency is not None:
            lat = self.latency
            latency = {
                "count": lat.count,
                "min": lat.min_us,
                "mean": lat.mean_us,
                "p50": lat.p50_us,
                "p90": lat.p90_us,
                "p99": lat.p99_us,
                "p99_9": lat.p99_9_us,
                "max": lat.max_us,
                "clamped": lat.clamped,
            }
        return {
            "name": self.name,
            "system": self.system,
            "workload": self.workload,
            "record_bytes": self.record_bytes,
            "records": self.records,
            "bytes": self.bytes,
            "seconds": self.seconds,
            "records_per_s": self.records_per_s,
            "mb_per_s": self.mb_per_s,
            "gb_per_s": self.gb_per_s,
            "latency_us": latency,
            "timeline": [
                {
                    "t_s": p.t_s,
                    "records_per_s": p.records_per_s,
                    "mb_per_s": p.bytes_per_s / 1e6,
                }
                for p in self.timeline
            ],
            "params": self.params,
            "note": self.note,
        }


def records_measurement(
    name: str,
    system: str,
    workload: str,
    record_bytes: int,
    records: int,
    seconds: float,
    *,
    timeline: list[TimelinePoint] | None = None,
    params: dict[str, Any] | None = None,
    note: str = "",
) -> Measurement:
    """A figure of ``records`` values of ``record_bytes`` each; its bytes are
    the values' total (not what crossed the wire)."""
    return Measurement(
        name=name,
        system=system,
        workload=workload,
        record_bytes=record_bytes,
        records=records,
        bytes=records * record_bytes,
        seconds=seconds,
        timeline=timeline if timeline is not None else [],
        params=params if params is not None else {},
        note=note,
    )


def latency_measurements(
    system: str,
    record_bytes: int,
    report: FixedRateReport,
    end_to_end: LatencySummary,
    ack: LatencySummary,
    timeline: list[TimelinePoint],
    params: dict[str, Any],
    notes: tuple[str, str],
) -> list[Measurement]:
    """The two figures of one fixed-rate run: ``<system>.latency-e2e`` (send
    to receipt by the consumer) and ``<system>.latency-ack`` (send to the
    producer's acknowledgement); ``notes`` describe each, in that order."""
    common: dict[str, Any] = {
        "system": system,
        "workload": "latency",
        "record_bytes": record_bytes,
        "records": report.records,
        "bytes": report.records * record_bytes,
        "seconds": report.seconds,
        "params": params,
    }
    return [
        Measurement(
            name=f"{system}.latency-e2e",
            latency=end_to_end,
            timeline=timeline,
            note=notes[0],
            **common,
        ),
        Measurement(name=f"{system}.latency-ack", latency=ack, note=notes[1], **common),
    ]


@dataclass(frozen=True)
class Skipped:
    """A measurement that could not run here, and why."""

    name: str
    reason: str


@dataclass
class RunResult:
    """Everything one subcommand measured."""

    measurements: list[Measurement] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    # Failures that cost some figures but not the whole run (one peer's
    # server would not start, say); any entry makes the command exit 1.
    errors: list[str] = field(default_factory=list)
    # Derived figures (compare's verdicts), written as "summary" in the JSON.
    summary: dict[str, Any] = field(default_factory=dict)
    # Text printed after the table (compare's side-by-side in Markdown).
    text: list[str] = field(default_factory=list)
    # Draws the PNG instead of ``plot_png`` (path, title) -> drawn.
    plot: Callable[[Path, str], bool] | None = None


def machine_info() -> dict[str, Any]:
    """nproc, memory, CPU model and kernel, read from /proc where Linux has it."""
    cpu_model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_bytes = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_bytes = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    return {
        # Other work on a shared machine bends every figure; the load
        # average when the result is written says how busy it was.
        "load_average": list(os.getloadavg()),
        "nproc": os.cpu_count() or 0,
        "memory_bytes": memory_bytes,
        "cpu_model": cpu_model,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def utc_now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def result_document(
    command: str,
    argv: list[str],
    result: RunResult,
    started_at: str,
    finished_at: str,
    machine: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON result document of one run."""
    return {
        "schema": RESULT_SCHEMA,
        "command": command,
        "argv": list(argv),
        "started_at": started_at,
        "finished_at": finished_at,
        "machine": machine if machine is not None else machine_info(),
        "measurements": [m.to_json() for m in result.measurements],
        "skipped": [{"name": s.name, "reason": s.reason} for s in result.skipped],
        "errors": list(result.errors),
        **({"summary": result.summary} if result.summary else {}),
    }


class ResultSchemaError(ValueError):
    """A result document does not match ``RESULT_SCHEMA``; ``problems`` lists
    every mismatch as ``"<path>: <what is wrong>"``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid perf result: " + "; ".join(problems))
        self.problems = problems


_NUMBER = (int, float)
_TOP_FIELDS: dict[str, tuple[type, ...]] = {
    "schema": (str,),
    "command": (str,),
    "argv": (list,),
    "started_at": (str,),
    "finished_at": (str,),
    "machine": (dict,),
    "measurements": (list,),
    "skipped": (list,),
    "errors": (list,),
}
_MACHINE_FIELDS: dict[str, tuple[type, ...]] = {
    "load_average": (list,),
    "nproc": (int,),
    "memory_bytes": (int,),
    "cpu_model": (str,),
    "kernel": (str,),
    "python": (str,),
}
_MEASUREMENT_FIELDS: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "system": (str,),
    "workload": (str,),
    "record_bytes": (int, type(None)),
    "records": (int,),
    "bytes": (int,),
    "seconds": _NUMBER,
    "records_per_s": (*_NUMBER, type(None)),
    "mb_per_s": _NUMBER,
    "gb_per_s": _NUMBER,
    "latency_us": (dict, type(None)),
    "timeline": (list,),
    "params": (dict,),
    "note": (str,),
}
_LATENCY_FIELDS = ("count", "min", "mean", "p50", "p90", "p99", "p99_9", "max")
_TIMELINE_FIELDS = ("t_s", "records_per_s", "mb_per_s")


def _check_fields(
    where: str,
    obj: dict[str, Any],
    fields: dict[str, tuple[type, ...]],
    problems: list[str],
) -> None:
    for name, types in fields.items():
        if name not in obj:
            problems.append(f"{where}.{name}: missing")
        elif isinstance(obj[name], bool) or not isinstance(obj[name], types):
            wanted = " or ".join(t.__name__ for t in types)
            problems.append(
                f"{where}.{name}: expected {wanted}, got {type(obj[name]).__name__}"
            )


def validate_result(document: Any) -> None:
    """Raise ``ResultSchemaError`` unless ``document`` is a valid result."""
    problems: list[str] = []
    if not isinstance(document, dict):
        raise ResultSchemaError(
            [f"$: expected an object, got {type(document).__name__}"]
        )
    _check_fields("$", document, _TOP_FIELDS, problems)
    if document.get("schema") not in (None, RESULT_SCHEMA) and isinstance(
        document.get("schema"), str
    ):
        problems.append(
            f"$.schema: expected {RESULT_SCHEMA!r}, got {document['schema']!r}"
        )
    if isinstance(document.get("machine"), dict):
        _check_fields("$.machine", document["machine"], _MACHINE_FIELDS, problems)

    for index, item in enumerate(document.get("measurements") or []):
        where = f"$.measurements[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: expected an object")
            continue
        _check_fields(where, item, _MEASUREMENT_FIELDS, problems)
        latency = item.get("latency_us")
        if isinstance(latency, dict):
            for name in _LATENCY_FIELDS:
                if not isinstance(latency.get(name), _NUMBER):
                    problems.append(
                        f"{where}.latency_us.{name}: missing or not a number"
                    )
        for point_index, point in enumerate(item.get("timeline") or []):
            for name in _TIMELINE_FIELDS:
                if not isinstance(point, dict) or not isinstance(
                    point.get(name), _NUMBER
                ):
                    problems.append(
                        f"{where}.timeline[{point_index}].{name}: "
                        "missing or not a number"
                    )

    for index, item in enumerate(document.get("skipped") or []):
        if not (
            isinstance(item, dict)
            and isinstance(item.get("name"), str)
            and isinstance(item.get("reason"), str)
        ):
            problems.append(f"$.skipped[{index}]: expected {{name: str, reason: str}}")

    for index, item in enumerate(document.get("errors") or []):
        if not isinstance(item, str):
            problems.append(f"$.errors[{index}]: expected str")

    if problems:
        raise ResultSchemaError(problems)


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Validate, then write atomically (a reader never sees half a file)."""
    validate_result(document)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(partial, path)


def load_json(path: Path) -> dict[str, Any]:
    """Read and validate a result file."""
    document = json.loads(path.read_text())
    validate_result(document)
    assert isinstance(document, dict)
    return document


def _si(value: float) -> str:
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


def _us(value: float) -> str:
    return f"{value / 1000:.2f} ms" if value >= 10_000 else f"{value:.0f} us"


def results_table(result: RunResult, title: str) -> Table:
    """The final table; a column appears only if some row has a value for it."""
    rows = result.measurements
    has_records = any(m.records_per_s is not None for m in rows)
    has_streams = any(m.records_per_s is None for m in rows)
    has_latency = any(m.latency is not None for m in rows)
    table = Table(title=title)
    table.add_column("measurement")
    table.add_column("size", justify="right")
    if has_records:
        table.add_column("records", justify="right")
    table.add_column("seconds", justify="right")
    if has_records:
        table.add_column("records/s", justify="right")
    table.add_column("MB/s", justify="right")
    if has_streams:
        table.add_column("GB/s", justify="right")
    if has_latency:
        for label in ("p50", "p99", "p99.9", "max"):
            table.add_column(label, justify="right")

    for m in rows:
        cells = [m.name, f"{m.record_bytes} B" if m.record_bytes else ""]
        if has_records:
            cells.append(f"{m.records:,}" if m.record_bytes is not None else "")
        cells.append(f"{m.seconds:.2f}")
        if has_records:
            rate = m.records_per_s
            cells.append(_si(rate) if rate is not None else "")
        cells.append(f"{m.mb_per_s:,.1f}")
        if has_streams:
            cells.append(f"{m.gb_per_s:.3f}")
        if has_latency:
            lat = m.latency
            if lat is None:
                cells += ["", "", "", ""]
            else:
                cells += [
                    _us(lat.p50_us),
                    _us(lat.p99_us),
                    _us(lat.p99_9_us),
                    _us(lat.max_us),
                ]
        table.add_row(*cells)
    return table


def markdown_table(document: dict[str, Any]) -> str:
    """A result document's figures as a Markdown table, for RESULTS.md."""
    lines = [
        "| measurement | size | records | seconds | records/s | MB/s | GB/s "
        "| p50 | p99 | p99.9 | max |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in document["measurements"]:
        rate = m["records_per_s"]
        lat = m["latency_us"]
        lat_cells = (
            ["", "", "", ""]
            if lat is None
            else [_us(lat["p50"]), _us(lat["p99"]), _us(lat["p99_9"]), _us(lat["max"])]
        )
        cells = [
            m["name"],
            f"{m['record_bytes']} B" if m["record_bytes"] else "",
            f"{m['records']:,}" if m["record_bytes"] is not None else "",
            f"{m['seconds']:.2f}",
            f"{rate:,.0f}" if rate is not None else "",
            f"{m['mb_per_s']:,.1f}",
            f"{m['gb_per_s']:.3f}",
            *lat_cells,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    for s in document["skipped"]:
        lines.append(f"| {s['name']} | skipped: {s['reason']} |" + " |" * 9)
    return "\n".join(lines) + "\n"


def _label(m: Measurement) -> str:
    return f"{m.name} {m.record_bytes} B" if m.record_bytes else m.name


def plot_png(path: Path, result: RunResult, title: str) -> bool:
    """Throughput over time and latency percentiles as one PNG.

    Returns False (and writes nothing) when there is nothing to draw.
    """
    with_timeline = [m for m in result.measurements if len(m.timeline) >= 1]
    with_latency = [m for m in result.measurements if m.latency is not None]
    if not with_timeline and not with_latency:
        return False

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = int(bool(with_timeline)) + int(bool(with_latency))
    figure, axes = plt.subplots(panels, 1, figsize=(10, 4.5 * panels), squeeze=False)
    figure.suptitle(title)
    panel = 0

    if with_timeline:
        axis = axes[panel][0]
        panel += 1
        # Record workloads are drawn in records/s, byte streams in GB/s.
        by_records = all(m.record_bytes is not None for m in with_timeline)
        # One line style per system, so repeated colours stay apart.
        systems = sorted({m.system for m in with_timeline})
        styles = ["-", "--", ":", "-."]
        for m in with_timeline:
            style = styles[systems.index(m.system) % len(styles)]
            xs = [p.t_s for p in m.timeline]
            ys = [
                p.records_per_s if by_records else p.bytes_per_s / 1e9
                for p in m.timeline
            ]
            axis.plot(xs, ys, linestyle=style, marker=".", label=_label(m))
        axis.set_xlabel("seconds since the measurement started")
        axis.set_ylabel("records/s" if by_records else "GB/s")
        axis.set_title("throughput over time")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize="small")

    if with_latency:
        axis = axes[panel][0]
        labels = ["p50", "p90", "p99", "p99.9", "max"]
        for m in with_latency:
            lat = m.latency
            assert lat is not None
            values = [lat.p50_us, lat.p90_us, lat.p99_us, lat.p99_9_us, lat.max_us]
            axis.plot(
                labels, [max(v, 1e-3) for v in values], marker="o", label=_label(m)
            )
        axis.set_yscale("log")
        axis.set_ylabel("latency (us, from intended send time)")
        axis.set_title("latency percentiles")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize="small")

    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


class _RateColumn(ProgressColumn):
    """Current rate over the last couple of seconds, in the task's unit."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "rec")
        if speed is None:
            return Text(f"- {unit}/s")
        return Text(f"{_si(speed)} {unit}/s")


class Phase:
    """One progress line; ``advance`` is cheap enough to call per batch."""

    def __init__(self, progress: Progress | None, task: TaskID | None) -> None:
        self._progress = progress
        self._task = task

    def advance(self, amount: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=amount)

    def finish(self) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.stop_task(self._task)


class LiveProgress:
    """The live progress bar (rich), on stderr; a no-op when disabled.

    Enabled only on a terminal unless forced, so logs and CI output keep
    one line per finished phase (``note``) and no redraw noise.
    """

    def __init__(self, enabled: bool, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal
        self._progress: Progress | None = None

    def __enter__(self) -> LiveProgress:
        if self.enabled:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                _RateColumn(),
                TimeElapsedColumn(),
                console=self.console,
                refresh_per_second=4,
                speed_estimate_period=2.0,
            )
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def phase(self, description: str, total: int, unit: str = "rec") -> Phase:
        if self._progress is None:
            return Phase(None, None)
        return Phase(
            self._progress, self._progress.add_task(description, total=total, unit=unit)
        )

    def note(self, text: str) -> None:
        """One line that stays: a phase's outcome or a skip."""
        self.console.print(text, highlight=False)
