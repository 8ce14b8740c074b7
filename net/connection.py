"""One client TCP connection: frames in, responses out in request order.

The connection owns its non-blocking socket and drives it with the event
loop's ``add_reader``/``add_writer`` (uvloop has no ``sock_sendfile``, and
mixing a transport with direct ``os.sendfile`` calls on its socket would
interleave bytes). Reading:

    recv_into(buffer[end:]) -> scan_frames -> handler(frame) for each frame

``buffer`` is a bytearray that grows to hold the largest frame seen; frames
are memoryviews into it, so it is compacted (the unread tail moved to the
front) only after every frame of a scan was handled. A handler may stall
(the produce ring is full): the connection then stops reading and keeps the
remaining frames where they are until ``resume`` is called, so a slow
writer pushes back on clients instead of buffering without bound.

Writing: every request that gets a response takes a ``ResponseSlot`` in
arrival order; a slot is filled when its response is ready (produce
completions and parked fetches finish out of order), and only the filled
slots at the head of the queue move to the send queue. The send queue holds
byte chunks and ``FileRange`` chunks; bytes go out with ``sendmsg``
(several chunks in one call), file ranges with ``os.sendfile`` straight from
the segment file, and on EAGAIN the connection waits for ``add_writer``.
Sending is deferred to the end of the current loop turn (``call_soon``), so
the responses completed in one turn (a drain of the completion ring answers
many pipelined produce requests) leave in one ``sendmsg``, not one each.

A protocol violation closes this connection only, with a WARNING that names
the peer and the reason. Not thread-safe: one event loop thread.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from broker.logs import RateLimit, event
from net.kafka.codec import Chunk, FileRange
from net.kafka.codec_errors import CodecError
from net.kafka.framing import scan_frames

if TYPE_CHECKING:
    from net.server import NetProcess

logger = logging.getLogger(__name__)

# First receive buffer size; it grows (doubling) up to the largest frame.
# 256 KiB holds typical produce requests whole; a guess, not measured.
INITIAL_BUFFER_BYTES = 256 * 1024

# Bytes asked of one recv; the kernel returns what it has.
RECV_BYTES = 256 * 1024

# How far the buffer grows ahead of the bytes received for a frame whose
# size prefix announces more: a size prefix alone must not make the broker
# allocate up to max_request_bytes (one connection per 100 MiB). A guess:
# four receives.
GROW_AHEAD_BYTES = 4 * RECV_BYTES

# Stop reading requests while this many response bytes wait to be sent: a
# client that does not read its responses must not make the broker buffer
# without bound. Fetch file ranges count at their length.
MAX_QUEUED_RESPONSE_BYTES = 64 * 1024 * 1024

# sendmsg takes at most IOV_MAX buffers; stay well below.
MAX_IOV = 256


# Peers' protocol violations are logged at WARNING; a client sending garbage
# in a loop must not flood the log (20 lines a second per process, then a
# count of what was dropped).
CLOSE_WARNINGS = RateLimit(burst=20, period_s=1.0)


class ResponseSlot:
    """A place in the connection's response order, filled when ready."""

    __slots__ = ("chunks", "ready")

    def __init__(self) -> None:
        self.chunks: list[Chunk] = []
        self.ready = False


class ProtocolViolation(Exception):
    """The peer broke the protocol; the connection must close."""


