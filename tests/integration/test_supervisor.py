"""The supervisor with real child processes: start, restart, stop, crash."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from broker.supervisor import instance_prefix

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

EXPECTED_ROLES = {"writer", "control", "metrics", "net-0", "net-1"}


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def children_by_role(pid: int) -> dict[str, psutil.Process]:
    """The supervisor's live children, keyed by the name in their plan."""
    found = {}
    for child in psutil.Process(pid).children():
        try:
            command = child.cmdline()
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.NoSuchProcess:
            continue
        if "--plan" not in command:
            continue
        plan = command[command.index("--plan") + 1]
        role = plan.split('"role":"')[1].split('"')[0]
        index = plan.split('"index":')[1].split(",")[0]
        found[f"net-{index}" if role == "net" else role] = child
    return found


def shm_blocks(data_dir: Path) -> list[str]:
    prefix = instance_prefix(data_dir)
    return [name for name in os.listdir("/dev/shm") if name.startswith(prefix)]


def test_supervisor_starts_every_child_and_stops_cleanly(broker_factory) -> None:
    broker = broker_factory().start()
    wait_until(
        lambda: set(children_by_role(broker.pid)) == EXPECTED_ROLES, 30, "children"
    )
    children = list(children_by_role(broker.pid).values())
    assert shm_blocks(broker.data_dir), "shared memory should exist while running"

    assert broker.stop() == 0

    for child in children:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert shm_blocks(broker.data_dir) == []
    log = broker.log_text()
    assert "broker.stopped" in log
    # Dependency order: net processes stop before the writer, writer last
    # but metrics.
    order = [line.split()[2] for line in log.splitlines() if "process.stopped" in line]
    assert order.index("writer") > max(order.index("net-0"), order.index("net-1"))
    assert order.index("writer") > order.index("control")


def test_supervisor_restarts_a_child_killed_with_sigkill(broker_factory) -> None:
    broker = broker_factory().start()
    wait_until(
        lambda: set(children_by_role(broker.pid)) == EXPECTED_ROLES, 30, "children"
    )
    victim = children_by_role(broker.pid)["writer"]
    victim.send_signal(signal.SIGKILL)

    def restarted() -> bool:
        writer = children_by_role(broker.pid).get("writer")
        return writer is not None and writer.pid != victim.pid

    wait_until(restarted, 30, "the writer to be restarted")
    log = broker.log_text()
    assert (
        f'process.exited process=writer pid={victim.pid} reason="signal SIGKILL"' in log
    )
    assert "process.spawned process=writer" in log and "restarts=1" in log
    assert broker.stop() == 0


def test_killed_supervisor_leaves_no_child_and_next_start_cleans_up(
    broker_factory,
) -> None:
    first = broker_factory().start()
    wait_until(
        lambda: set(children_by_role(first.pid)) == EXPECTED_ROLES, 30, "children"
    )
    children = list(children_by_role(first.pid).values())
    first.kill()

    def all_gone() -> bool:
        return all(
            not c.is_running() or c.status() == psutil.STATUS_ZOMBIE for c in children
        )

    wait_until(all_gone, 30, "children to exit after their supervisor died")
    assert shm_blocks(first.data_dir), "a killed supervisor cannot unlink"

    second = broker_factory(
        first.data_dir.name, kafka_port=first.kafka_port, http_port=first.http_port
    ).start()
    assert "shm.stale_removed" in second.log_text()
    assert second.stop() == 0
    assert shm_blocks(first.data_dir) == []


def test_second_broker_on_the_same_data_dir_is_refused(broker_factory) -> None:
    first = broker_factory().start()
    second = broker_factory(first.data_dir.name)
    second.env["RINGBUS_KAFKA_PORT"] = str(second.kafka_port)
    with pytest.raises(RuntimeError, match="exited early"):
        second.start(timeout_s=60)
    assert "is in use by another broker" in second.log_text()
    assert first.stop() == 0
