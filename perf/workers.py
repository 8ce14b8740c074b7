"""Load-generating child processes: start together, report back, merge.

A multi-process load generator runs one function per process
(``spawn``), each with its own plan. The protocol over each process's pipe:

    child -> parent   "ready"            (connected, frames built)
    parent -> child   start_ns            (one CLOCK_MONOTONIC time for all)
    child -> parent   WorkerResult        (counts, histogram, timeline)

Every child starts its timed loop at the same ``start_ns``, so their
throughput series share one time grid and add up interval by interval.
Every wait here is bounded; a child that does not answer in time is
terminated by its own handle (its PID) and reported as an error.

Imported by the load-generating process and, through the worker
functions' modules, by its children.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from perf.harness import NANOS_PER_SECOND, LatencyHistogram, TimelinePoint

PlanT = TypeVar("PlanT")

READY = "ready"


@dataclass
class WorkerResult:
    """What one load-generating process did."""

    records: int = 0
    value_bytes: int = 0
    wire_bytes: int = 0
    started_ns: int = 0
    finished_ns: int = 0
    histogram: str | None = None
    timeline: list[tuple[float, float, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop_reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class MergedResult:
    """All processes of one phase together."""

    records: int
    value_bytes: int
    wire_bytes: int
    seconds: float
    histogram: LatencyHistogram | None
    timeline: list[TimelinePoint]
    errors: list[str]
    stop_reasons: list[str]
    extras: list[dict[str, Any]]


def report_outcome(
    work: Callable[[PlanT, Connection], WorkerResult], plan: PlanT, control: Connection
) -> None:
    """Child process entry: send the parent ``work``'s result, or the error
    that stopped it (the parent fails the run with it)."""
    try:
        result = work(plan, control)
    except Exception as exc:
        result = WorkerResult(errors=[f"{type(exc).__name__}: {exc}"])
    control.send(result)


def wait_for_start(control: Connection, timeout_s: float = 120.0) -> int:
    """Child side: say ready, then wait for the common start time."""
    control.send(READY)
    if not control.poll(timeout_s):
        raise TimeoutError(f"no start time from the parent within {timeout_s} s")
    start_ns = control.recv()
    if not isinstance(start_ns, int):
        raise TypeError(f"start time must be an int, got {start_ns!r}")
    return start_ns


def merge_timelines(
    timelines: Sequence[Sequence[tuple[float, float, float]]],
) -> list[TimelinePoint]:
    """Add per-process series point by point (they share one time grid)."""
    length = max((len(t) for t in timelines), default=0)
    merged = []
    for index in range(length):
        points = [t[index] for t in timelines if index < len(t)]
        merged.append(
            TimelinePoint(
                t_s=max(p[0] for p in points),
                records_per_s=sum(p[1] for p in points),
                bytes_per_s=sum(p[2] for p in points),
            )
        )
    return merged


def merge_results(results: Sequence[WorkerResult], start_ns: int) -> MergedResult:
    histogram: LatencyHistogram | None = None
    for result in results:
        if result.histogram is not None:
            part = LatencyHistogram.decode(result.histogram)
            if histogram is None:
                histogram = part
            else:
                histogram.merge(part)
    finished = max((r.finished_ns for r in results), default=start_ns)
    return MergedResult(
        records=sum(r.records for r in results),
        value_bytes=sum(r.value_bytes for r in results),
        wire_bytes=sum(r.wire_bytes for r in results),
        seconds=max(finished - start_ns, 1) / NANOS_PER_SECOND,
        histogram=histogram,
        timeline=merge_timelines([r.timeline for r in results]),
        errors=[e for r in results for e in r.errors],
        stop_reasons=[r.stop_reason for r in results],
        extras=[r.extra for r in results],
    )


def run_workers(
    target: Callable[[Any, Connection], None],
    plans: Sequence[Any],
    timeout_s: float,
    ready_timeout_s: float = 120.0,
) -> tuple[int, list[WorkerResult]]:
    """Run ``target(plan, control)`` in one process per plan; returns the
    common start time and each process's result (a failed or silent
    process gives a result holding only its error)."""
    context = multiprocessing.get_context("spawn")
    children = []
    for plan in plans:
        parent_end, child_end = context.Pipe()
        process = context.Process(target=target, args=(plan, child_end), daemon=True)
        process.start()
        child_end.close()
        children.append((process, parent_end))

    results: list[WorkerResult | None] = [None] * len(children)
    try:
        # Everyone connected and built before the clock starts.
        for index, (process, pipe) in enumerate(children):
            message = pipe.recv() if pipe.poll(ready_timeout_s) else None
            if message != READY:
                results[index] = (
                    message
                    if isinstance(message, WorkerResult)
                    else WorkerResult(
                        errors=[
                            f"worker {index} (pid {process.pid}) was not ready "
                            f"within {ready_timeout_s} s"
                        ]
                    )
                )
        if any(r is not None for r in results):
            start_ns = time.monotonic_ns()
            for index, (_process, pipe) in enumerate(children):
                if results[index] is None:
                    # A closed pipe ends the child's wait for a start time
                    # with EOFError, so the ready ones stop at once.
                    pipe.close()
            return start_ns, [
                r or WorkerResult(errors=["not started"]) for r in results
            ]

        start_ns = time.monotonic_ns() + 50_000_000
        for _process, pipe in children:
            pipe.send(start_ns)

        deadline = time.monotonic() + timeout_s
        for index, (process, pipe) in enumerate(children):
            left = max(deadline - time.monotonic(), 0.1)
            message = pipe.recv() if pipe.poll(left) else None
            if isinstance(message, WorkerResult):
                results[index] = message
            else:
                results[index] = WorkerResult(
                    errors=[
                        f"worker {index} (pid {process.pid}) sent no result "
                        f"within {timeout_s} s"
                    ]
                )
        return start_ns, [r for r in results if r is not None]
    finally:
        for process, pipe in children:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
            pipe.close()
