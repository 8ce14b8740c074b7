"""The result file schema, the tables and the plot."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from perf.harness import LatencyHistogram, TimelinePoint
from perf.report import (
    RESULT_SCHEMA,
    LiveProgress,
    Measurement,
    ResultSchemaError,
    RunResult,
    Skipped,
    load_json,
    machine_info,
    markdown_table,
    plot_png,
    records_measurement,
    result_document,
    validate_result,
    write_json,
)


def _result() -> RunResult:
    histogram = LatencyHistogram()
    for micros in (100, 200, 300, 4000):
        histogram.record_ns(micros * 1000)
    return RunResult(
        measurements=[
            Measurement(
                name="redis-streams.produce",
                system="redis-streams",
                workload="produce",
                record_bytes=100,
                records=1000,
                bytes=100_000,
                seconds=0.5,
                timeline=[TimelinePoint(0.25, 2000.0, 200_000.0)],
                params={"pipeline": 1000},
            ),
            Measurement(
                name="redis-streams.latency-e2e",
                system="redis-streams",
                workload="latency",
                record_bytes=100,
                records=4,
                bytes=400,
                seconds=2.0,
                latency=histogram.summary(),
            ),
            Measurement(
                name="machine.memcpy",
                system="machine",
                workload="memcpy",
                records=0,
                bytes=3 * 10**9,
                seconds=1.5,
            ),
        ],
        skipped=[Skipped("nats", "nats-server is not installed")],
    )


def _document() -> dict[str, Any]:
    return result_document(
        "peers", ["peers", "--records", "1000"], _result(), "t0", "t1"
    )


def test_measurement_derives_rates_from_counts_and_seconds() -> None:
    produce, _, memcpy = _result().measurements

    assert produce.records_per_s == 2000.0
    assert produce.mb_per_s == pytest.approx(0.2)
    assert memcpy.records_per_s is None
    assert memcpy.gb_per_s == pytest.approx(2.0)


def test_result_document_round_trips_through_the_json_file(tmp_path: Path) -> None:
    path = tmp_path / "out" / "run.json"

    write_json(path, _document())
    loaded = load_json(path)

    assert loaded["schema"] == RESULT_SCHEMA
    assert loaded["argv"] == ["peers", "--records", "1000"]
    assert loaded["skipped"] == [
        {"name": "nats", "reason": "nats-server is not installed"}
    ]
    produce, latency, memcpy = loaded["measurements"]
    assert produce["records_per_s"] == 2000.0
    assert produce["timeline"] == [
        {"t_s": 0.25, "records_per_s": 2000.0, "mb_per_s": 0.2}
    ]
    assert latency["latency_us"]["count"] == 4
    assert latency["latency_us"]["max"] == pytest.approx(4000, rel=1e-3)
    assert memcpy["records_per_s"] is None
    assert memcpy["latency_us"] is None
    assert not list(tmp_path.glob("out/*.partial"))


def test_machine_info_reads_nproc_memory_and_cpu_model() -> None:
    info = machine_info()
    assert info["nproc"] >= 1
    assert info["memory_bytes"] > 0
    assert info["cpu_model"]


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda d: d.pop("machine"), "$.machine: missing"),
        (lambda d: d.update(schema="other/9"), "$.schema: expected"),
        (
            lambda d: d["measurements"][0].pop("seconds"),
            "$.measurements[0].seconds: missing",
        ),
        (
            lambda d: d["measurements"][0].update(records="many"),
            "$.measurements[0].records: expected int, got str",
        ),
        (
            lambda d: d["measurements"][0].update(records=True),
            "$.measurements[0].records: expected int, got bool",
        ),
        (
            lambda d: d["measurements"][1]["latency_us"].pop("p99_9"),
            "$.measurements[1].latency_us.p99_9: missing",
        ),
        (
            lambda d: d["measurements"][0]["timeline"][0].pop("t_s"),
            "$.measurements[0].timeline[0].t_s: missing",
        ),
        (lambda d: d["skipped"].append({"name": 1}), "$.skipped[1]: expected"),
        (lambda d: d["machine"].pop("cpu_model"), "$.machine.cpu_model: missing"),
    ],
)
def test_validate_result_names_the_path_of_each_problem(
    mutate: Any, problem: str
) -> None:
    document = copy.deepcopy(_document())
    validate_result(document)
    mutate(document)

    with pytest.raises(ResultSchemaError) as caught:
        validate_result(document)

    assert any(p.startswith(problem) for p in caught.value.problems), caught.value


def test_write_json_refuses_an_invalid_document_and_writes_nothing(
    tmp_path: Path,
) -> None:
    document = _document()
    del document["measurements"]

    with pytest.raises(ResultSchemaError, match="measurements: missing"):
        write_json(tmp_path / "run.json", document)
    assert not (tmp_path / "run.json").exists()


def test_load_json_rejects_a_file_that_is_not_a_result(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(ResultSchemaError, match="expected an object"):
        load_json(path)


def test_markdown_table_has_a_row_per_measurement_and_skip() -> None:
    text = markdown_table(_document())
    lines = text.strip().splitlines()

    assert len(lines) == 2 + 3 + 1
    assert lines[2].startswith(
        "| redis-streams.produce | 100 B | 1,000 | 0.50 | 2,000 |"
    )
    # p50 200 us; max 4000 us within the histogram's 0.1 %.
    assert re.search(r"\| 200 us \| .* \| 400\d us \|$", lines[3]), lines[3]
    assert "skipped: nats-server is not installed" in lines[5]


def test_plot_png_draws_throughput_and_latency(tmp_path: Path) -> None:
    path = tmp_path / "plot.png"

    assert plot_png(path, _result(), "test")

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_png_draws_nothing_without_timeline_or_latency(tmp_path: Path) -> None:
    path = tmp_path / "plot.png"
    assert not plot_png(path, RunResult(), "empty")
    assert not path.exists()


def test_live_progress_when_disabled_accepts_calls_and_draws_nothing() -> None:
    with LiveProgress(enabled=False) as progress:
        phase = progress.phase("x", 10)
        phase.advance(5)
        phase.finish()
    assert not progress.enabled


def test_records_measurement_counts_bytes_as_records_times_value_size() -> None:
    params = {"topic": "t"}
    timeline = [TimelinePoint(0.5, 1000.0, 100_000.0)]

    m = records_measurement(
        "ringbus.consume-kcat",
        "ringbus",
        "consume",
        100,
        2000,
        2.0,
        timeline=timeline,
        params=params,
        note="kcat",
    )

    assert m == Measurement(
        name="ringbus.consume-kcat",
        system="ringbus",
        workload="consume",
        record_bytes=100,
        records=2000,
        bytes=200_000,
        seconds=2.0,
        timeline=timeline,
        params=params,
        note="kcat",
    )
    # The caller's dict is the measurement's: later notes land in the result.
    assert m.params is params
    assert m.records_per_s == 1000.0


def test_records_measurement_gives_each_figure_its_own_empty_fields() -> None:
    first = records_measurement("a", "x", "produce", 10, 1, 1.0)
    second = records_measurement("b", "x", "produce", 10, 1, 1.0)

    first.params["broker"] = "here"
    first.timeline.append(TimelinePoint(0.0, 1.0, 10.0))

    assert (first.bytes, first.note, first.latency) == (10, "", None)
    assert second.params == {}
    assert second.timeline == []
