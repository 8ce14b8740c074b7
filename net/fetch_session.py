"""Incremental fetch sessions (KIP-227) of one net process, sans-IO.

A client that fetches many partitions may ask the broker to remember them:
a full fetch with session id 0 and epoch 0 creates a session, and later
fetches name only what changed. The cache here decides, for each Fetch
request, what the fetch reads and how its answer is shaped; it does no I/O
(``net.fetch`` reads the partitions and sends the answer).

Request metadata (session id, epoch), as Kafka's FetchRequest v7+ defines:

    id 0, epoch -1   full fetch, no session (followers, old clients, v4-v6)
    id 0, epoch 0    full fetch that creates a session; its id is in the answer
    id N, epoch -1   close session N, then a full fetch without a session
    id N, epoch 0    close session N, then a full fetch that creates a session
    id N, epoch E>0  incremental: E must be the session's next epoch

An incremental request updates the session's partitions (those it names are
added or get their new fetch offset and partition max bytes; those in
``forgotten_topics_data`` are removed), and the fetch then reads every
partition of the session. A partition the request does not name keeps the
fetch offset last sent for it: the client sends a partition again only when
its fetch position changed, so the broker must not move the offset on by
itself. The answer names only partitions that have something to say:
records, a high watermark or log start offset other than the last one sent
for it, or an error (a new partition has sent nothing yet, so it is always
named). Partitions that returned records move to the end of the session's
order, so the next fetch's response budget goes to the others first.

The epoch is checked, and moved on, once, when the request arrives, as
Kafka does (a parked fetch is not checked again when it is re-evaluated;
a client sends its next fetch of a session only after this answer). The
cached high watermarks and log start offsets are updated once, by
``FetchContext.finish``, when the answer is built: a parked fetch
re-evaluated several times leaves the session alone until its final answer.
A full fetch that creates a session creates it then too. If a newer request
of the same session arrived meanwhile (a client pipelining fetches), the
older one is answered INVALID_FETCH_SESSION_EPOCH and leaves the session to
the newer one.

Sessions live in one net process and are not tied to a connection (a
client may reconnect and go on, if it lands on the same process). Session
ids carry the process index in their low ``INDEX_BITS`` bits, so an id is
unique across the processes behind SO_REUSEPORT and a lookup on another
process answers FETCH_SESSION_ID_NOT_FOUND; the client then sends a full
fetch and gets a new session there.

Bounds: at most ``MAX_SESSIONS`` sessions and ``MAX_CACHED_PARTITIONS``
cached partitions per process. A session unused for ``IDLE_EVICTION_S`` is
removed (checked lazily on each request, oldest first). When the session
count is at its maximum, a new session may evict the smallest session older
than ``IDLE_EVICTION_S`` if it holds fewer partitions than the new one
(Kafka's rule, which keeps the sessions that save the most); otherwise, or
when its partitions would not fit, the full fetch is answered without a
session (id 0) and the client asks again on its next full fetch. An
incremental request that would push the cached partitions past their
maximum closes its session and answers FETCH_SESSION_ID_NOT_FOUND, and the
client falls back to a full fetch.

Single-threaded: one event loop owns the cache.
"""

from __future__ import annotations

import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from broker.logs import event
from net.kafka.errors import ErrorCode

logger = logging.getLogger(__name__)

INVALID_SESSION_ID = 0
INITIAL_EPOCH = 0
FINAL_EPOCH = -1
MAX_EPOCH = 2**31 - 1

# Kafka's default max.incremental.fetch.session.cache.slots is 1000 per
# broker; here it is per net process (a broker has RINGBUS_NET_PROCS of them).
MAX_SESSIONS = 1000

# Cached partitions per process, over all its sessions: about 200 bytes each
# in Python objects, so some 20 MB at most. Kafka has no such bound; a guess.
MAX_CACHED_PARTITIONS = 100_000

# Kafka's min.incremental.fetch.session.eviction.ms default (2 minutes).
IDLE_EVICTION_S = 120.0

# Low bits of a session id: the net process index (RINGBUS_NET_PROCS <= 256).
INDEX_BITS = 8
INDEX_MASK = (1 << INDEX_BITS) - 1

# Attempts at a random session id not in use before giving up (the id space
# is 2**23 per process for at most MAX_SESSIONS ids; never reached).
ID_ATTEMPTS = 64

