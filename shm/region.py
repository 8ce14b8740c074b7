"""Named shared-memory blocks: create, attach, close, unlink, stale clean-up.

A block is one POSIX shared-memory object (``/dev/shm/<name>``) opened through
``multiprocessing.shared_memory.SharedMemory``. Every block starts with a
header that says what it holds, so a process attaching by name can check that
it attaches to the structure and layout it expects before it reads a byte:

    offset  size  field
         0     8  magic           b"RINGBUS\\x01"; zero until the creator is done
         8     8  kind            ASCII, NUL padded ("ring", "table", ...)
        16     8  layout_version  int64, the structure's own layout version
        24     8  total_bytes     int64, header + body as created
        32     8  body_offset     int64, multiple of 64 (cache line)
        40     8  schema_bytes    int64, length of the schema text
        48     8  owner_pid       int64, process that created the block
        56     8  reserved
        64     n  schema          UTF-8 JSON object: the structure's sizes, dtypes,
                                  names; compared on attach
     body_offset  body            the structure (ring, table, counters)

Names are ``<prefix><suffix>``. The prefix is given by the caller (the
supervisor derives one per data directory, e.g. ``rb1a2b3c4d5e_``) so that
``unlink_stale(prefix)`` can find every block a killed owner left behind.

Invariants:
- The creator (the supervisor) is the only process that unlinks a block;
  children attach and close.
- The magic is written last, after the creating structure has initialised
  its body, so a block that shows the magic is complete.
- Blocks are never registered with ``multiprocessing.resource_tracker``.
  On Python 3.11 and 3.12 ``SharedMemory`` registers every block it opens,
  and the tracker unlinks registered blocks (with a warning) when the
  registering process exits, so a child that attaches and then exits or
  crashes would destroy the supervisor's rings. Registering and then
  unregistering would leave a window in which a ``kill -9`` of the child
  still triggers that unlink, and it starts a tracker process per child, so
  the registration is skipped instead (``track=False`` from Python 3.13 on).

Imported by the supervisor (create, unlink, stale clean-up) and by every
child (attach). Not safe: closing a block while numpy arrays or memoryviews
into it are alive raises ``RegionError`` (the mapping cannot be released);
structures drop their own views in their ``close()``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from multiprocessing import resource_tracker, shared_memory
from typing import Any

from shm.ordering import check_platform

MAGIC = b"RINGBUS\x01"
HEADER_FORMAT = "<8s8sqqqqqq"
HEADER_FIXED_BYTES = struct.calcsize(HEADER_FORMAT)
CACHE_LINE = 64
SHM_DIR = "/dev/shm"

# A prefix is a letter, 2 to 40 letters or digits, then "_": long enough that
# clean-up by prefix cannot sweep unrelated blocks, short enough for NAME_MAX.
PREFIX_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9]{2,40}_")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,200}")
KIND_PATTERN = re.compile(r"[a-z_]{1,8}")

assert HEADER_FIXED_BYTES == 64


class RegionError(Exception):
    """A shared-memory block could not be created, attached or closed."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"shared-memory block {name!r}: {message}")
        self.name = name


class RegionNotFoundError(RegionError):
    """No block of that name exists (its owner has not created it yet, or
    has unlinked it)."""


class RegionExistsError(RegionError):
    """A block of that name already exists."""


class RegionLayoutError(RegionError):
    """The block exists but holds something other than what the caller
    expects (kind, layout version, sizes or schema differ)."""


