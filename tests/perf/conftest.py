"""The perf harness tests import ``perf`` from the repository root."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    # perf/ is not an installed package; it runs from the repository root.
    sys.path.insert(0, str(ROOT))
