"""FetchPath.wake: a fault while re-evaluating one parked fetch closes that
fetch's connection only; the other parked fetches are still answered.

The evaluation itself (``_build``) and the answer (``_answer``) are replaced
here: what is under test is the loop over parked fetches, which the fuzz
test reaches only when some other fault happens to occur."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from net.fetch import Built, FetchPath, ParkedFetch


class _Connection:
    def __init__(self, name: str) -> None:
        self.peer = name
        self.closed = False
        self.close_reasons: list[str] = []

    def close(self, reason: str, level: int = logging.WARNING) -> None:
        self.closed = True
        self.close_reasons.append(reason)


def _parked(connection: _Connection, tag: str) -> ParkedFetch:
    return ParkedFetch(
        connection,  # type: ignore[arg-type]
        header=None,  # type: ignore[arg-type]
        body={"tag": tag, "min_bytes": 1},
        context=None,  # type: ignore[arg-type]
        slot=None,  # type: ignore[arg-type]
        deadline=10**9,
        started_ns=0,
    )


def _fetch_path(parked: list[ParkedFetch]) -> FetchPath:
    # Only what wake() touches; the constructor needs a whole net process.
    path = FetchPath.__new__(FetchPath)
    path.parked = parked
    path.timer = None
    path.parked_gauge = np.zeros(4, np.int64)
    path.c_parked = 0
    return path


def test_a_fault_in_one_parked_fetch_fails_only_its_connection(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    first, broken, last = _Connection("a"), _Connection("b"), _Connection("c")
    path = _fetch_path([_parked(first, "a"), _parked(broken, "b"), _parked(last, "c")])
    answered: list[str] = []

    def build(context: Any, body: dict[str, Any]) -> Built:
        if body["tag"] == "b":
            raise KeyError("relative_offset")
        return Built([], [], 10, 1)

    def answer(connection: Any, *args: Any) -> None:
        answered.append(connection.peer)

    monkeypatch.setattr(path, "_build", build)
    monkeypatch.setattr(path, "_answer", answer)

    with caplog.at_level(logging.ERROR):
        path.wake()

    assert answered == ["a", "c"]
    assert broken.close_reasons == ["internal error"]
    assert not first.closed and not last.closed
    assert path.parked == []
    assert path.parked_gauge[0] == 0
    assert "fetch.failed" in caplog.text


def test_a_fetch_still_short_of_min_bytes_stays_parked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waiting = _Connection("w")
    path = _fetch_path([_parked(waiting, "w")])
    scheduled: list[float] = []
    monkeypatch.setattr(path, "_build", lambda context, body: Built([], [], 0, 0))
    monkeypatch.setattr(path, "_schedule_timer", lambda: scheduled.append(1.0))

    path.wake()

    assert [p.connection for p in path.parked] == [waiting]
    assert path.parked_gauge[0] == 1
    assert scheduled == [1.0]
