"""The control process's request entry point: a forwarded Kafka request
frame in, its response frame out.

``ControlService.handle(frame)`` decodes the request (size prefix
included), runs the handler of its API key and encodes the response for
the same version. It returns None, "no response", only for a frame that
does not decode or an API or version the control process does not serve;
the net process closes that client's connection, as Kafka would. A handler
that fails inside the broker is logged with its traceback and answered
with UNKNOWN_SERVER_ERROR in every error field.

The service owns the control process's state: topic metadata
(``MetadataStore``), committed offsets (``OffsetStore``), producer ids and
the group coordinator. Two pieces of machinery tie them to the event loop:

- ``OffsetSyncer``: group commit for the offsets log. Requests that
  changed offsets wait for an fsync that covers their record; one fsync, run
  in a worker thread so group traffic keeps flowing, releases every waiter
  whose record was written before it started. Compaction runs between
  fsyncs when the log has grown past its bound.
- a loop timer armed for the coordinator's earliest deadline (session and
  rebalance timeouts), re-armed whenever that deadline moves.

A failed fsync is fatal for the offsets log (the kernel may have dropped
the data): waiting requests get COORDINATOR_NOT_AVAILABLE and ``on_fatal``
is called so the process exits and the supervisor restarts it, which
reloads the log from disk.

Imported by the control process (``broker.control.server``) and by tests,
which call ``handle`` with frames built by ``net.kafka.codec.encode_request``.
Single event loop thread; not thread-safe.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

from broker.control.admin import AdminApi
from broker.control.forwarding import ForwardingError, check_frame
from broker.control.group_api import GroupApi, Handler
from broker.control.groups import (
    Clock,
    CoordinatorStatistics,
    GroupConfig,
    GroupCoordinator,
)
from broker.control.metadata import MetadataStore
from broker.control.offsets import (
    COMPACT_MIN_BYTES,
    OffsetLogError,
    OffsetStore,
    OffsetStoreStatistics,
)
from broker.control.producer_ids import ProducerIdAllocator
from broker.control.responses import error_body
from broker.logs import RateLimit, event
from broker.settings import Settings
from net.kafka.codec import decode_request, encode_response_bytes
from net.kafka.codec_errors import CodecError, EncodeError
from net.kafka.errors import ErrorCode

logger = logging.getLogger(__name__)

# Invalid forwarded requests come from misbehaving clients (the net process
# logs the peer); keep a flood of them from flooding the log.
INVALID_WARNINGS = RateLimit(burst=20, period_s=1.0)


def monotonic_ms() -> float:
    """The coordinator's clock in the running process."""
    return time.monotonic() * 1000.0


class _Route(NamedTuple):
    low: int
    high: int
    handler: Handler


@dataclass(frozen=True)
class ControlStatistics:
    """What the metrics process reports about the control process."""

    requests: int
    handler_failures: int
    rejected_requests: int
    fsync_batches: int
    groups: CoordinatorStatistics
    offsets: OffsetStoreStatistics


