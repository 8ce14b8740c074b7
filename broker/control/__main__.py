"""``python -m broker.control``: the control process (see ``server``)."""

from __future__ import annotations

from broker.control.server import main
from broker.process import run_child

run_child(main)