def align_up(value: int, alignment: int = CACHE_LINE) -> int:
    """``value`` rounded up to a multiple of ``alignment``."""
    return (value + alignment - 1) // alignment * alignment


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a valid block-name prefix, else raise."""
    if not PREFIX_PATTERN.fullmatch(prefix):
        raise ValueError(
            f"shared-memory prefix {prefix!r} must be a letter, 2 to 40 letters"
            " or digits, then '_' (e.g. 'rb1a2b3c4d5e_')"
        )
    return prefix


def block_name(prefix: str, suffix: str) -> str:
    """The name of block ``suffix`` under ``prefix``."""
    name = check_prefix(prefix) + suffix
    _check_name(name)
    return name


def _check_name(name: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"shared-memory block name {name!r} must be 1 to 201 characters of"
            " letters, digits, '_', '.', '-' and start with a letter or digit"
        )


# -- resource tracker ---------------------------------------------------------

_tracker_lock = threading.Lock()


@contextlib.contextmanager
def _untracked(name: str) -> Iterator[None]:
    """Keep ``SharedMemory`` from (un)registering ``name`` with the tracker.

    Python 3.11/3.12 have no ``track=False``; their ``SharedMemory`` calls
    the module-level ``register``/``unregister`` of ``resource_tracker``.
    For the duration of one open or unlink those two calls skip this block
    and pass every other resource through unchanged. The lock serialises
    threads that open blocks at the same time.
    """
    tracked_name = "/" + name

    def skip_ours(original: Callable[[Any, str], None]) -> Callable[..., None]:
        def call(resource: Any, rtype: str) -> None:
            if rtype == "shared_memory" and resource == tracked_name:
                return
            original(resource, rtype)

        return call

    with _tracker_lock:
        register, unregister = resource_tracker.register, resource_tracker.unregister
        resource_tracker.register = skip_ours(register)
        resource_tracker.unregister = skip_ours(unregister)
        try:
            yield
        finally:
            resource_tracker.register = register
            resource_tracker.unregister = unregister


class _Block(shared_memory.SharedMemory):
    """``SharedMemory`` that stays quiet when collected with views alive.

    A process that exits without closing its structures still holds numpy
    views; the base class would print "Exception ignored ... BufferError" at
    shutdown. The mapping goes away with the process either way.
    """

    def __del__(self) -> None:
        with contextlib.suppress(BufferError):
            self.close()


def _open_block(name: str, create: bool, size: int) -> shared_memory.SharedMemory:
    if sys.version_info >= (3, 13):
        return _Block(name=name, create=create, size=size, track=False)
    with _untracked(name):
        return _Block(name=name, create=create, size=size)


def _buffer(block: shared_memory.SharedMemory) -> memoryview:
    buf = block.buf
    if buf is None:
        raise ValueError(f"shared-memory block {block.name!r} is closed")
    return buf


def _unlink_block(block: shared_memory.SharedMemory, name: str) -> None:
    with _untracked(name):
        block.unlink()


# -- processes ----------------------------------------------------------------


def process_alive(pid: int) -> bool:
    """True if ``pid`` names a running process (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True

    # A killed child stays a zombie until its parent reaps it; its work is over.
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[-1].split()
    except OSError:
        return False
    return not fields or fields[0] not in (b"Z", b"X")


# -- the block ----------------------------------------------------------------


class Region:
    """One named shared-memory block with a validated header.

    ``body`` is a writable memoryview of the structure's bytes; ``schema`` is
    the JSON object the creator stored. Use ``create``/``attach``.
    """

    def __init__(
        self,
        block: shared_memory.SharedMemory,
        name: str,
        kind: str,
        schema: dict[str, Any],
        body_offset: int,
        total_bytes: int,
        owner: bool,
    ) -> None:
        self._block: shared_memory.SharedMemory | None = block
        self.name = name
        self.kind = kind
        self.schema = schema
        self.body_offset = body_offset
        self.total_bytes = total_bytes
        self.owner = owner
        self.buf: memoryview = _buffer(block)
        self.body: memoryview = self.buf[body_offset:total_bytes]

    @classmethod
    def create(
        cls,
        name: str,
        kind: str,
        layout_version: int,
        schema: dict[str, Any],
        body_bytes: int,
    ) -> Region:
        """Create a zero-filled block. The caller initialises the body and
        then calls ``mark_ready()``; until then attach refuses the block."""
        check_platform()
        _check_name(name)
        if not KIND_PATTERN.fullmatch(kind):
            raise ValueError(f"block kind {kind!r} must be 1-8 of a-z or '_'")
        if body_bytes < 0:
            raise ValueError(f"block {name!r}: body_bytes {body_bytes} is negative")

        schema_text = json.dumps(schema, sort_keys=True).encode()
        body_offset = align_up(HEADER_FIXED_BYTES + len(schema_text))
        total_bytes = body_offset + body_bytes
        try:
            block = _open_block(name, create=True, size=total_bytes)
        except FileExistsError:
            raise RegionExistsError(
                name,
                "already exists; if a previous owner was killed, remove its"
                " blocks with shm.region.unlink_stale(prefix)",
            ) from None

        # Everything but the magic: attach treats a zero magic as unfinished.
        buf = _buffer(block)
        struct.pack_into(
            HEADER_FORMAT,
            buf,
            0,
            b"\0" * 8,
            kind.encode(),
            layout_version,
            total_bytes,
            body_offset,
            len(schema_text),
            os.getpid(),
            0,
        )
        buf[HEADER_FIXED_BYTES : HEADER_FIXED_BYTES + len(schema_text)] = schema_text
        return cls(block, name, kind, schema, body_offset, total_bytes, owner=True)

    def prefault(self) -> None:
        """Touch every page of a block this process just created, before
        it holds data, so first-touch page faults (tens of microseconds a
        page on a virtual machine) are paid now and not on the data path."""
        if not self.owner or self.buf[0:8] == MAGIC:
            raise RegionError(self.name, "prefault only a block being created")
        page = os.sysconf("SC_PAGE_SIZE")
        for offset in range(0, self.total_bytes, page):
            self.buf[offset] = self.buf[offset]

    def mark_ready(self) -> None:
        """Write the magic: the body is initialised and attach may proceed."""
        self.buf[0:8] = MAGIC

    @classmethod
    def attach(cls, name: str, kind: str, layout_version: int) -> Region:
        """Attach to an existing block, checking magic, kind, version, sizes."""
        check_platform()
        _check_name(name)
        try:
            block = _open_block(name, create=False, size=0)
        except FileNotFoundError:
            raise RegionNotFoundError(
                name, f"does not exist (expected a {kind} created by the supervisor)"
            ) from None
        try:
            region = cls._validated(block, name, kind, layout_version)
        except BaseException:
            block.close()
            raise
        return region

    @classmethod
    def _validated(
        cls,
        block: shared_memory.SharedMemory,
        name: str,
        kind: str,
        layout_version: int,
    ) -> Region:
        mapped = block.size
        if mapped < HEADER_FIXED_BYTES:
            raise RegionLayoutError(
                name, f"is {mapped} bytes, too small for the 64-byte header"
            )

        (
            magic,
            stored_kind,
            stored_version,
            total_bytes,
            body_offset,
            schema_bytes,
            _owner_pid,
            _reserved,
        ) = struct.unpack_from(HEADER_FORMAT, _buffer(block), 0)
        if magic == b"\0" * 8:
            raise RegionLayoutError(
                name,
                "is not initialised (its creator has not finished, or died"
                " while creating it)",
            )
        if magic != MAGIC:
            raise RegionLayoutError(
                name, f"has magic {magic!r}, expected {MAGIC!r}: not a Ringbus block"
            )

        found_kind = stored_kind.rstrip(b"\0").decode("ascii", "replace")
        if found_kind != kind:
            raise RegionLayoutError(name, f"holds a {found_kind!r}, expected {kind!r}")
        if stored_version != layout_version:
            raise RegionLayoutError(
                name,
                f"has {kind} layout version {stored_version}, this code reads"
                f" version {layout_version} (processes from different releases?)",
            )
        schema_end = HEADER_FIXED_BYTES + schema_bytes
        if not (
            schema_end <= body_offset <= total_bytes <= mapped
            and body_offset % CACHE_LINE == 0
        ):
            raise RegionLayoutError(
                name,
                f"header sizes are inconsistent (schema {schema_bytes}, body at"
                f" {body_offset}, total {total_bytes}, mapped {mapped})",
            )

        try:
            schema = json.loads(bytes(_buffer(block)[HEADER_FIXED_BYTES:schema_end]))
        except ValueError as exc:
            raise RegionLayoutError(name, f"schema is not valid JSON: {exc}") from None
        if not isinstance(schema, dict):
            raise RegionLayoutError(name, "schema is not a JSON object")
        return cls(block, name, kind, schema, body_offset, total_bytes, owner=False)

    def expect(self, key: str, expected: Any) -> None:
        """Raise ``RegionLayoutError`` unless ``schema[key] == expected``."""
        found = self.schema.get(key)
        if found != expected:
            raise RegionLayoutError(
                self.name, f"{self.kind} {key} is {found!r}, expected {expected!r}"
            )

    @property
    def owner_pid(self) -> int:
        pid: int = struct.unpack_from("<q", self.buf, 48)[0]
        return pid

    @property
    def closed(self) -> bool:
        return self._block is None

    def close(self) -> None:
        """Unmap the block. Raises ``RegionError`` while views into it live."""
        block = self._block
        if block is None:
            return

        try:
            self.body.release()
            block.close()
        except BufferError:
            raise RegionError(
                self.name,
                "cannot be closed: numpy arrays or memoryviews into it are still"
                " alive (drop received descriptors and payload views first)",
            ) from None
        self._block = None

    def unlink(self) -> None:
        """Remove the name (owner only); mappings stay valid until closed."""
        if not self.owner:
            raise RegionError(
                self.name, "only its creator unlinks a block; children close it"
            )
        block = self._block
        if block is None:
            _unlink_name(self.name)
            return
        with contextlib.suppress(FileNotFoundError):
            _unlink_block(block, self.name)


def _unlink_name(name: str) -> bool:
    try:
        os.unlink(os.path.join(SHM_DIR, name))
    except FileNotFoundError:
        return False
    return True


# -- clean-up by prefix ---------------------------------------------------------


def list_blocks(prefix: str) -> list[str]:
    """Names of every block under ``prefix``, sorted."""
    check_prefix(prefix)
    try:
        entries = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return []
    return sorted(entry for entry in entries if entry.startswith(prefix))


def _read_owner_pid(name: str) -> int | None:
    """The owner pid of a block with a complete header, else None."""
    try:
        with open(os.path.join(SHM_DIR, name), "rb") as block:
            header = block.read(HEADER_FIXED_BYTES)
    except OSError:
        return None
    if len(header) < HEADER_FIXED_BYTES or header[:8] != MAGIC:
        return None
    pid: int = struct.unpack_from("<q", header, 48)[0]
    return pid


def unlink_stale(prefix: str, *, include_live_owners: bool = False) -> list[str]:
    """Unlink the blocks under ``prefix`` whose creator is no longer running.

    Blocks without a complete header (the owner died while creating them)
    count as stale. A block whose owner pid is alive is kept unless
    ``include_live_owners``; a pid reused by an unrelated process therefore
    keeps a stale block until the caller forces it. Returns the removed names.
    """
    # LIMITATION: a dead owner's pid reused by another process makes its
    # blocks look live; they stay in /dev/shm until include_live_owners=True.
    removed = []
    for name in list_blocks(prefix):
        owner_pid = _read_owner_pid(name)
        if (
            not include_live_owners
            and owner_pid is not None
            and process_alive(owner_pid)
        ):
            continue
        if _unlink_name(name):
            removed.append(name)
    return removed