Key = tuple[str, int]


def next_epoch(epoch: int) -> int:
    """The epoch after ``epoch`` (wraps from INT32 max to 1)."""
    return 1 if epoch >= MAX_EPOCH else epoch + 1


def process_index(session_id: int) -> int:
    """The index of the net process that issued ``session_id``."""
    return session_id & INDEX_MASK


def has_records(records: Any) -> bool:
    """True when a partition result carries records: empty bytes (or None)
    mean none; anything else (a file range) is record data."""
    if records is None:
        return False
    if isinstance(records, (bytes, bytearray, memoryview)):
        return len(records) > 0
    return True


class CachedPartition:
    """One partition of a fetch: what the client asked, what it was sent.

    ``high_watermark`` and ``log_start_offset`` are the values last sent to
    the client for this partition (-1: none yet, or an error since).
    """

    __slots__ = (
        "fetch_offset",
        "fetcher_log_start_offset",
        "high_watermark",
        "log_start_offset",
        "max_bytes",
        "partition",
        "topic",
    )

    def __init__(
        self,
        topic: str,
        partition: int,
        fetch_offset: int,
        max_bytes: int,
        fetcher_log_start_offset: int = -1,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.fetch_offset = fetch_offset
        self.max_bytes = max_bytes
        self.fetcher_log_start_offset = fetcher_log_start_offset
        self.high_watermark = -1
        self.log_start_offset = -1

    def __repr__(self) -> str:
        return (
            f"CachedPartition({self.topic}-{self.partition}, "
            f"fetch_offset={self.fetch_offset}, max_bytes={self.max_bytes}, "
            f"high_watermark={self.high_watermark}, "
            f"log_start_offset={self.log_start_offset})"
        )


class FetchSession:
    """One session: its partitions in fetch order, and its next epoch."""

    __slots__ = ("created", "epoch", "id", "last_used", "partitions")

    def __init__(
        self,
        session_id: int,
        partitions: dict[Key, CachedPartition],
        now: float,
    ) -> None:
        self.id = session_id
        self.epoch = next_epoch(INITIAL_EPOCH)
        self.partitions = partitions
        self.created = now
        self.last_used = now

    def update(
        self, topics: Iterable[dict[str, Any]], forgotten: Iterable[dict[str, Any]]
    ) -> None:
        """Apply an incremental request: add or update what it names,
        remove what it forgets."""
        partitions = self.partitions
        for topic in topics:
            name = topic["topic"]
            for request in topic["partitions"]:
                key = (name, request["partition"])
                cached = partitions.get(key)
                if cached is None:
                    partitions[key] = _cached(name, request)
                else:
                    cached.fetch_offset = request["fetch_offset"]
                    cached.max_bytes = request["partition_max_bytes"]
                    cached.fetcher_log_start_offset = request.get(
                        "log_start_offset", -1
                    )
        for topic in forgotten:
            name = topic["topic"]
            for partition in topic["partitions"]:
                partitions.pop((name, partition), None)


SESSIONLESS = "sessionless"
CREATE = "create"
INCREMENTAL = "incremental"
ERROR = "error"


class FetchContext:
    """How one Fetch request is read and answered (see module docstring).

    ``entries()`` lists the partitions to read, in order; ``finish`` takes
    one result per entry (the FetchResponse partition dicts) and returns the
    answer's (error code, session id, topics). ``finish`` is called once,
    for the answer actually sent.
    """

    __slots__ = ("cache", "epoch", "error", "finished", "kind", "request", "session")

    def __init__(
        self,
        cache: FetchSessionCache,
        kind: str,
        *,
        request: list[CachedPartition] | None = None,
        session: FetchSession | None = None,
        error: int = 0,
    ) -> None:
        self.cache = cache
        self.kind = kind
        self.request = request or []
        self.session = session
        self.epoch = session.epoch if session is not None else 0
        self.error = error
        self.finished = False

    def entries(self) -> list[CachedPartition]:
        """The partitions to read now: the request's, or the session's."""
        if self.kind == INCREMENTAL:
            assert self.session is not None
            return list(self.session.partitions.values())
        return self.request

    def finish(
        self, entries: list[CachedPartition], results: list[dict[str, Any]]
    ) -> tuple[int, int, list[dict[str, Any]]]:
        """The answer for ``results`` (one per entry of ``entries``); updates
        or creates the session. Call once per request."""
        if self.finished:
            raise RuntimeError("a fetch context is finished once")
        self.finished = True

        if self.kind == ERROR:
            return self.error, INVALID_SESSION_ID, []
        if self.kind == SESSIONLESS:
            return 0, INVALID_SESSION_ID, _group(entries, results)
        if self.kind == CREATE:
            session_id = self.cache.create(entries, results)
            return 0, session_id, _group(entries, results)

        session = self.session
        assert session is not None
        if session.epoch != self.epoch:
            # Another request of this session arrived while this one was
            # parked (a client pipelining fetches): its answer owns the
            # session now.
            return ErrorCode.INVALID_FETCH_SESSION_EPOCH, session.id, []
        return 0, session.id, self._incremental(session, entries, results)

    @staticmethod
    def _incremental(
        session: FetchSession,
        entries: list[CachedPartition],
        results: list[dict[str, Any]],
    ) -> list[dict[str, Any]]:
        """Keep the results that changed; remember what is sent."""
        partitions = session.partitions
        kept_entries: list[CachedPartition] = []
        kept_results: list[dict[str, Any]] = []
        moved: list[Key] = []
        for entry, result in zip(entries, results, strict=True):
            send = False
            if has_records(result["records"]):
                send = True
                moved.append((entry.topic, entry.partition))
            if result["high_watermark"] != entry.high_watermark:
                send = True
                entry.high_watermark = result["high_watermark"]
            if result["log_start_offset"] != entry.log_start_offset:
                send = True
                entry.log_start_offset = result["log_start_offset"]
            if result["error_code"]:
                # Sent every time, and once more when the error clears.
                send = True
                entry.high_watermark = -1
            if send:
                kept_entries.append(entry)
                kept_results.append(result)

        # Partitions that got records go last next time (fairness under the
        # response budget).
        for key in moved:
            cached = partitions.pop(key, None)
            if cached is not None:
                partitions[key] = cached
        return _group(kept_entries, kept_results)


class FetchSessionCache:
    """The sessions of one net process (see module docstring)."""

    def __init__(
        self,
        index: int,
        *,
        max_sessions: int = MAX_SESSIONS,
        max_partitions: int = MAX_CACHED_PARTITIONS,
        idle_s: float = IDLE_EVICTION_S,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 <= index <= INDEX_MASK:
            raise ValueError(f"net process index {index} does not fit a session id")
        self.index = index
        self.max_sessions = max_sessions
        self.max_partitions = max_partitions
        self.idle_s = idle_s
        self.clock = clock
        self.rng = rng or random.Random()
        # Least recently used first.
        self.sessions: OrderedDict[int, FetchSession] = OrderedDict()
        self.cached_partitions = 0

    def __len__(self) -> int:
        return len(self.sessions)

    # -- requests -----------------------------------------------------------------

    def new_context(
        self,
        session_id: int,
        epoch: int,
        topics: list[dict[str, Any]],
        forgotten: list[dict[str, Any]],
    ) -> FetchContext:
        """Check a Fetch request's session metadata and apply its changes."""
        now = self.clock()
        self._expire(now)

        if epoch in (INITIAL_EPOCH, FINAL_EPOCH):
            if session_id != INVALID_SESSION_ID:
                self.close(session_id, "closed by the client")
            kind = CREATE if epoch == INITIAL_EPOCH else SESSIONLESS
            return FetchContext(self, kind, request=_request_entries(topics))

        session = self.sessions.get(session_id)
        if session is None:
            event(
                logger,
                logging.DEBUG,
                "fetch_session.not_found",
                session_id=session_id,
                issued_by=process_index(session_id),
                process=self.index,
            )
            return self._error(ErrorCode.FETCH_SESSION_ID_NOT_FOUND)
        if epoch != session.epoch:
            event(
                logger,
                logging.DEBUG,
                "fetch_session.bad_epoch",
                session_id=session_id,
                epoch=epoch,
                expected=session.epoch,
            )
            return self._error(ErrorCode.INVALID_FETCH_SESSION_EPOCH)

        before = len(session.partitions)
        session.update(topics, forgotten)
        self.cached_partitions += len(session.partitions) - before
        if not session.partitions:
            # Everything forgotten: the session ends, as in Kafka, and this
            # fetch is answered without one.
            self.close(session_id, "no partitions left")
            return FetchContext(self, SESSIONLESS, request=_request_entries(topics))
        if self.cached_partitions > self.max_partitions:
            self.close(session_id, "cached partitions at their maximum")
            return self._error(ErrorCode.FETCH_SESSION_ID_NOT_FOUND)

        session.epoch = next_epoch(session.epoch)
        session.last_used = now
        self.sessions.move_to_end(session_id)
        return FetchContext(self, INCREMENTAL, session=session)

    def _error(self, code: int) -> FetchContext:
        return FetchContext(self, ERROR, error=code)

    # -- sessions -----------------------------------------------------------------

    def create(
        self, entries: list[CachedPartition], results: list[dict[str, Any]]
    ) -> int:
        """A new session for a full fetch's answer; its id, or 0 when the
        cache has no room for it."""
        partitions: dict[Key, CachedPartition] = {}
        for entry, result in zip(entries, results, strict=True):
            if result["error_code"]:
                entry.high_watermark = -1
            else:
                entry.high_watermark = result["high_watermark"]
            entry.log_start_offset = result["log_start_offset"]
            partitions[(entry.topic, entry.partition)] = entry

        now = self.clock()
        self._expire(now)
        session_id = self._new_id()
        if session_id == INVALID_SESSION_ID or not self._make_room(
            len(partitions), now
        ):
            event(
                logger,
                logging.DEBUG,
                "fetch_session.not_created",
                partitions=len(partitions),
                sessions=len(self.sessions),
                cached_partitions=self.cached_partitions,
            )
            return INVALID_SESSION_ID

        self.sessions[session_id] = FetchSession(session_id, partitions, now)
        self.cached_partitions += len(partitions)
        event(
            logger,
            logging.DEBUG,
            "fetch_session.created",
            session_id=session_id,
            partitions=len(partitions),
        )
        return session_id

    def close(self, session_id: int, reason: str) -> None:
        session = self.sessions.pop(session_id, None)
        if session is None:
            return
        self.cached_partitions -= len(session.partitions)
        event(
            logger,
            logging.DEBUG,
            "fetch_session.closed",
            session_id=session_id,
            reason=reason,
        )

    def _expire(self, now: float) -> None:
        """Remove the sessions idle for ``idle_s`` (oldest first, so this
        looks at one session when none is idle)."""
        sessions = self.sessions
        while sessions:
            oldest = next(iter(sessions.values()))
            if now - oldest.last_used < self.idle_s:
                return
            self.close(oldest.id, "idle")

    def _make_room(self, size: int, now: float) -> bool:
        """Whether a session of ``size`` partitions fits, evicting one
        smaller session older than ``idle_s`` if the count is at its max
        (the smallest; of equal ones, the least recently used)."""
        if self.cached_partitions + size > self.max_partitions:
            return False
        if len(self.sessions) < self.max_sessions:
            return True
        victim: FetchSession | None = None
        for session in self.sessions.values():
            if now - session.created < self.idle_s:
                continue
            if victim is None or len(session.partitions) < len(victim.partitions):
                victim = session
        if victim is None or len(victim.partitions) >= size:
            return False
        self.close(victim.id, "evicted by a larger session")
        return True

    def _new_id(self) -> int:
        for _ in range(ID_ATTEMPTS):
            serial = self.rng.randrange(1, 1 << (31 - INDEX_BITS))
            session_id = (serial << INDEX_BITS) | self.index
            if session_id not in self.sessions:
                return session_id
        return INVALID_SESSION_ID


def _cached(topic: str, request: dict[str, Any]) -> CachedPartition:
    return CachedPartition(
        topic,
        request["partition"],
        request["fetch_offset"],
        request["partition_max_bytes"],
        request.get("log_start_offset", -1),
    )


def _request_entries(topics: list[dict[str, Any]]) -> list[CachedPartition]:
    return [
        _cached(topic["topic"], request)
        for topic in topics
        for request in topic["partitions"]
    ]


def _group(
    entries: list[CachedPartition], results: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """FetchResponse topics: consecutive partitions of one topic together."""
    topics: list[dict[str, Any]] = []
    name: str | None = None
    partitions: list[dict[str, Any]] = []
    for entry, result in zip(entries, results, strict=True):
        if entry.topic != name:
            name = entry.topic
            partitions = []
            topics.append({"topic": name, "partitions": partitions})
        partitions.append(result)
    return topics
