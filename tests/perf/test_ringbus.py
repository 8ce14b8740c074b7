"""Tests of perf.ringbus helpers: options, child PIDs, profile summaries."""

from __future__ import annotations

import pytest

from perf.cli import PerfError
from perf.ringbus import count_samples, parse_bootstrap, summarize_collapsed


def test_parse_bootstrap_splits_host_and_port() -> None:
    assert parse_bootstrap("127.0.0.1:9092") == ("127.0.0.1", 9092)


@pytest.mark.parametrize("text", ["localhost", ":9092", "host:0", "host:port"])
def test_parse_bootstrap_rejects_when_not_host_and_port(text: str) -> None:
    with pytest.raises(PerfError, match="expected HOST:PORT"):
        parse_bootstrap(text)


def test_summarize_collapsed_ranks_functions_by_own_samples() -> None:
    text = "\n".join(
        [
            "main (a.py:1);loop (a.py:5);write (b.py:9) 60",
            "main (a.py:1);loop (a.py:5) 30",
            "main (a.py:1);loop (a.py:5);write (b.py:9) 10",
            "garbage line",
        ]
    )
    assert summarize_collapsed(text) == [
        ("write (b.py:9)", 0.7),
        ("loop (a.py:5)", 0.3),
    ]
    assert summarize_collapsed("") == []


def test_count_samples_adds_the_counts_of_every_stack() -> None:
    assert count_samples("a;b 3\na 4\nnot a sample\n") == 7
