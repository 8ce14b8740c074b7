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


def event(
    logger: logging.Logger,
    level: int,
    name: str,
    *,
    exc_info: bool = False,
    **fields: Any,
) -> None:
    """Log the event ``name`` with its fields, if ``level`` is enabled."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"fields": fields}, exc_info=exc_info)
