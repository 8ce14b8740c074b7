"""The layering rules of the package graph, checked on the source.

shm/ is a foundation with no Kafka or broker knowledge; net/ and metrics/
are peers that must not reach into each other; broker/ is what the process
entry points build on and must not depend on net/ or metrics/.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("broker", "shm", "net", "metrics")

FORBIDDEN = {
    "shm": {"broker", "net", "metrics"},
    "net": {"metrics"},
    "metrics": {"net"},
    "broker": {"net", "metrics"},
}


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_allowed_layers(package: str) -> None:
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = _imported_top_levels(path) & FORBIDDEN[package]
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, "\n".join(offenders)


def test_import_scan_sees_a_forbidden_import(tmp_path: Path) -> None:
    # Guard against a scanner that would silently pass everything.
    sample = tmp_path / "sample.py"
    sample.write_text("import net.kafka\nfrom metrics import api\nimport os\n")
    assert _imported_top_levels(sample) == {"net", "metrics", "os"}
