"""Cross-process wake-ups: one ``Notifier`` over one Linux eventfd.

An eventfd is a kernel 64-bit counter behind a file descriptor: ``notify()``
adds 1, ``drain()`` reads and zeroes it, and the descriptor is readable
while the counter is non-zero, so it works with ``select.poll`` and with an
event loop's ``add_reader``. Flags: ``EFD_NONBLOCK`` so ``drain()`` in an
event loop callback never blocks, ``EFD_CLOEXEC`` so it reaches only the
children it is passed to (``subprocess.Popen(pass_fds=...)`` clears the flag
in that child). No ``EFD_SEMAPHORE``: one drain consumes every pending
wake-up, which is what a batch receiver wants.

Who imports it: the supervisor creates notifiers and passes their
descriptors to children; children rebuild them with ``Notifier(fd)``. Rings
use them to wake a waiting receiver or sender.

Not safe: one process should drain a given notifier; two drainers steal each
other's wake-ups. A notifier carries no data, only "look again".
"""

from __future__ import annotations

import contextlib
import math
import os
import select

EVENTFD_LINK = "anon_inode:[eventfd]"


class Notifier:
    """A wake-up channel. ``Notifier.create()`` makes a new eventfd;
    ``Notifier(fd)`` adopts one inherited from the supervisor."""

    def __init__(self, fd: int) -> None:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            raise ValueError(f"notifier fd {fd} is not an open descriptor") from None
        if target != EVENTFD_LINK:
            raise ValueError(
                f"notifier fd {fd} is {target!r}, not an eventfd (was it passed"
                " with pass_fds?)"
            )

        # The flag lives on the shared open file; set it again in case the
        # creator was not this module.
        os.set_blocking(fd, False)
        self._fd = fd
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)

    @classmethod
    def create(cls) -> Notifier:
        """A new eventfd with a zero counter."""
        return cls(os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC))

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError("notifier is closed")
        return self._fd

    def notify(self) -> None:
        """Wake the other side (one write syscall)."""
        # At the counter's maximum a wake-up is pending anyway.
        with contextlib.suppress(BlockingIOError):
            os.eventfd_write(self._fd, 1)

    def drain(self) -> int:
        """Consume pending wake-ups; return how many there were (0 if none)."""
        try:
            return os.eventfd_read(self._fd)
        except BlockingIOError:
            return 0

    def wait(self, timeout: float | None) -> bool:
        """Block until notified or ``timeout`` seconds pass (None: no limit).

        Returns True and drains the counter if a wake-up arrived.
        """
        milliseconds = -1 if timeout is None else max(0, math.ceil(timeout * 1000))

        # poll() retries on EINTR with the remaining time (PEP 475).
        if not self._poll.poll(milliseconds):
            return False
        return self.drain() > 0

    def close(self) -> None:
        if self._fd >= 0:
            self._poll.unregister(self._fd)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Notifier(fd={self._fd})"
