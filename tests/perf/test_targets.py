"""Tests of perf.targets: the verdicts and ratios of compare on fixed inputs."""

from __future__ import annotations

from typing import Any

from perf.targets import (
    TARGETS,
    TargetSpec,
    evaluate,
    markdown_side_by_side,
    markdown_targets,
    side_by_side,
)


def m(
    name: str,
    size: int | None,
    records_per_s: float | None = None,
    mb_per_s: float = 0.0,
    p99_us: float | None = None,
) -> dict[str, Any]:
    """A measurement document with only the fields targets read."""
    return {
        "name": name,
        "record_bytes": size,
        "records_per_s": records_per_s,
        "mb_per_s": mb_per_s,
        "latency_us": None if p99_us is None else {"p99": p99_us},
    }


FIXED = [
    m("ringbus.produce-client", 100, 900_000),
    m("redis-streams.produce", 100, 150_000),
    m("nats-jetstream.produce", 100, 20_000),
    m("nats-jetstream.produce-window", 100, 100_000),
    m("ringbus.consume-client", 100, 500_000),
    m("ringbus.consume-kcat", 100, 2_000_000, mb_per_s=200.0),
    m("ringbus.consume-raw", 100, 12_000_000, mb_per_s=1200.0),
    m("redis-streams.consume", 100, 800_000),
    m("nats-jetstream.consume", 100, 50_000),
    m("ringbus.produce-kcat", 100, 1_000_000),
    m("redis-streams.produce-native", 100, 600_000),
    m("ringbus.produce-pipelined", 100, 2_000_000, mb_per_s=200.0),
    m("machine.tcp_loopback", None, mb_per_s=2300.0),
    m("machine.pagecache_write", None, mb_per_s=380.0),
    m("machine.sendfile", None, mb_per_s=1800.0),
    m("ringbus.latency-e2e", 100, 10_000, p99_us=5_000.0),
    m("redis-streams.latency-e2e", 100, 10_000, p99_us=4_000.0),
]


def rows_by_key() -> dict[str, Any]:
    return {row.key: row for row in evaluate(FIXED, [100])}


def test_evaluate_gives_ratio_and_verdict_for_every_target_when_measured() -> None:
    rows = rows_by_key()
    assert set(rows) == {spec.key for spec in TARGETS}

    assert rows["produce_vs_redis"].ratio == 6.0
    assert rows["produce_vs_redis"].status == "met"
    # Against the stronger NATS client way: 900k / 100k.
    assert rows["produce_vs_nats"].reference == "nats-jetstream.produce-window"
    assert rows["produce_vs_nats"].ratio == 9.0
    assert rows["produce_vs_nats"].status == "missed"
    assert rows["consume_vs_redis"].ratio == 0.625
    assert rows["consume_vs_redis"].status == "missed"
    assert rows["consume_vs_nats"].ratio == 10.0
    assert rows["kcat_vs_redis_benchmark"].status == "missed"


def test_evaluate_takes_the_best_ringbus_figure_when_several_count() -> None:
    row = rows_by_key()["consume_fast_vs_redis"]
    assert row.subject == "ringbus.consume-raw"
    assert row.ratio == 15.0 and row.status == "met"


def test_evaluate_compares_with_the_lower_limit_for_any_record_size() -> None:
    row = rows_by_key()["pipelined_vs_limit"]
    assert row.reference == "machine.pagecache_write"
    assert row.ratio == 200.0 / 380.0
    assert row.status == "met"
    sendfile = rows_by_key()["consume_vs_sendfile"]
    assert sendfile.ratio == 1200.0 / 1800.0 and sendfile.status == "missed"


def test_evaluate_inverts_latency_so_above_one_is_no_worse() -> None:
    row = rows_by_key()["e2e_p99_vs_redis"]
    assert row.ratio == 4_000.0 / 5_000.0
    assert row.status == "missed"
    faster = [*FIXED[:-2], m("ringbus.latency-e2e", 100, p99_us=2_000.0), FIXED[-1]]
    again = {r.key: r for r in evaluate(faster, [100])}["e2e_p99_vs_redis"]
    assert again.ratio == 2.0 and again.status == "met"


def test_evaluate_leaves_a_target_not_measured_when_a_side_is_missing() -> None:
    rows = evaluate([m("ringbus.produce-client", 100, 1.0)], [100, 1024])
    assert {r.status for r in rows} == {"not measured"}
    assert all(r.ratio is None for r in rows)
    assert len(rows) == 2 * len(TARGETS)


def test_evaluate_matches_record_sizes_when_several_are_measured() -> None:
    spec = TargetSpec("x", "x", ("ringbus.a",), ("peer.a",), "records_per_s", 2.0)
    documents = [
        m("ringbus.a", 100, 300.0),
        m("peer.a", 100, 100.0),
        m("ringbus.a", 1024, 100.0),
        m("peer.a", 1024, 100.0),
    ]
    rows = evaluate(documents, [100, 1024], [spec])
    assert [(r.record_bytes, r.ratio, r.status) for r in rows] == [
        (100, 3.0, "met"),
        (1024, 1.0, "missed"),
    ]


def test_markdown_targets_prints_one_row_per_verdict() -> None:
    text = markdown_targets(evaluate(FIXED, [100]))
    lines = text.strip().splitlines()
    assert len(lines) == 2 + len(TARGETS)
    assert "| 6.00x | 3x | met |" in text
    assert "0.80x | 1x | missed |" in text


def test_side_by_side_puts_each_system_in_its_column_with_ratios() -> None:
    rows = {r["workload"]: r for r in side_by_side(FIXED, [100])}
    produce = rows["produce (client library)"]
    assert (produce["ringbus"], produce["redis"], produce["nats"]) == (
        900_000,
        150_000,
        100_000,
    )
    assert produce["ratio_redis"] == 6.0 and produce["ratio_nats"] == 9.0
    latency = rows["end-to-end p99 at fixed rate"]
    assert latency["ratio_redis"] == 0.8
    assert rows["produce (pipelined 64 KiB batches)"]["redis"] is None
    text = markdown_side_by_side(list(rows.values()))
    assert "| produce (client library) | 100 B | 900,000/s | 150,000/s |" in text
