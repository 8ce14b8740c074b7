"""The supervisor: owns the shared memory, the listening sockets and every child.

Start-up, in order:
  1. read and check the settings (exit 2 on a bad one);
  2. lock the data directory, waiting for children of a previous broker on
     the same directory to exit (they inherit the lock, so it is free only
     once the last of them is gone);
  3. remove shared-memory blocks a killed supervisor left behind, then
     create every region (rings, tables, counters) and the eventfds;
  4. bind the Kafka listeners (one SO_REUSEPORT socket per net process),
     the HTTP listener and the control process's Unix socket;
  5. start writer, control, metrics, then the net processes.

While running, a child that exits is restarted with exponential backoff and
its exit reason is logged; a child whose heartbeat stops is killed and
restarted the same way. The supervisor owns every region, so a child's
crash never loses ring contents or counters.

On SIGTERM or SIGINT the children stop in dependency order: net processes
first (they stop accepting and finish in-flight requests), then control,
then the writer (which flushes and fsyncs), then metrics; the supervisor
then unlinks every region and exits 0. A child that does not stop within
its bound is killed.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from broker import logs
from broker.layout import (
    CONTROL_SLOT,
    FIRST_NET_SLOT,
    METRICS_SLOT,
    WRITER_SLOT,
    BrokerMemory,
    slot_count,
    stale_block_prefix,
)
from broker.process import ProcessPlan
from broker.settings import Settings, load_settings_or_exit
from shm.region import process_alive

logger = logging.getLogger(__name__)

# Child modules by role; each runs broker.process.run_child.
ROLE_MODULES = {
    "writer": "broker.writer",
    "control": "broker.control",
    "metrics": "metrics",
    "net": "net",
}

# Restart backoff: a child that keeps dying is retried at growing intervals
# up to the cap; one that stayed up this long is considered healthy again.
RESTART_BACKOFF_FIRST_S = 0.1
RESTART_BACKOFF_MAX_S = 10.0
RESTART_HEALTHY_AFTER_S = 30.0

# A child whose heartbeat is older than this is taken to be hung. Children
# beat every 0.5 s; the bound leaves room for a long GC pause or a slow
# disk on a shared machine.
HEARTBEAT_TIMEOUT_S = 15.0
START_GRACE_S = 20.0

# How long each role gets to stop on SIGTERM before it is killed; the
# writer gets longest because it fsyncs every partition.
STOP_TIMEOUT_S = {"net": 10.0, "control": 10.0, "writer": 30.0, "metrics": 5.0}
STOP_ORDER = ("net", "control", "writer", "metrics")

LOCK_WAIT_S = 30.0


@dataclass
class Child:
    """One supervised process and its restart bookkeeping."""

    plan: ProcessPlan
    module: str
    popen: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = RESTART_BACKOFF_FIRST_S
    restart_at: float | None = None
    # The heartbeat value recorded at spawn; the child has started once its
    # own first beat replaces it.
    spawn_beat: int = 0
    pass_fds: tuple[int, ...] = field(default_factory=tuple)


def instance_prefix(data_dir: Path) -> str:
    """Shared-memory name prefix, stable for one data directory."""
    digest = hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:10]
    return f"rb{digest}_"


def exit_reason(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


class DataDirLock:
    """An exclusive flock on ``<data>/.lock``, inherited by every child.

    Children keep the descriptor open, so after a supervisor is killed the
    lock stays held until its last child has exited: a new broker on the
    same directory never runs beside a dying writer.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / ".lock"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)

    def acquire(self, timeout_s: float) -> None:
        """Take the lock. If a live supervisor holds it, fail at once; if
        only the children of a dead one do, wait for them (bounded)."""
        deadline = time.monotonic() + timeout_s
        announced = False
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = self._recorded_pid()
                if holder is not None and process_alive(holder):
                    raise
                if time.monotonic() >= deadline:
                    raise
                if not announced:
                    logs.event(
                        logger,
                        logging.WARNING,
                        "supervisor.lock_waiting",
                        path=self.path,
                        reason="children of a stopped broker still hold the data dir",
                    )
                    announced = True
                time.sleep(0.05)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def _recorded_pid(self) -> int | None:
        try:
            return int(os.pread(self.fd, 32, 0).decode().strip() or "0") or None
        except ValueError:
            return None


