"""Entry point: ``python -m perf <command>`` from the repository root.

The registry is the ``COMMANDS`` tuple. A new load generator is a module
exposing a ``perf.cli.Command`` named ``COMMAND``, added here; the shared
options and the JSON/table/plot outputs come with it.
"""

from __future__ import annotations

from perf import compare, consume, hops, latency, limits, peers, produce, scale
from perf.cli import Command, run_from_command_line

COMMANDS: tuple[Command, ...] = (
    limits.COMMAND,
    peers.COMMAND,
    produce.COMMAND,
    consume.COMMAND,
    latency.COMMAND,
    hops.COMMAND,
    compare.COMMAND,
    scale.COMMAND,
)

if __name__ == "__main__":
    run_from_command_line(COMMANDS)
