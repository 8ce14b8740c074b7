"""The codec is sans-IO: importing it loads no event loop, socket, process,
broker or metrics module."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
FORBIDDEN = ("asyncio", "uvloop", "socket", "multiprocessing", "broker", "metrics")


def test_codec_modules_import_no_io_process_or_metrics_modules() -> None:
    code = (
        "import json, sys\n"
        "import net.kafka, net.kafka.codec, net.kafka.framing, net.kafka.versions\n"
        "import net.kafka.errors, net.kafka.codec_errors\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    loaded = json.loads(result.stdout)
    bad = [m for m in loaded if m.split(".")[0] in FORBIDDEN or m == "_socket"]
    assert bad == []
    assert "net.kafka.codec" in loaded
