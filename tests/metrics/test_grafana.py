"""The Grafana dashboard (metrics/grafana/ringbus.json): importable JSON whose
every query names only series the broker exports, with their labels."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from metrics.prometheus import FAMILIES, series_names

DASHBOARD = Path(__file__).resolve().parents[2] / "metrics" / "grafana" / "ringbus.json"

KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job"}


def labels_by_series() -> dict[str, set[str]]:
    labels = {}
    for family in FAMILIES:
        for name in series_names(family):
            extra = {"le"} if name.endswith("_bucket") else set()
            labels[name] = set(family.labels) | extra | TARGET_LABELS
    return labels


EXPORTED = labels_by_series()


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def expressions() -> Iterator[str]:
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            yield target["expr"]


AGGREGATIONS = {
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}


def tokens(expr: str) -> list[tuple[str, str]]:
    """PromQL tokens as (kind, text): ident, matcher ({...}), punct; strings,
    numbers and ranges ([5m]) are dropped."""
    found: list[tuple[str, str]] = []
    i = 0
    while i < len(expr):
        c = expr[i]
        if c.isspace():
            i += 1
        elif c in "\"'`":
            end = i + 1
            while expr[end] != c:
                end += 2 if expr[end] == "\\" else 1
            i = end + 1
        elif c == "[":
            i = expr.index("]", i) + 1
        elif c == "{":
            end = i
            while expr[end] != "}":
                if expr[end] in "\"'":
                    quote, end = expr[end], end + 1
                    while expr[end] != quote:
                        end += 2 if expr[end] == "\\" else 1
                end += 1
            found.append(("matcher", expr[i : end + 1]))
            i = end + 1
        elif c.isalpha() or c in "_:":
            match = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr[i:])
            assert match is not None
            found.append(("ident", match.group()))
            i += match.end()
        elif c.isdigit() or c == ".":
            # A number, or a duration (offset 5m).
            match = re.match(r"[0-9.]+(?:e[+-]?[0-9]+)?(?:ms|[smhdwy])?", expr[i:])
            assert match is not None
            i += match.end()
        else:
            found.append(("punct", c))
            i += 1
    return found


def parse(expr: str) -> tuple[list[tuple[str, set[str]]], set[str]]:
    """Series selectors (metric name, label names in its matcher) and the
    labels named in by/without/on/ignoring groupings."""
    items = tokens(expr)
    selected: list[tuple[str, set[str]]] = []
    grouped: set[str] = set()
    i = 0
    while i < len(items):
        kind, text = items[i]
        following = items[i + 1] if i + 1 < len(items) else ("", "")
        if kind == "ident" and text in GROUPING:
            i += 1
            if following == ("punct", "("):
                close = items.index(("punct", ")"), i)
                grouped.update(t for k, t in items[i + 1 : close] if k == "ident")
                i = close + 1
            continue
        if kind == "ident" and text.lower() not in KEYWORDS:
            is_call = following == ("punct", "(")
            is_aggregation = text in AGGREGATIONS and following[1] in GROUPING
            if not is_call and not is_aggregation:
                labels: set[str] = set()
                if following[0] == "matcher":
                    labels = set(
                        re.findall(
                            r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)",
                            re.sub(r'"(?:[^"\\]|\\.)*"', '""', following[1]),
                        )
                    )
                selected.append((text, labels))
        i += 1
    return selected, grouped


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    return parse(expr)[0]


def groupings(expr: str) -> set[str]:
    return parse(expr)[1]


def test_selectors_parse_names_labels_and_skip_functions() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, api) (rate(ringbus_x_bucket"
        '{instance=~"$instance", api!="a,}b"}[$__rate_interval])))'
        " / on (job) max without (le) (ringbus_y_total offset 5m) > 1e3"
    )

    assert selectors(expr) == [
        ("ringbus_x_bucket", {"instance", "api"}),
        ("ringbus_y_total", set()),
    ]
    assert groupings(expr) == {"le", "api", "job"}


def test_dashboard_is_importable_json_with_a_datasource_variable() -> None:
    document = dashboard()

    assert document["title"] == "Ringbus"
    assert document["uid"]
    variables = {v["name"]: v for v in document["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in document["panels"]]
    assert len(ids) == len(set(ids))
    for panel in document["panels"]:
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys()
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
            assert panel["targets"], panel["title"]


@pytest.mark.parametrize("expr", list(expressions()))
def test_dashboard_queries_name_only_exported_series_and_labels(expr: str) -> None:
    found = selectors(expr)

    assert found, f"no series in {expr!r}"
    names = {name for name, _ in found}
    unknown = names - EXPORTED.keys()
    assert not unknown, f"{expr!r} names series the broker does not export: {unknown}"
    for name, labels in found:
        assert labels <= EXPORTED[name], (
            f"{name} has no labels {labels - EXPORTED[name]}"
        )
    available = set().union(*(EXPORTED[name] for name in names))
    assert groupings(expr) <= available, expr


@pytest.mark.parametrize("expr", list(expressions()))
def test_dashboard_takes_rates_of_counters_only(expr: str) -> None:
    for function, name in re.findall(r"\b(rate|increase|irate)\(\s*(\w+)", expr):
        assert name.endswith(("_total", "_bucket")), f"{function}({name}) in {expr!r}"


def test_dashboard_covers_the_interface_charts() -> None:
    used = {name for expr in expressions() for name, _ in selectors(expr)}

    for required in (
        "ringbus_produce_records_total",
        "ringbus_fetch_bytes_total",
        "ringbus_request_latency_seconds_bucket",
        "ringbus_consumer_group_lag_records",
        "ringbus_process_cpu_seconds_total",
        "ringbus_process_resident_memory_bytes",
        "ringbus_ring_fill_ratio",
        "ringbus_fsync_seconds_bucket",
    ):
        assert required in used, required