class Supervisor:
    """Runs the broker: see the module docstring for the life cycle."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir.resolve()
        self.prefix = instance_prefix(self.data_dir)
        self.children: list[Child] = []
        self.stopping = False
        self.ready = False
        self.memory: BrokerMemory | None = None
        self.listeners: list[socket.socket] = []
        self.http_listener: socket.socket | None = None
        self.control_listener: socket.socket | None = None
        self.lock: DataDirLock | None = None
        self._wake_r, self._wake_w = socket.socketpair()

    # -- start-up -----------------------------------------------------------

    def prepare(self) -> None:
        """Lock the data dir, create shared memory and bind every listener."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.lock = DataDirLock(self.data_dir)
        try:
            self.lock.acquire(LOCK_WAIT_S)
        except BlockingIOError:
            raise SystemExit(
                f"ringbus: data directory {self.data_dir} is in use by another"
                " broker (stop it first, or set RINGBUS_DATA_DIR)"
            ) from None

        removed = stale_block_prefix(self.prefix)
        if removed:
            logs.event(
                logger,
                logging.WARNING,
                "shm.stale_removed",
                count=len(removed),
                reason="left by a supervisor that did not stop cleanly",
            )
        self.memory = BrokerMemory.create(
            self.settings, self.prefix, slot_count(self.settings)
        )

        self._bind_listeners()
        self._plan_children()

    def _bind_listeners(self) -> None:
        host, port = self.settings.host, self.settings.kafka_port
        try:
            for _ in range(self.settings.net_procs):
                listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                listener.bind((host, port))
                listener.listen(1024)
                self.listeners.append(listener)
            if self.settings.http_port:
                self.http_listener = socket.create_server(
                    (host, self.settings.http_port), reuse_port=False, backlog=128
                )
        except OSError as exc:
            raise SystemExit(
                f"ringbus: cannot listen on {host}: {exc.strerror}"
                " (check RINGBUS_HOST, RINGBUS_KAFKA_PORT and RINGBUS_HTTP_PORT)"
            ) from None
        logs.event(
            logger,
            logging.INFO,
            "listener.bound",
            kafka=f"{host}:{port}",
            http=f"{host}:{self.settings.http_port}" if self.http_listener else "off",
            net_procs=self.settings.net_procs,
        )

        # Abstract Unix socket: nothing to clean up on disk after a crash.
        self.control_listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.control_listener.bind(f"\0{self.prefix}control")
        self.control_listener.listen(256)

    def _plan_children(self) -> None:
        assert self.memory is not None and self.lock is not None
        memory = self.memory
        common = {"lock": self.lock.fd, **memory.notifier_fds()}
        control_fd = self.control_listener.fileno() if self.control_listener else -1

        def add(role: str, index: int, slot: int, extra: dict[str, int]) -> None:
            fds = {**common, **extra}
            plan = ProcessPlan(
                role=role,
                index=index,
                slot=slot,
                prefix=self.prefix,
                supervisor_pid=os.getpid(),
                fds=fds,
            )
            child = Child(plan, ROLE_MODULES[role], pass_fds=tuple(fds.values()))
            self.children.append(child)

        add("writer", 0, WRITER_SLOT, {})
        add("control", 0, CONTROL_SLOT, {"control_listener": control_fd})
        if self.http_listener is not None:
            add("metrics", 0, METRICS_SLOT, {"http": self.http_listener.fileno()})
        for index, listener in enumerate(self.listeners):
            add("net", index, FIRST_NET_SLOT + index, {"kafka": listener.fileno()})

    def _spawn(self, child: Child) -> None:
        assert self.memory is not None
        command = [
            sys.executable,
            "-m",
            child.module,
            "--plan",
            child.plan.to_argument(),
        ]
        # Each child gets its own process group: a signal sent to the
        # supervisor's group (Ctrl-C, ``timeout``, a service manager) reaches
        # the supervisor alone, which then stops the children in order.
        child.popen = subprocess.Popen(
            command, pass_fds=child.pass_fds, process_group=0
        )
        child.started_at = time.monotonic()
        child.restart_at = None
        child.spawn_beat = self.memory.register_process(
            child.plan.slot, child.plan.role, child.plan.index, child.popen.pid
        )
        logs.event(
            logger,
            logging.INFO,
            "process.spawned",
            process=child.plan.name,
            pid=child.popen.pid,
            restarts=child.restarts,
        )

    # -- running ------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stopping = True

    def run(self) -> int:
        """Start every child and supervise until asked to stop."""
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno())
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(signum, self._on_signal)

        for child in self.children:
            self._spawn(child)
        logs.event(logger, logging.INFO, "broker.started", pid=os.getpid())

        selector = selectors.DefaultSelector()
        selector.register(self._wake_r, selectors.EVENT_READ)
        while not self.stopping:
            selector.select(timeout=0.1 if not self.ready else 0.5)
            self._drain_wakeups()
            if self.stopping:
                break
            self._reap_and_restart()
            self._check_heartbeats()
            if not self.ready:
                self._check_ready()
        selector.close()

        return self.shutdown()

    def _check_ready(self) -> None:
        """Log ``broker.ready`` once every child has started for the first time."""
        assert self.memory is not None
        for child in self.children:
            if self.memory.heartbeat(child.plan.slot) == child.spawn_beat:
                return
        self.ready = True
        logs.event(logger, logging.INFO, "broker.ready", pid=os.getpid())

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _reap_and_restart(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.popen is not None:
                returncode = child.popen.poll()
                if returncode is None:
                    continue
                self._schedule_restart(child, returncode, now)
            if child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                self._spawn(child)

    def _schedule_restart(self, child: Child, returncode: int, now: float) -> None:
        assert child.popen is not None
        uptime = now - child.started_at
        if uptime >= RESTART_HEALTHY_AFTER_S:
            child.backoff_s = RESTART_BACKOFF_FIRST_S
        logs.event(
            logger,
            logging.ERROR,
            "process.exited",
            process=child.plan.name,
            pid=child.popen.pid,
            reason=exit_reason(returncode),
            uptime_s=round(uptime, 3),
            restart_in_s=child.backoff_s,
        )
        child.popen = None
        child.restart_at = now + child.backoff_s
        child.backoff_s = min(child.backoff_s * 2, RESTART_BACKOFF_MAX_S)

    def _check_heartbeats(self) -> None:
        assert self.memory is not None
        now = time.monotonic()
        for child in self.children:
            if child.popen is None or now - child.started_at < START_GRACE_S:
                continue
            age = self.memory.heartbeat_age_s(child.plan.slot)
            if age > HEARTBEAT_TIMEOUT_S:
                logs.event(
                    logger,
                    logging.ERROR,
                    "process.hung",
                    process=child.plan.name,
                    pid=child.popen.pid,
                    heartbeat_age_s=round(age, 1),
                )
                child.popen.kill()

    # -- shutdown -----------------------------------------------------------

    def shutdown(self) -> int:
        """Stop children in dependency order, release everything, return 0."""
        logs.event(logger, logging.INFO, "broker.stopping")
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for role in STOP_ORDER:
            group = [c for c in self.children if c.plan.role == role and c.popen]
            for child in group:
                assert child.popen is not None
                child.popen.terminate()
            deadline = time.monotonic() + STOP_TIMEOUT_S[role]
            for child in group:
                assert child.popen is not None
                remaining = max(0.0, deadline - time.monotonic())
                try:
                    child.popen.wait(timeout=remaining)
                except subprocess.TimeoutExpired:
                    logs.event(
                        logger,
                        logging.ERROR,
                        "process.stop_timeout",
                        process=child.plan.name,
                        pid=child.popen.pid,
                        timeout_s=STOP_TIMEOUT_S[role],
                    )
                    child.popen.kill()
                    child.popen.wait()
            if role == "net":
                # No new connections once the net processes are gone.
                for listener in self.listeners:
                    listener.close()

        self.release()
        logs.event(logger, logging.INFO, "broker.stopped")
        return 0

    def abort(self) -> None:
        """After an unexpected failure: kill every child, release everything."""
        for child in self.children:
            if child.popen is not None and child.popen.poll() is None:
                child.popen.kill()
                child.popen.wait()
        self.release()

    def release(self) -> None:
        """Unlink shared memory and close every descriptor the broker holds."""
        if self.memory is not None:
            self.memory.close()
            self.memory.unlink()
            self.memory = None
        for listener in self.listeners:
            listener.close()
        for other in (self.http_listener, self.control_listener):
            if other is not None:
                other.close()
        if self.lock is not None:
            os.close(self.lock.fd)
            self.lock = None


def main() -> int:
    settings = load_settings_or_exit()
    logs.configure(settings.log_level, "supervisor")
    supervisor = Supervisor(settings)
    try:
        supervisor.prepare()
        return supervisor.run()
    except OSError as exc:
        supervisor.abort()
        if exc.errno == errno.ENOSPC:
            raise SystemExit(f"ringbus: out of shared memory or disk: {exc}") from None
        raise
    except BaseException:
        supervisor.abort()
        raise
