"""The memory-ordering assumptions of shm/, the platform check and the fence.

Rings, tables and counters share plain memory between processes with no
locks. They are correct on x86-64 for the reasons below, and only there:
other architectures (ARM, POWER) reorder stores and loads far more freely
and would need explicit acquire/release barriers that Python cannot issue,
so ``check_platform()`` refuses them when a block is created or attached.

1. Atomic 8-byte accesses. x86-64 guarantees that a load or store of a
   quadword aligned on an 8-byte boundary is atomic (Intel SDM vol. 3A,
   "Guaranteed Atomic Operations"). Every shared int64 here lives in a numpy
   array whose offset in the block is a multiple of 8 and the block itself is
   page aligned (mmap). For an aligned native-order int64 element numpy
   stores with one 8-byte move (numpy 2.4's ``LONG_setitem`` ends in a single
   ``movq``, checked under a hardware watchpoint) and loads with one move.
   The rings' per-batch path uses an int64 memoryview (``cast("q")``)
   instead, which is cheaper per access: CPython 3.11's ``pack_single``
   stores a 'q' item with one ``mov %r14,(%r12)`` and ``memory_item`` loads
   it with one ``mov (%rdi),%rdi`` (both seen under gdb hardware
   watchpoints on CPython 3.11.7; ``memcpy`` of a constant 8 bytes, which
   the C source uses, compiles to a single move at -O2 and above). Bytes
   that only become visible through a later head store (payloads,
   descriptor rows, written by memcpy or ``struct.pack_into``) need no
   atomicity.

2. Ordering (TSO, SDM "Memory Ordering in P6 and More Recent Processor
   Families"): loads are not reordered with other loads, stores are not
   reordered with other stores, stores are not reordered with older loads.
   So "write payload and descriptor, then store head" is seen by another
   core in that order, and "load head, then read descriptor and payload"
   never reads data older than the head it saw. The compiler cannot move
   these accesses either: each Python-level store is a separate call from
   the interpreter into numpy, ``struct`` or the memoryview code, opaque to
   the C compiler of the other calls.

3. The one reordering x86 does allow: a load may complete before an older
   store to a different address leaves the store buffer. The wake-up
   handshake is exactly that pattern (Dekker): the waiter stores its waiting
   flag then loads head; the other side stores head then loads the flag.
   Without a fence both loads can see the old values, the waiter sleeps and
   nobody wakes it. ``full_fence()`` closes that: it acquires and releases
   an uncontended ``threading.Lock``, which executes LOCK-prefixed
   compare-exchange instructions (glibc ``sem_trywait``/``sem_post`` under
   CPython 3.11/3.12, an atomic compare-exchange on the lock byte from
   3.13), and a locked instruction is a full barrier on x86-64: no load
   after it completes before every store before it is globally visible.
   It costs about 65 ns, paid once per publish or release, never per
   descriptor. Waiters also sleep in bounded slices and re-check, so even a
   wake-up missed through some unforeseen path costs at most one slice.
"""

from __future__ import annotations

import platform
import sys
import threading

SUPPORTED_MACHINES = frozenset({"x86_64", "amd64", "AMD64"})


class UnsupportedPlatformError(RuntimeError):
    """Shared-memory structures were used on a CPU they are not proven on."""


def check_platform() -> None:
    """Raise ``UnsupportedPlatformError`` unless running on x86-64."""
    # LIMITATION: x86-64 only; ARM and POWER need acquire/release barriers
    # that Python cannot issue, so they are refused rather than risked.
    machine = platform.machine()
    if machine not in SUPPORTED_MACHINES or sys.byteorder != "little":
        raise UnsupportedPlatformError(
            f"shm rings and tables rely on x86-64 store ordering (TSO) and"
            f" atomic aligned 8-byte accesses; this machine is {machine!r}"
            f" ({sys.byteorder}-endian), which is not supported"
        )


_fence_lock = threading.Lock()


def full_fence() -> None:
    """A full memory barrier between earlier stores and later loads."""
    _fence_lock.acquire()
    _fence_lock.release()
