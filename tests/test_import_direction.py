"""The layering rules of the package graph, checked on the source.

shm/ is a foundation with no Kafka or broker knowledge; net/ and metrics/
are peers that must not reach into each other; broker/ builds on shm/ and
on the pure Kafka codec net.kafka (error codes, message encoding), but on no
other part of net/ and not on metrics/.
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
# Exceptions to FORBIDDEN: module prefixes a package may import after all.
ALLOWED = {"broker": ("net.kafka",)}

# The codec is sans-IO: it must not import anything that does I/O.
CODEC_FORBIDDEN = {"asyncio", "uvloop", "socket", "multiprocessing", "broker", "shm"}


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _violations(package: str, modules: set[str]) -> set[str]:
    allowed = ALLOWED.get(package, ())
    return {
        module
        for module in modules
        if module.split(".")[0] in FORBIDDEN[package]
        and not any(module == a or module.startswith(a + ".") for a in allowed)
    }


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_allowed_layers(package: str) -> None:
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = _violations(package, _imported_modules(path))
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, "\n".join(offenders)


def test_kafka_codec_imports_nothing_that_does_io() -> None:
    offenders = []
    for path in sorted((ROOT / "net" / "kafka").rglob("*.py")):
        bad = {m for m in _imported_modules(path) if m.split(".")[0] in CODEC_FORBIDDEN}
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, "\n".join(offenders)


def test_import_scan_sees_a_forbidden_import(tmp_path: Path) -> None:
    # Guard against a scanner that would silently pass everything.
    sample = tmp_path / "sample.py"
    sample.write_text("import net.server\nfrom metrics import api\nimport os\n")
    modules = _imported_modules(sample)
    assert modules == {"net.server", "metrics", "os"}
    assert _violations("broker", modules) == {"net.server", "metrics"}
    assert _violations("broker", {"net.kafka.errors"}) == set()
