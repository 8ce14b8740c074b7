"""Structured logging: one line per event, ``key=value`` fields.

Every line reads ``<time> <level> <role> <event> key=value ...`` where the
event name is a stable ``<component>.<event>`` identifier. Operators grep
and alert on event names, so a name, once used, keeps its meaning. Values
with spaces or quotes are quoted, so a line always splits back into fields.

Levels follow who must act: DEBUG for per-request detail and peers'
mistakes, INFO for lifecycle, WARNING for recovered damage, ERROR for a
stopped component or possibly lost work.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

_role = "main"


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        return (
            '"'
            + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
            + '"'
        )
    return text


class _EventFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        seconds = record.created
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        millis = int((seconds - int(seconds)) * 1000)
        fields: dict[str, Any] = getattr(record, "fields", {})
        parts = [
            f"{stamp}.{millis:03d}Z",
            record.levelname,
            _role,
            record.getMessage(),
        ]
        parts.extend(f"{key}={_quote(value)}" for key, value in fields.items())
        line = " ".join(parts)
        if record.exc_info:
            # The traceback follows on its own lines, indented, so the event
            # line itself stays one line.
            trace = self.formatException(record.exc_info)
            line += "\n" + "\n".join("    " + t for t in trace.splitlines())
        return line


def configure(level: str, role: str) -> None:
    """Send this process's log lines to stderr, tagged with its role."""
    global _role
    _role = role
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_EventFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class RateLimit:
    """At most ``burst`` lines per ``period_s`` for one event on a hot path.

    A misbehaving client can trigger a WARNING per request; past the burst,
    lines are dropped and counted, and the next line let through carries
    ``suppressed=<count>`` so nothing goes unaccounted.
    """

    def __init__(self, burst: int = 20, period_s: float = 1.0) -> None:
        self.burst = burst
        self.period_s = period_s
        self._window_start = 0.0
        self._in_window = 0
        self._suppressed = 0

    def admit(self) -> int | None:
        """None to drop this line; else how many were dropped before it."""
        now = time.monotonic()
        if now - self._window_start >= self.period_s:
            self._window_start = now
            self._in_window = 0
        if self._in_window >= self.burst:
            self._suppressed += 1
            return None
        self._in_window += 1
        dropped, self._suppressed = self._suppressed, 0
        return dropped


def event(
    logger: logging.Logger,
    level: int,
    name: str,
    *,
    exc_info: bool = False,
    rate_limit: RateLimit | None = None,
    **fields: Any,
) -> None:
    """Log the event ``name`` with its fields, if ``level`` is enabled."""
    if not logger.isEnabledFor(level):
        return
    if rate_limit is not None:
        dropped = rate_limit.admit()
        if dropped is None:
            return
        if dropped:
            fields["suppressed"] = dropped
    logger.log(level, name, extra={"fields": fields}, exc_info=exc_info)
