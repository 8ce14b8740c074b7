"""The peers subcommand without servers: skips, option checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from perf.__main__ import COMMANDS
from perf.cli import main
from perf.peers import missing_requirement
from perf.report import load_json


def test_missing_requirement_names_a_missing_binary_and_how_to_install_it() -> None:
    reason = missing_requirement(
        ("no-such-server-binary",), "json", "apt-get install no-such"
    )
    assert reason == "no-such-server-binary is not installed (apt-get install no-such)"


def test_missing_requirement_names_a_missing_python_module() -> None:
    reason = missing_requirement((), "no_such_client_module", "x")
    assert reason is not None
    assert "no_such_client_module is not installed" in reason


def test_missing_requirement_is_none_when_everything_is_there() -> None:
    assert missing_requirement(("sh",), "json", "x") is None


def test_peers_skips_every_system_that_is_not_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An empty PATH: neither redis-server nor nats-server can be found.
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))

    code = main(
        ["peers", "--out", str(tmp_path), "--name", "p", "--no-progress"], COMMANDS
    )

    assert code == 0
    document = load_json(tmp_path / "p.json")
    assert document["measurements"] == []
    assert {s["name"] for s in document["skipped"]} == {"redis", "nats"}
    assert all("is not installed" in s["reason"] for s in document["skipped"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--systems", "redis,kafka"], "unknown system(s) ['kafka']"),
        (["--sizes", "4"], "every size must be at least 8 bytes"),
    ],
)
def test_peers_rejects_bad_systems_and_sizes(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["peers", *argv, "--out", str(tmp_path), "--no-progress"], COMMANDS)
    assert code == 1
    assert message in capsys.readouterr().err
