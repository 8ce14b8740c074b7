"""The writer process: the single appender of every partition log.

This module is the process entry point. For now its loop only keeps the
process alive and its heartbeat fresh while it waits on its wake-up eventfd.

# TODO(storage): drain the produce rings, append batches with one writev per
# partition per turn, fsync by policy and post completions; see the log
# storage issue. Until then produced batches are not stored.
"""

from __future__ import annotations

from broker.process import HEARTBEAT_INTERVAL_S, ChildRuntime, run_child


def main(runtime: ChildRuntime) -> int:
    wake = runtime.memory.writer_wake
    while not runtime.stopping and runtime.parent_alive():
        if wake.wait(HEARTBEAT_INTERVAL_S):
            wake.drain()
        runtime.beat()
    return 0


if __name__ == "__main__":
    run_child(main)
