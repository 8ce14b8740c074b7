"""Log storage: record batch checks, segments, indexes and partition logs.

Pure storage code with no processes or sockets: the writer process drives
:class:`PartitionLog`; net processes use :mod:`broker.log.batch` to check
produced batches and :class:`SegmentReader` to find fetch positions.
"""

from broker.log.batch import BatchError, InvalidBatch, build_batch, validate_batch
from broker.log.partition import (
    LogConfig,
    LogStorageError,
    OffsetOutOfRangeError,
    PartitionLog,
    ReadPosition,
    RecoveryReport,
)
from broker.log.segment import BatchColumns, SegmentReader, list_segment_base_offsets

__all__ = [
    "BatchColumns",
    "BatchError",
    "InvalidBatch",
    "LogConfig",
    "LogStorageError",
    "OffsetOutOfRangeError",
    "PartitionLog",
    "ReadPosition",
    "RecoveryReport",
    "SegmentReader",
    "build_batch",
    "list_segment_base_offsets",
    "validate_batch",
]
