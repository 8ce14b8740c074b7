"""``python -m broker.control``: the control process entry point.

# TODO(control): serve forwarded admin and group requests on the inherited
# Unix listener; until then the process only keeps its heartbeat.
"""

from __future__ import annotations

import time

from broker.process import HEARTBEAT_INTERVAL_S, ChildRuntime, run_child


def main(runtime: ChildRuntime) -> int:
    while not runtime.stopping and runtime.parent_alive():
        time.sleep(HEARTBEAT_INTERVAL_S)
        runtime.beat()
    return 0


run_child(main)