class OffsetSyncer:
    """Group commit for the offsets log (see the module docstring)."""

    def __init__(
        self, store: OffsetStore, on_failure: Callable[[OffsetLogError], None]
    ) -> None:
        self.store = store
        self.on_failure = on_failure
        self.batches = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = (
            collections.deque()
        )
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def wait_durable(self, sequence: int) -> None:
        """Return once every change up to ``sequence`` is fsynced; raise
        OffsetLogError if the log failed."""
        if sequence <= self.store.synced_sequence:
            return
        if self.store.failed is not None:
            raise self.store.failed
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiters.append((sequence, future))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="offsets-sync")
        await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="offsets-fsync")

        # Each turn releases every waiter present when it started; waiters
        # that arrive during the fsync are released by the next turn.
        while self._waiters:
            target = self.store.written_sequence
            try:
                await loop.run_in_executor(self._executor, self.store.sync, target)
            except OffsetLogError as exc:
                while self._waiters:
                    _, future = self._waiters.popleft()
                    if not future.done():
                        future.set_exception(exc)
                self.on_failure(exc)
                return
            self.batches += 1
            while self._waiters and self._waiters[0][0] <= target:
                _, future = self._waiters.popleft()
                if not future.done():
                    future.set_result(None)

            # Between fsyncs nothing else touches the file: compact here.
            # LIMITATION: the rewrite runs on the loop thread, pausing every
            # request for its duration (once per doubling of the log).
            if self.store.needs_compaction():
                try:
                    self.store.compact()
                except OffsetLogError as exc:
                    event(
                        logger,
                        logging.WARNING,
                        "offsets.compaction_failed",
                        path=exc.path,
                        error=str(exc),
                    )

    async def close(self) -> None:
        """Finish the pending fsyncs, make everything written durable and
        stop the worker thread."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self.store.failed is None and (
            self.store.written_sequence > self.store.synced_sequence
        ):
            try:
                self.store.sync(self.store.written_sequence)
            except OffsetLogError as exc:
                self.on_failure(exc)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


class ControlService:
    """Metadata, groups, offsets and producer ids behind one request entry
    point (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock = monotonic_ms,
        group_config: GroupConfig | None = None,
        compact_min_bytes: int = COMPACT_MIN_BYTES,
        auto_tick: bool = True,
    ) -> None:
        data_dir = settings.data_dir
        self.settings = settings
        self.clock = clock
        self.auto_tick = auto_tick
        self.metadata = MetadataStore(data_dir, settings.max_partitions).load()
        self.offsets = OffsetStore.open(data_dir, compact_min_bytes=compact_min_bytes)
        self.producer_ids = ProducerIdAllocator.open(data_dir)
        self.groups = GroupCoordinator(
            clock, group_config, on_earlier_deadline=self._arm_timer
        )
        self.syncer = OffsetSyncer(self.offsets, self._on_offsets_failure)

        # Called once when the process must restart to recover (a failed
        # fsync of the offsets log); the server stops with exit code 1.
        self.on_fatal: Callable[[Exception], None] | None = None

        # Called with the metadata version after every change (and by
        # ``publish_metadata_version``); the process publishes it in its
        # ``metadata_version_gauge`` counter, which net processes and the
        # writer watch to reload metadata.json.
        self.on_metadata_version: Callable[[int], None] | None = None
        self._published_version = -1

        group_api = GroupApi(
            settings, self.groups, self.offsets, self.syncer, self.metadata
        )
        admin_api = AdminApi(
            settings, self.metadata, self.offsets, self.syncer, self.producer_ids
        )
        self._routes = {
            api_key: _Route(low, high, handler)
            for api_key, (low, high, handler) in (
                group_api.handlers() | admin_api.handlers()
            ).items()
        }
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due: float | None = None
        self._requests = 0
        self._failures = 0
        self._rejected = 0

        # TODO(lead): call self.metadata.release_freed(version) once every
        # process reports the metadata version it has applied; until then
        # partition indexes of deleted topics are not reused.

    def served_versions(self) -> dict[int, tuple[int, int]]:
        """api key -> (lowest, highest) version this service handles."""
        return {key: (r.low, r.high) for key, r in self._routes.items()}

    # -- requests -------------------------------------------------------------

    async def handle(self, frame: bytes | bytearray | memoryview) -> bytes | None:
        """The response frame (size prefix included) to one request frame
        (size prefix included), or None for "no response"."""
        view = memoryview(frame)
        try:
            check_frame(view, "request")
            header, body = decode_request(view[4:])
        except (ForwardingError, CodecError) as exc:
            self._rejected += 1
            event(
                logger,
                logging.WARNING,
                "control.request_invalid",
                rate_limit=INVALID_WARNINGS,
                reason=getattr(exc, "reason", str(exc)),
            )
            return None
        route = self._routes.get(header.api_key)
        if route is None or not route.low <= header.api_version <= route.high:
            self._rejected += 1
            event(
                logger,
                logging.WARNING,
                "control.request_unsupported",
                rate_limit=INVALID_WARNINGS,
                api_key=header.api_key,
                api_version=header.api_version,
            )
            return None

        self._requests += 1
        key, version = header.api_key, header.api_version
        try:
            response = await route.handler(header, body)
            self.publish_metadata_version()
            return encode_response_bytes(key, version, header.correlation_id, response)
        except Exception:
            self._failures += 1
            event(
                logger,
                logging.ERROR,
                "control.handler_failed",
                api_key=key,
                api_version=version,
                client=header.client_id,
                exc_info=True,
            )
        self.publish_metadata_version()
        try:
            failure = error_body(key, version, body, ErrorCode.UNKNOWN_SERVER_ERROR)
            return encode_response_bytes(key, version, header.correlation_id, failure)
        except (KeyError, EncodeError):
            event(
                logger,
                logging.ERROR,
                "control.error_response_failed",
                api_key=key,
                api_version=version,
                exc_info=True,
            )
            return None

    def publish_metadata_version(self) -> None:
        """Announce the metadata version if it changed since the last call."""
        version = self.metadata.version
        if version != self._published_version and self.on_metadata_version:
            self.on_metadata_version(version)
            self._published_version = version

    # -- timers ---------------------------------------------------------------

    def tick(self) -> None:
        """Apply the coordinator's expired deadlines and re-arm the timer."""
        self.groups.tick()
        deadline = self.groups.next_deadline()
        if deadline is not None:
            self._arm_timer(deadline)

    def _arm_timer(self, deadline: float) -> None:
        if not self.auto_tick:
            return
        if self._timer is not None and self._timer_due is not None:
            if self._timer_due <= deadline:
                return
            self._timer.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            # Driven without a loop (a test calling tick itself).
            return
        delay_s = max(0.0, (deadline - self.clock()) / 1000.0)
        self._timer = loop.call_later(delay_s, self._on_timer)
        self._timer_due = deadline

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_due = None
        try:
            self.tick()
        except Exception:
            # A fault in the state machine must not stop the timer for every
            # other group; it is logged and the next deadline still runs.
            event(logger, logging.ERROR, "group.tick_failed", exc_info=True)
            deadline = self.groups.next_deadline()
            if deadline is not None:
                self._arm_timer(deadline)

    # -- failures and shutdown ------------------------------------------------

    def _on_offsets_failure(self, exc: OffsetLogError) -> None:
        event(
            logger,
            logging.ERROR,
            "control.offsets_failed",
            path=exc.path,
            error=str(exc),
            action="restarting the control process to reload the log",
        )
        if self.on_fatal is not None:
            self.on_fatal(exc)

    async def close(self) -> None:
        """Answer parked group requests (COORDINATOR_NOT_AVAILABLE), make
        every offsets change durable and close the files."""
        self.groups.shutdown()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_due = None
        await self.syncer.close()
        self.offsets.close()

    def statistics(self) -> ControlStatistics:
        return ControlStatistics(
            requests=self._requests,
            handler_failures=self._failures,
            rejected_requests=self._rejected,
            fsync_batches=self.syncer.batches,
            groups=self.groups.statistics(),
            offsets=self.offsets.statistics(),
        )
