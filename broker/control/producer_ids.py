"""Producer ids for idempotent producers (InitProducerId): unique for the
life of the data directory, across restarts and crashes.

Ids are handed out from blocks. The end of the current block (exclusive)
is persisted in ``<data>/__ringbus/producer-ids.json`` *before* any id of
the block is used, written atomically (temporary file, fsync, rename, fsync
of the directory). On start the next id is that persisted end, so ids of a
block that was only partly used are skipped, never repeated.

Document layout::

    {"next_block_start": 3000}

Imported by the control process only; not thread-safe.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from broker.logs import event

logger = logging.getLogger(__name__)

PRODUCER_IDS_FILE = Path("__ringbus") / "producer-ids.json"

# Ids per persisted block: one fsync'ed write per thousand producers; a
# restart skips at most this many ids of 2**63.
BLOCK_SIZE = 1000


class ProducerIdError(Exception):
    """The producer id file cannot be read or written."""


class ProducerIdAllocator:
    """Hands out producer ids; see the module docstring."""

    def __init__(self, data_dir: Path, block_size: int = BLOCK_SIZE) -> None:
        self.path = data_dir / PRODUCER_IDS_FILE
        self.block_size = block_size
        self._next = 0
        self._block_end = 0

    @classmethod
    def open(cls, data_dir: Path, block_size: int = BLOCK_SIZE) -> ProducerIdAllocator:
        allocator = cls(data_dir, block_size)
        try:
            document = json.loads(allocator.path.read_text())
            start = int(document["next_block_start"])
        except FileNotFoundError:
            start = 0
        except (ValueError, KeyError, TypeError) as exc:
            raise ProducerIdError(
                f"{allocator.path}: unreadable ({exc}); producer ids cannot be"
                " proven unique without it"
            ) from exc
        if start < 0:
            raise ProducerIdError(
                f"{allocator.path}: negative next_block_start {start}"
            )
        allocator._next = allocator._block_end = start
        return allocator

    def allocate(self) -> int:
        """The next unused producer id (persists a new block when needed)."""
        if self._next >= self._block_end:
            self._reserve(self._next + self.block_size)
        producer_id = self._next
        self._next += 1
        return producer_id

    def _reserve(self, end: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        try:
            with temporary.open("w") as file:
                json.dump({"next_block_start": end}, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as exc:
            raise ProducerIdError(
                f"{self.path}: cannot persist: {exc.strerror}"
            ) from exc
        self._block_end = end
        event(
            logger,
            logging.INFO,
            "producer_ids.block_reserved",
            first=self._next,
            end=end,
        )
