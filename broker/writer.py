"""The writer process: the single appender of every partition log.

Started by the supervisor as ``python -m broker.writer --plan <json>``; it
attaches to the broker's shared memory, takes the receiving side of every
produce ring and the sending side of every completion ring, opens every
partition log and runs loop turns (``broker.writer_core``) until SIGTERM.

Loop: a turn while descriptors arrive; when none are waiting, sleep on
``writer_wake`` (a net process writes it only when this process has set a
ring's waiting flag) for at most WAIT_S, so the heartbeat, the periodic
checkpoint (every RINGBUS_FLUSH_MS), retention (every 10 s), metadata
changes and the reopening of offline partitions run on an idle broker too.
The periodic checkpoint's fdatasyncs and state files run in a flusher
thread (``broker.writer_partitions.CheckpointFlusher``); the loop only
hands it the partitions written since their last checkpoint.

Restart while the supervisor lives (killed, crashed, hung): the rings and
the commit record survive in shared memory; the new process cuts each log
back to its commit record and completes or re-applies what the rings still
hold (see ``broker.commit_record`` and ``broker.writer_core``), so nothing
acknowledged is lost and nothing is appended twice.

SIGTERM: the turn in progress finishes, the flusher thread finishes its
queued checkpoints, then every log is checkpointed (fdatasync, clean
point), producer state is snapshotted, and the process exits 0.
"""

from __future__ import annotations

import gc
import logging
import time

from broker.logs import event
from broker.process import ChildRuntime, run_child
from broker.writer_core import WriterCore

logger = logging.getLogger(__name__)

# Longest sleep without descriptors; bounds the delay of the background
# work and of noticing SIGTERM. The heartbeat needs one beat per 0.5 s.
WAIT_S = 0.05
BEAT_INTERVAL_S = 0.1


def main(runtime: ChildRuntime) -> int:
    core = WriterCore.from_memory(
        runtime.memory,
        runtime.settings,
        slot=runtime.counters,
        should_stop=lambda: runtime.stopping,
        beat=runtime.beat,
    )
    try:
        core.start()
        # Everything allocated so far lives as long as the process: keep the
        # cyclic GC from rescanning it (measured: about 5 % of a turn's CPU
        # at 16 KiB batches).
        gc.freeze()
        next_beat = 0.0
        # Bounded by SIGTERM (stopping) or the supervisor's death.
        while not runtime.stopping:
            handled = core.turn()
            now = time.monotonic()
            if now >= next_beat:
                runtime.beat()
                next_beat = now + BEAT_INTERVAL_S
                if not runtime.parent_alive():
                    break
                core.background(now)
            if not handled:
                core.wait(WAIT_S)
    finally:
        core.close()
    statistics = core.statistics()
    event(
        logger,
        logging.INFO,
        "writer.stopped",
        turns=statistics.turns,
        batches=statistics.batches,
        bytes=statistics.bytes,
        fsyncs=statistics.fsyncs,
    )
    return 0


if __name__ == "__main__":
    run_child(main)
