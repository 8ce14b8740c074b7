"""Structured log lines and the rate limit for hot-path warnings."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from broker.logs import RateLimit, configure, event


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    """``configure`` changes the root logger; later tests must not see it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_event_line_has_name_and_quoted_fields(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure("INFO", "tester")
    event(logging.getLogger("t"), logging.INFO, "demo.happened", peer="a b", n=3)
    line = capsys.readouterr().err.strip()
    parts = line.split(" ", 4)
    assert parts[1:4] == ["INFO", "tester", "demo.happened"]
    assert parts[4] == 'peer="a b" n=3'


def test_rate_limit_drops_past_burst_and_reports_the_count(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    configure("INFO", "tester")
    now = [100.0]
    monkeypatch.setattr("broker.logs.time.monotonic", lambda: now[0])
    limit = RateLimit(burst=3, period_s=1.0)
    log = logging.getLogger("t")
    for _ in range(10):
        event(log, logging.WARNING, "conn.closed", rate_limit=limit)
    now[0] += 1.5
    event(log, logging.WARNING, "conn.closed", rate_limit=limit)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 4
    assert "suppressed" not in "".join(lines[:3])
    assert lines[3].endswith("suppressed=7")