class Connection:
    """See the module docstring."""

    def __init__(
        self,
        process: NetProcess,
        sock: socket.socket,
        peer: str,
        connection_id: int,
    ) -> None:
        self.process = process
        self.loop: asyncio.AbstractEventLoop = process.loop
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.connection_id = connection_id
        self.max_frame = process.settings.max_request_bytes

        self.buffer = bytearray(INITIAL_BUFFER_BYTES)
        self.start = 0  # first unconsumed byte
        self.end = 0  # end of received bytes

        self.slots: deque[ResponseSlot] = deque()
        self.send_queue: deque[Chunk] = deque()
        self.queued_bytes = 0

        self.closed = False
        self.reading = False
        self.writing = False
        self.send_scheduled = False
        self.stalled = False
        # Frames found but not yet handled, while stalled.
        self.pending_frames: deque[memoryview] = deque()
        self.consumed_to = 0

    # -- reading --------------------------------------------------------------

    def start_reading(self) -> None:
        if not self.reading and not self.closed:
            self.loop.add_reader(self.fd, self.on_readable)
            self.reading = True

    def stop_reading(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.fd)
            self.reading = False

    def on_readable(self) -> None:
        if self.closed or self.stalled:
            return

        # Make room: compact when the consumed prefix is large, grow when the
        # frame being received does not fit.
        free = len(self.buffer) - self.end
        if free < RECV_BYTES // 4:
            self._make_room(RECV_BYTES)

        try:
            view = memoryview(self.buffer)
            received = self.sock.recv_into(view[self.end :])
            view.release()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.close("recv failed", level=logging.DEBUG, error=exc.strerror)
            return
        if received == 0:
            if self.end > self.start:
                # The stream ended inside a frame: a truncated request.
                self.close("peer closed mid-frame", bytes=self.end - self.start)
            else:
                self.close("peer closed", level=logging.DEBUG)
            return
        self.end += received
        self._handle_buffer()

    def _make_room(self, wanted: int) -> None:
        unread = self.end - self.start
        if self.start and (self.start >= len(self.buffer) // 2 or unread == 0):
            self.buffer[:unread] = self.buffer[self.start : self.end]
            self.start, self.end = 0, unread
        if len(self.buffer) - self.end < wanted:
            size = len(self.buffer)
            while size - self.end < wanted:
                size *= 2
            self.buffer.extend(bytes(size - len(self.buffer)))

    def _handle_buffer(self) -> None:
        try:
            scan = scan_frames(self.buffer, self.max_frame, self.start, self.end)
        except CodecError as exc:
            self.close("bad frame", error=exc)
            return

        self.pending_frames.extend(scan.frames)
        self.consumed_to = self.start + scan.consumed
        self._handle_pending()
        if self.closed:
            return

        if scan.missing and not self.stalled:
            # A large frame is on its way: grow to hold it, as far as its
            # bytes arrive.
            need = scan.missing + (self.end - self.start)
            if self.start + need > len(self.buffer):
                self._make_room(min(scan.missing, GROW_AHEAD_BYTES))

    def _handle_pending(self) -> None:
        handle = self.process.handle_frame
        frames = self.pending_frames
        while frames and not self.closed:
            if not handle(self, frames[0]):
                # The handler stalled on a full ring; it resumes us later.
                self.stalled = True
                self.stop_reading()
                return
            if self.closed:
                # The handler closed us; close() released every frame.
                return
            frames.popleft().release()
        if self.closed:
            return
        self.start = self.consumed_to
        if self.start == self.end:
            self.start = self.end = 0
        if self.queued_bytes < MAX_QUEUED_RESPONSE_BYTES:
            self.start_reading()
        else:
            self.stop_reading()

    def resume(self) -> None:
        """Continue after a stall (the produce ring has space again)."""
        if self.closed or not self.stalled:
            return
        self.stalled = False
        self._handle_pending()
        if not self.stalled and not self.closed and self.end > self.start:
            # Bytes that arrived before the stall may hold complete frames.
            self._handle_buffer()

    # -- responses ------------------------------------------------------------

    def reserve_slot(self) -> ResponseSlot:
        slot = ResponseSlot()
        self.slots.append(slot)
        return slot

    def complete(self, slot: ResponseSlot, chunks: list[Chunk]) -> None:
        """Fill ``slot``; send every filled slot at the head of the order."""
        slot.chunks = chunks
        slot.ready = True
        if self.closed:
            return
        slots = self.slots
        moved = False
        while slots and slots[0].ready:
            for chunk in slots.popleft().chunks:
                self.send_queue.append(chunk)
                self.queued_bytes += (
                    chunk.length if type(chunk) is FileRange else len(chunk)
                )
            moved = True
        if moved:
            self._schedule_send()

    def send_now(self, chunks: list[Chunk]) -> None:
        """Respond at once (the request's slot would be at the head anyway)."""
        if not self.slots:
            for chunk in chunks:
                self.send_queue.append(chunk)
                self.queued_bytes += (
                    chunk.length if type(chunk) is FileRange else len(chunk)
                )
            self._schedule_send()
        else:
            self.complete(self.reserve_slot(), chunks)

    def _schedule_send(self) -> None:
        # While writing waits for add_writer, that callback sends; otherwise
        # one send at the end of this turn carries every response queued in it.
        if not self.writing and not self.send_scheduled:
            self.send_scheduled = True
            self.loop.call_soon(self._scheduled_send)

    def _scheduled_send(self) -> None:
        self.send_scheduled = False
        if not self.closed and not self.writing:
            self._send()

    def _send(self, closing: bool = False) -> None:
        """Send what the socket takes now; wait for ``add_writer`` for the
        rest. ``closing``: a last attempt before the socket closes, which
        neither waits nor closes again on failure."""
        queue = self.send_queue
        try:
            while queue:
                head = queue[0]
                if type(head) is FileRange:
                    sent = os.sendfile(self.fd, head.file, head.position, head.length)  # type: ignore[arg-type]
                    if sent == 0:
                        raise OSError(errno.EIO, "segment file ended before its range")
                    self.queued_bytes -= sent
                    if sent < head.length:
                        queue[0] = FileRange(
                            head.file, head.position + sent, head.length - sent
                        )
                    else:
                        queue.popleft()
                    continue

                # Gather the run of byte chunks at the head into one sendmsg.
                buffers: list[bytes | bytearray | memoryview] = []
                for chunk in queue:
                    if type(chunk) is FileRange or len(buffers) == MAX_IOV:
                        break
                    buffers.append(chunk)  # type: ignore[arg-type]
                sent = self.sock.sendmsg(buffers)
                self.queued_bytes -= sent
                while sent:
                    first = queue[0]
                    size = len(first)
                    if sent >= size:
                        queue.popleft()
                        sent -= size
                    else:
                        queue[0] = memoryview(first)[sent:]  # type: ignore[arg-type]
                        sent = 0
        except (BlockingIOError, InterruptedError):
            if not self.writing and not closing:
                self.loop.add_writer(self.fd, self._on_writable)
                self.writing = True
            return
        except OSError as exc:
            if not closing:
                self.close("send failed", level=logging.DEBUG, error=exc.strerror)
            return
        if closing:
            return

        if self.writing:
            self.loop.remove_writer(self.fd)
            self.writing = False
        if (
            not self.reading
            and not self.stalled
            and self.queued_bytes < MAX_QUEUED_RESPONSE_BYTES
        ):
            self.start_reading()

    def _on_writable(self) -> None:
        self._send()

    # -- closing --------------------------------------------------------------

    def close(self, reason: str, level: int = logging.WARNING, **fields: Any) -> None:
        """Close this connection only; log why (peers' mistakes name the peer)."""
        if self.closed:
            return
        if self.send_scheduled and not self.writing:
            # Responses to the requests before the reason were due this
            # turn: give them one try, as an immediate send would have.
            self._send(closing=True)
        self.closed = True
        self.stop_reading()
        if self.writing:
            self.loop.remove_writer(self.fd)
            self.writing = False
        event(
            logger,
            level,
            "conn.closed",
            rate_limit=CLOSE_WARNINGS if level >= logging.WARNING else None,
            connection=self.connection_id,
            peer=self.peer,
            reason=reason,
            **fields,
        )
        for frame in self.pending_frames:
            frame.release()
        self.pending_frames.clear()
        self.send_queue.clear()
        self.slots.clear()
        self.sock.close()
        self.process.connection_closed(self)


CloseCallback = Callable[[Connection], None]
