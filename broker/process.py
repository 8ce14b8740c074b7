"""What every child process does before its own work: the process plan.

The supervisor starts each child as ``python -m <module> --plan <json>``.
The plan names the child's role, its slot (its row in the counters and
process tables), the shared-memory prefix to attach under, and the file
descriptors it inherited (listening sockets, eventfds). Settings are read
again from the inherited ``RINGBUS_*`` environment, so every process sees
the same values the supervisor checked.

A child must never outlive its supervisor: it asks the kernel for SIGTERM
when the supervisor dies (``PR_SET_PDEATHSIG``) and, as a second line,
its heartbeat notices a changed parent pid.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from broker import logs
from broker.layout import HEARTBEAT, BrokerMemory
from broker.settings import Settings, load_settings_or_exit
from shm.counters import CounterSlot

logger = logging.getLogger(__name__)

ROLES = ("supervisor", "writer", "control", "metrics", "net")

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ProcessPlan:
    """Everything a child needs from the supervisor, passed on its command line."""

    role: str
    index: int
    slot: int
    prefix: str
    supervisor_pid: int
    fds: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The name used in logs and metrics: ``net-0``, ``writer``, ..."""
        return f"{self.role}-{self.index}" if self.role == "net" else self.role

    def to_argument(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_argument(cls, text: str) -> ProcessPlan:
        data = json.loads(text)
        data["fds"] = {str(k): int(v) for k, v in data.get("fds", {}).items()}
        return cls(**data)


def _die_with_parent(supervisor_pid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, "prctl(PR_SET_PDEATHSIG) failed")

    # The supervisor may have died between our fork and the prctl above.
    if os.getppid() != supervisor_pid:
        raise SystemExit(0)


def parent_alive(plan: ProcessPlan) -> bool:
    """True while the supervisor that started this process still runs."""
    return os.getppid() == plan.supervisor_pid


# How often a child should call ``beat``; the supervisor's hang bound is
# many times this.
HEARTBEAT_INTERVAL_S = 0.5


class ChildRuntime:
    """A running child's plan, settings, shared memory and heartbeat.

    ``stopping`` turns true on SIGTERM (the supervisor's stop request, or
    the kernel's when the supervisor died); each role's main loop checks
    it, or installs its own handler (an asyncio loop does).
    """

    def __init__(self, plan: ProcessPlan, settings: Settings) -> None:
        self.plan = plan
        self.settings = settings
        self.memory = BrokerMemory.attach(settings, plan.prefix, plan.fds)
        self.counters: CounterSlot = self.memory.counters.slot(plan.slot)
        self._heartbeat_column = self.memory.counters.counter_id(HEARTBEAT)
        self._beats = self.memory.counters.counters[plan.slot]
        self.stopping = False
        # No beat yet: the supervisor takes the first one as "started", so
        # each role beats once its start-up work (e.g. recovery) is done or
        # while it is making progress on it.

    def beat(self) -> None:
        """Tell the supervisor this process is alive and making progress."""
        self._beats[self._heartbeat_column] = time.monotonic_ns()

    def request_stop(self, *_: object) -> None:
        self.stopping = True

    def parent_alive(self) -> bool:
        return parent_alive(self.plan)

    def close(self) -> None:
        self.memory.close()


def run_child(main: Callable[[ChildRuntime], int]) -> None:
    """Entry point shared by every child module's ``__main__``."""
    parser = argparse.ArgumentParser(description="ringbus child process")
    parser.add_argument("--plan", required=True, help="process plan (JSON)")
    arguments = parser.parse_args()
    plan = ProcessPlan.from_argument(arguments.plan)

    settings = load_settings_or_exit()
    logs.configure(settings.log_level, plan.name)
    _die_with_parent(plan.supervisor_pid)

    # SIGINT goes to the whole foreground process group on Ctrl-C; the
    # supervisor decides the shutdown order, so children ignore it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    runtime = ChildRuntime(plan, settings)
    signal.signal(signal.SIGTERM, runtime.request_stop)
    logs.event(logger, logging.INFO, "process.started", pid=os.getpid(), slot=plan.slot)
    try:
        code = main(runtime)
    finally:
        runtime.close()
    logs.event(logger, logging.INFO, "process.stopped", pid=os.getpid(), code=code)
    sys.exit(code)
