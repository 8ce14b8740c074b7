"""The client side of the forwarding protocol: one persistent connection
from a net (or metrics) process to the control process, used from an
asyncio loop (uvloop or the default loop).

    client = ControlClient.for_prefix(plan.prefix,
                                      max_frame_bytes=settings.max_request_bytes)
    response = await client.call(request_frame)   # frames include size prefix
    if response is None: close the client's connection (protocol violation)

``call`` sends the frame with a fresh tag and waits for the reply with that
tag; any number of calls may be in flight and replies come back in any
order (a JoinGroup may wait seconds while Heartbeats return at once). The
caller keeps its client-facing response order.

Failures raise ``ControlUnavailableError``; the caller answers its client
with ``broker.control.responses.unavailable_response(frame)`` (a retriable
error) instead:
- the connection breaks while a call is in flight: that call fails at once
  (the request may or may not have taken effect, so it is never resent);
- no connection can be made: the client retries with backoff (50 ms
  doubling to 1 s) for ``reconnect_timeout_s``, which covers a control
  process restart, then fails the calls waiting for it; the next call
  tries again;
- no reply within ``call_timeout_s``, which is longer than the longest
  rebalance the coordinator allows.

Helpers for internal callers that cannot build Kafka frames themselves (the
metrics process must not import ``net``): ``list_groups``,
``committed_offsets`` and ``create_topics`` build and decode the frames
with ``net.kafka.codec``.

Not thread-safe: use one client per event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from dataclasses import dataclass, field
from typing import Any

from broker.control.forwarding import (
    ForwardingError,
    MessageReader,
    check_frame,
    encode_request,
)
from broker.control.groups import GroupConfig
from broker.logs import event
from net.kafka.codec import decode_response
from net.kafka.codec import encode_request as encode_kafka_request
from net.kafka.codec_errors import CodecError
from net.kafka.schema import ApiKey

logger = logging.getLogger(__name__)

CONTROL_SOCKET_SUFFIX = "control"

RECONNECT_TIMEOUT_S = 15.0
RECONNECT_FIRST_DELAY_S = 0.05
RECONNECT_MAX_DELAY_S = 1.0

# A parked JoinGroup can last up to the largest rebalance timeout the
# coordinator accepts; a minute of slack on top.
CALL_TIMEOUT_S = GroupConfig().max_rebalance_timeout_ms / 1000 + 60

READ_CHUNK_BYTES = 256 * 1024
ENVELOPE_ALLOWANCE = 64

# The largest reply frame accepted by default: RINGBUS_MAX_REQUEST_BYTES's
# default, which also bounds what the control process sends back.
DEFAULT_MAX_FRAME_BYTES = 100 << 20

INTERNAL_CLIENT_ID = "ringbus-internal"


class ControlUnavailableError(Exception):
    """The control process did not answer this call (see module docstring)."""


def control_address(prefix: str) -> str:
    """The abstract socket address the supervisor binds for ``prefix``."""
    return f"\0{prefix}{CONTROL_SOCKET_SUFFIX}"


@dataclass(eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    pending: dict[int, asyncio.Future[bytes | None]] = field(default_factory=dict)
    reader_task: asyncio.Task[None] | None = None
    closed: bool = False


@dataclass(frozen=True)
class ControlClientStatistics:
    calls: int
    failures: int
    connects: int
    in_flight: int


class ControlClient:
    """Forwards Kafka request frames to the control process (see the module
    docstring)."""

    def __init__(
        self,
        address: str,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        reconnect_timeout_s: float = RECONNECT_TIMEOUT_S,
        call_timeout_s: float = CALL_TIMEOUT_S,
        loop: asyncio.AbstractEventLoop | None = None,
        name: str = "",
    ) -> None:
        # loop: the loop the client runs on (default: the running loop at
        # each call); name: the owning process, for log lines.
        self.address = address
        self.name = name
        self._loop = loop
        self.max_payload_bytes = max_frame_bytes + ENVELOPE_ALLOWANCE
        self.reconnect_timeout_s = reconnect_timeout_s
        self.call_timeout_s = call_timeout_s
        self._connection: _Connection | None = None
        self._connect_lock: asyncio.Lock | None = None
        self._tags = itertools.count(1)
        self._correlation_ids = itertools.count(1)
        self._closed = False
        self._calls = 0
        self._failures = 0
        self._connects = 0

    @classmethod
    def for_prefix(cls, prefix: str, **options: Any) -> ControlClient:
        """A client for the broker whose shared-memory prefix is ``prefix``."""
        return cls(control_address(prefix), **options)

    # -- calls ----------------------------------------------------------------

    async def call(self, frame: bytes | bytearray | memoryview) -> bytes | None:
        """Forward one Kafka request frame (size prefix included); return the
        response frame (size prefix included) or None for "no response".
        Raises ControlUnavailableError, or ForwardingError for a frame whose
        size prefix is wrong."""
        check_frame(frame, "request")
        self._calls += 1
        connection = await self._connected()
        tag = next(self._tags)
        future: asyncio.Future[bytes | None] = (
            asyncio.get_running_loop().create_future()
        )
        connection.pending[tag] = future
        try:
            connection.writer.write(encode_request(tag, frame))
            await connection.writer.drain()
            async with asyncio.timeout(self.call_timeout_s):
                return await future
        except TimeoutError:
            self._failures += 1
            raise ControlUnavailableError(
                f"no reply from the control process within {self.call_timeout_s} s"
            ) from None
        except ConnectionError as exc:
            self._failures += 1
            self._lost(connection, f"write failed: {exc}")
            raise ControlUnavailableError(
                f"connection to the control process lost: {exc}"
            ) from exc
        except ControlUnavailableError:
            self._failures += 1
            raise
        finally:
            connection.pending.pop(tag, None)

    async def close(self) -> None:
        """Close the connection; calls in flight fail."""
        self._closed = True
        connection = self._connection
        if connection is not None:
            self._lost(connection, "client closed")
            if connection.reader_task is not None:
                connection.reader_task.cancel()
                await asyncio.gather(connection.reader_task, return_exceptions=True)

    def statistics(self) -> ControlClientStatistics:
        connection = self._connection
        return ControlClientStatistics(
            calls=self._calls,
            failures=self._failures,
            connects=self._connects,
            in_flight=len(connection.pending) if connection else 0,
        )

    # -- connection -----------------------------------------------------------

    async def _connected(self) -> _Connection:
        connection = self._connection
        if connection is not None and not connection.closed:
            return connection
        if self._closed:
            raise ControlUnavailableError("the control client is closed")
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            connection = self._connection
            if connection is not None and not connection.closed:
                return connection
            connection = await self._connect()
            self._connection = connection
            return connection

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop if self._loop is not None else asyncio.get_running_loop()

    async def _connect(self) -> _Connection:
        loop = self._running_loop()
        deadline = loop.time() + self.reconnect_timeout_s
        delay = RECONNECT_FIRST_DELAY_S

        # Bounded by the deadline: each failed turn sleeps until the next
        # attempt or the deadline, and the turn after the deadline raises.
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, self.address)
                break
            except OSError as exc:
                sock.close()
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise ControlUnavailableError(
                        f"cannot reach the control process at {self.address!r}"
                        f" within {self.reconnect_timeout_s} s: {exc.strerror or exc}"
                    ) from exc
                # The last attempt is made at the deadline itself.
                await asyncio.sleep(min(delay, remaining))
                delay = min(delay * 2, RECONNECT_MAX_DELAY_S)

        reader, writer = await asyncio.open_unix_connection(sock=sock)
        connection = _Connection(reader, writer)
        connection.reader_task = loop.create_task(
            self._read(connection), name="control-client-reader"
        )
        self._connects += 1
        event(
            logger,
            logging.INFO,
            "control_client.connected",
            process=self.name,
            address=self.address.lstrip("\0"),
            connects=self._connects,
        )
        return connection

    async def _read(self, connection: _Connection) -> None:
        messages = MessageReader(self.max_payload_bytes, frames_required=False)
        reason = "closed by the control process"
        try:
            while True:
                data = await connection.reader.read(READ_CHUNK_BYTES)
                if not data:
                    break
                for message in messages.feed(data):
                    future = connection.pending.get(message.tag)
                    if future is not None and not future.done():
                        future.set_result(message.payload or None)
        except ForwardingError as exc:
            reason = f"bad reply: {exc.reason}"
        except ConnectionError as exc:
            reason = str(exc)
        finally:
            self._lost(connection, reason)

    def _lost(self, connection: _Connection, reason: str) -> None:
        if connection.closed:
            return
        connection.closed = True
        connection.writer.close()
        if self._connection is connection:
            self._connection = None
        error = ControlUnavailableError(
            f"connection to the control process lost ({reason}); the request"
            " may or may not have taken effect"
        )
        for future in connection.pending.values():
            if not future.done():
                future.set_exception(error)
        if not self._closed:
            event(
                logger,
                logging.WARNING,
                "control_client.disconnected",
                process=self.name,
                reason=reason,
                failed_calls=len(connection.pending),
            )

    # -- helpers for internal callers -----------------------------------------

    async def request(
        self, api_key: int, api_version: int, body: dict[str, Any]
    ) -> Any:
        """Build a request, call, and decode the response body. Raises
        ControlUnavailableError, or ValueError when there is no response or
        it does not decode."""
        correlation_id = next(self._correlation_ids) & 0x7FFFFFFF
        frame = encode_kafka_request(
            api_key, api_version, correlation_id, INTERNAL_CLIENT_ID, body
        )
        response = await self.call(frame)
        if response is None:
            raise ValueError(f"control process gave no response to api key {api_key}")
        try:
            answered, decoded = decode_response(api_key, api_version, response[4:])
        except CodecError as exc:
            raise ValueError(f"undecodable response: {exc.reason}") from exc
        if answered != correlation_id:
            raise ValueError(f"correlation id {answered} != {correlation_id}")
        return decoded

    async def list_groups(self) -> list[tuple[str, str, str]]:
        """Every group: (group id, protocol type, state)."""
        body = await self.request(ApiKey.LIST_GROUPS, 4, {"states_filter": []})
        return [
            (g["group_id"], g["protocol_type"], g["group_state"])
            for g in body["groups"]
        ]

    async def committed_offsets(self, group_id: str) -> dict[tuple[str, int], int]:
        """Every committed offset of ``group_id``: (topic, partition) -> offset."""
        body = await self.request(
            ApiKey.OFFSET_FETCH, 5, {"group_id": group_id, "topics": None}
        )
        return {
            (topic["name"], p["partition_index"]): p["committed_offset"]
            for topic in body["topics"]
            for p in topic["partitions"]
            if p["error_code"] == 0 and p["committed_offset"] >= 0
        }

    async def create_topics(
        self, names: list[str], partitions: int = -1, timeout_ms: int = 0
    ) -> dict[str, int]:
        """Create topics (auto-creation); -1 partitions means the broker
        default. Returns each topic's error code (36 = already exists)."""
        topics = [
            {
                "name": name,
                "num_partitions": partitions,
                "replication_factor": -1,
                "assignments": [],
                "configs": [],
            }
            for name in names
        ]
        body = await self.request(
            ApiKey.CREATE_TOPICS, 4, {"topics": topics, "timeout_ms": timeout_ms}
        )
        return {t["name"]: t["error_code"] for t in body["topics"]}
