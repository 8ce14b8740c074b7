"""Notifier: eventfd wake-ups within a process and through pass_fds."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from shm.notify import Notifier
from tests.shm.support import Peers


def test_notifier_wait_returns_true_when_notified() -> None:
    with Notifier.create() as notifier:
        notifier.notify()
        assert notifier.wait(1.0) is True
        assert notifier.drain() == 0


def test_notifier_wait_returns_false_when_timeout_passes() -> None:
    with Notifier.create() as notifier:
        started = time.monotonic()
        assert notifier.wait(0.05) is False
        assert time.monotonic() - started >= 0.04


def test_notifier_drain_counts_and_clears_when_notified_repeatedly() -> None:
    with Notifier.create() as notifier:
        for _ in range(3):
            notifier.notify()
        assert notifier.drain() == 3
        assert notifier.drain() == 0
        assert notifier.wait(0) is False


def test_notifier_rejects_fd_when_not_eventfd() -> None:
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(ValueError, match="not an eventfd"):
            Notifier(read_end)
    finally:
        os.close(read_end)
        os.close(write_end)
    with pytest.raises(ValueError, match="not an open descriptor"):
        Notifier(read_end)


def test_notifier_is_not_inherited_when_not_passed() -> None:
    with Notifier.create() as notifier:
        assert os.get_inheritable(notifier.fileno()) is False
        assert os.get_blocking(notifier.fileno()) is False


@pytest.mark.timeout(60)
def test_notifier_wakes_parent_when_child_notifies_through_pass_fds(
    peers: Peers,
) -> None:
    with Notifier.create() as notifier:
        child = peers.start(
            "notify", notifier.fileno(), 5, pass_fds=(notifier.fileno(),)
        )
        peers.finish(child, timeout=30)
        assert notifier.wait(10.0) is True


def test_notifier_fd_wakes_event_loop_when_notified() -> None:
    async def scenario(notifier: Notifier) -> int:
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[int] = loop.create_future()
        loop.add_reader(notifier, lambda: woken.set_result(notifier.drain()))
        loop.call_later(0.01, notifier.notify)
        try:
            return await asyncio.wait_for(woken, 5.0)
        finally:
            loop.remove_reader(notifier)

    with Notifier.create() as notifier:
        assert asyncio.run(scenario(notifier)) == 1
