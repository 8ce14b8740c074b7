"""``python -m net``: a network I/O process (see ``net.server``)."""

from broker.process import run_child
from net.server import main

run_child(main)
