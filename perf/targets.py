"""The comparison targets of ``compare``: which figure against which, and the verdict.

A target says: Ringbus's best figure among some measurements, divided by a
reference figure (the strongest peer, or the lower machine limit), must be
at least ``required``. Latency targets divide the other way (reference
p99 / Ringbus p99), so a ratio of 1.0 or more is "no worse".

Everything here works on measurement documents (``Measurement.to_json()``
dicts, as stored in a result file), so a verdict can be recomputed from a
JSON file and tested on fixed inputs. Pure functions; imported by
``perf.compare`` and tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Metric = Literal["records_per_s", "mb_per_s", "p99_us"]
Pick = Literal["max", "min"]


@dataclass(frozen=True)
class TargetSpec:
    """One target. ``subjects`` and ``references`` are measurement names;
    the best subject counts, and the reference picked by ``reference_pick``
    (``max``: the strongest peer; ``min``: the lower limit)."""

    key: str
    label: str
    subjects: tuple[str, ...]
    references: tuple[str, ...]
    metric: Metric
    required: float
    reference_pick: Pick = "max"
    # Limits have no record size: compare every size against them.
    reference_sized: bool = True


@dataclass(frozen=True)
class TargetRow:
    """The verdict of one target at one record size."""

    key: str
    label: str
    record_bytes: int
    subject: str | None
    subject_value: float | None
    reference: str | None
    reference_value: float | None
    ratio: float | None
    required: float
    metric: Metric

    @property
    def status(self) -> str:
        if self.ratio is None:
            return "not measured"
        return "met" if self.ratio >= self.required else "missed"

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "record_bytes": self.record_bytes,
            "subject": self.subject,
            "subject_value": self.subject_value,
            "reference": self.reference,
            "reference_value": self.reference_value,
            "ratio": self.ratio,
            "required": self.required,
            "metric": self.metric,
            "status": self.status,
        }


R = "ringbus"
REDIS = "redis-streams"
NATS = "nats-jetstream"

TARGETS: tuple[TargetSpec, ...] = (
    TargetSpec(
        "produce_vs_redis",
        "produce (confluent-kafka) >= 3x Redis XADD pipeline",
        (f"{R}.produce-client",),
        (f"{REDIS}.produce",),
        "records_per_s",
        3.0,
    ),
    TargetSpec(
        "produce_vs_nats",
        "produce (confluent-kafka) >= 10x NATS acked publish (best client way)",
        (f"{R}.produce-client",),
        (f"{NATS}.produce", f"{NATS}.produce-window"),
        "records_per_s",
        10.0,
    ),
    TargetSpec(
        "consume_vs_redis",
        "consume (confluent-kafka) >= 1x Redis XREAD",
        (f"{R}.consume-client",),
        (f"{REDIS}.consume",),
        "records_per_s",
        1.0,
    ),
    TargetSpec(
        "consume_vs_nats",
        "consume (confluent-kafka) >= 3x NATS pull",
        (f"{R}.consume-client",),
        (f"{NATS}.consume",),
        "records_per_s",
        3.0,
    ),
    TargetSpec(
        "consume_fast_vs_redis",
        "consume (kcat or raw pipelined fetch) >= 3x Redis XREAD",
        (f"{R}.consume-kcat", f"{R}.consume-raw"),
        (f"{REDIS}.consume",),
        "records_per_s",
        3.0,
    ),
    TargetSpec(
        "kcat_vs_redis_benchmark",
        "kcat produce >= 5x redis-benchmark XADD (-c 50 -P 100)",
        (f"{R}.produce-kcat",),
        (f"{REDIS}.produce-native",),
        "records_per_s",
        5.0,
    ),
    TargetSpec(
        "pipelined_vs_limit",
        "pipelined 64 KiB produce >= 50% of min(loopback TCP, page-cache write)",
        (f"{R}.produce-pipelined",),
        ("machine.tcp_loopback", "machine.pagecache_write"),
        "mb_per_s",
        0.5,
        reference_pick="min",
        reference_sized=False,
    ),
    TargetSpec(
        "consume_vs_sendfile",
        "consume (raw or kcat) >= 70% of raw sendfile",
        (f"{R}.consume-raw", f"{R}.consume-kcat"),
        ("machine.sendfile",),
        "mb_per_s",
        0.7,
        reference_sized=False,
    ),
    TargetSpec(
        "e2e_p99_vs_redis",
        "end-to-end p99 at 10,000 records/s no worse than Redis Streams",
        (f"{R}.latency-e2e",),
        (f"{REDIS}.latency-e2e",),
        "p99_us",
        1.0,
    ),
)


def metric_value(measurement: dict[str, Any], metric: Metric) -> float | None:
    """The figure a target compares, from a measurement document."""
    if metric == "p99_us":
        latency = measurement.get("latency_us")
        return None if latency is None else float(latency["p99"])
    value = measurement.get(metric)
    return None if value is None else float(value)


def _candidates(
    measurements: Iterable[dict[str, Any]],
    names: Sequence[str],
    record_bytes: int | None,
    metric: Metric,
) -> list[tuple[str, float]]:
    found = []
    for m in measurements:
        if m["name"] not in names:
            continue
        if record_bytes is not None and m["record_bytes"] != record_bytes:
            continue
        value = metric_value(m, metric)
        if value is not None and value > 0:
            found.append((str(m["name"]), value))
    return found


def evaluate(
    measurements: Sequence[dict[str, Any]],
    sizes: Sequence[int],
    targets: Sequence[TargetSpec] = TARGETS,
) -> list[TargetRow]:
    """One row per target and record size; a side not measured leaves the
    row ``not measured`` (never a guessed figure)."""
    rows = []
    for size in sizes:
        for spec in targets:
            subjects = _candidates(measurements, spec.subjects, size, spec.metric)
            references = _candidates(
                measurements,
                spec.references,
                size if spec.reference_sized else None,
                spec.metric,
            )
            latency = spec.metric == "p99_us"

            # The best Ringbus figure: highest throughput, lowest latency.
            subject = (
                (min if latency else max)(subjects, key=lambda c: c[1])
                if subjects
                else None
            )
            pick = min if spec.reference_pick == "min" else max
            if latency:
                # The strongest reference latency is the lowest one.
                pick = min
            reference = pick(references, key=lambda c: c[1]) if references else None

            ratio = None
            if subject is not None and reference is not None:
                ratio = (
                    reference[1] / subject[1] if latency else subject[1] / reference[1]
                )
            rows.append(
                TargetRow(
                    key=spec.key,
                    label=spec.label,
                    record_bytes=size,
                    subject=subject[0] if subject else None,
                    subject_value=subject[1] if subject else None,
                    reference=reference[0] if reference else None,
                    reference_value=reference[1] if reference else None,
                    ratio=ratio,
                    required=spec.required,
                    metric=spec.metric,
                )
            )
    return rows


def format_value(value: float | None, metric: Metric) -> str:
    if value is None:
        return "-"
    if metric == "records_per_s":
        return f"{value:,.0f}/s"
    if metric == "mb_per_s":
        return f"{value:,.1f} MB/s"
    return f"{value / 1000:,.2f} ms" if value >= 10_000 else f"{value:,.0f} us"


def markdown_targets(rows: Sequence[TargetRow]) -> str:
    """The verdict table for RESULTS.md."""
    lines = [
        "| target | size | Ringbus | reference | ratio | needed | verdict |",
        "|---|---:|---|---|---:|---:|---|",
    ]
    for row in rows:
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}x"
        subject = (
            "-"
            if row.subject is None
            else f"{format_value(row.subject_value, row.metric)} ({row.subject})"
        )
        reference = (
            "-"
            if row.reference is None
            else f"{format_value(row.reference_value, row.metric)} ({row.reference})"
        )
        lines.append(
            f"| {row.label} | {row.record_bytes} B | {subject} | {reference} | "
            f"{ratio} | {row.required:g}x | {row.status} |"
        )
    return "\n".join(lines) + "\n"


_SIDE_BY_SIDE = (
    # label, Ringbus measurement, Redis measurement, NATS measurement(s)
    (
        "produce (client library)",
        "produce-client",
        "produce",
        ("produce", "produce-window"),
    ),
    ("produce (native tool)", "produce-kcat", "produce-native", ()),
    ("consume (client library)", "consume-client", "consume", ("consume",)),
    ("consume (kcat)", "consume-kcat", "consume", ("consume",)),
    ("consume (raw pipelined fetch)", "consume-raw", "consume", ("consume",)),
    ("produce (pipelined 64 KiB batches)", "produce-pipelined", None, ()),
    ("end-to-end p99 at fixed rate", "latency-e2e", "latency-e2e", ()),
)


def _best(
    measurements: Sequence[dict[str, Any]],
    names: Sequence[str],
    size: int,
    metric: Metric,
) -> float | None:
    """The best figure among ``names`` at ``size``: highest throughput,
    lowest latency."""
    found = [v for _n, v in _candidates(measurements, names, size, metric)]
    if not found:
        return None
    return min(found) if metric == "p99_us" else max(found)


def _ratio(ours: float | None, peer: float | None, metric: Metric) -> float | None:
    """Ringbus over peer; for latency peer over Ringbus (above 1: better)."""
    if ours is None or peer is None:
        return None
    return peer / ours if metric == "p99_us" else ours / peer


def side_by_side(
    measurements: Sequence[dict[str, Any]], sizes: Sequence[int]
) -> list[dict[str, Any]]:
    """Workload rows with each system's figure in its own column, plus the
    Ringbus/peer ratios (records/s; p99 for latency, peer / Ringbus)."""
    rows = []
    for size in sizes:
        for label, ringbus, redis, nats in _SIDE_BY_SIDE:
            metric: Metric = (
                "p99_us" if ringbus.startswith("latency") else "records_per_s"
            )
            ours = _best(measurements, (f"{R}.{ringbus}",), size, metric)
            theirs_redis = (
                _best(measurements, (f"{REDIS}.{redis}",), size, metric)
                if redis
                else None
            )
            theirs_nats = (
                _best(measurements, [f"{NATS}.{n}" for n in nats], size, metric)
                if nats
                else None
            )
            rows.append(
                {
                    "workload": label,
                    "record_bytes": size,
                    "metric": metric,
                    "ringbus": ours,
                    "redis": theirs_redis,
                    "nats": theirs_nats,
                    "ratio_redis": _ratio(ours, theirs_redis, metric),
                    "ratio_nats": _ratio(ours, theirs_nats, metric),
                }
            )
    return rows


def markdown_side_by_side(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| workload | size | Ringbus | Redis Streams | NATS JetStream "
        "| Ringbus / Redis | Ringbus / NATS |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        metric = row["metric"]

        def ratio(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f}x"

        lines.append(
            f"| {row['workload']} | {row['record_bytes']} B | "
            f"{format_value(row['ringbus'], metric)} | "
            f"{format_value(row['redis'], metric)} | "
            f"{format_value(row['nats'], metric)} | "
            f"{ratio(row['ratio_redis'])} | {ratio(row['ratio_nats'])} |"
        )
    lines.append("")
    lines.append(
        "Ratios are Ringbus / peer in records/s; for p99 latency they are "
        "peer / Ringbus, so above 1 is better for Ringbus either way. NATS "
        "produce is the better of its two acked-publish clients."
    )
    return "\n".join(lines) + "\n"
