"""``python -m metrics``: the metrics process (see ``metrics.process``)."""

from broker.process import run_child
from metrics.process import main

run_child(main)
