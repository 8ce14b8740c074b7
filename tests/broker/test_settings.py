"""Settings: defaults, parsing, and the one-line error for a bad value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from broker.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_settings_defaults_match_the_documented_interface() -> None:
    settings = load_settings({})
    assert settings.host == "127.0.0.1"
    assert settings.kafka_port == 9092
    assert settings.http_port == 9644
    assert settings.advertised == "127.0.0.1"
    assert settings.net_procs >= 1
    assert settings.index_interval_bytes == 4096


def test_settings_parse_typed_values() -> None:
    settings = load_settings(
        {
            "RINGBUS_KAFKA_PORT": "19092",
            "RINGBUS_AUTO_CREATE_TOPICS": "false",
            "RINGBUS_LOG_LEVEL": "debug",
            "RINGBUS_ADVERTISED_HOST": "broker.example",
            "RINGBUS_NET_PROCS": "3",
        }
    )
    assert settings.kafka_port == 19092
    assert settings.auto_create_topics is False
    assert settings.log_level == "DEBUG"
    assert settings.advertised == "broker.example"
    assert settings.net_procs == 3


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("RINGBUS_KAFKA_PORT", "abc", "valid integer"),
        ("RINGBUS_KAFKA_PORT", "70000", "less than or equal to 65535"),
        ("RINGBUS_NET_PROCS", "0", "greater than or equal to 1"),
        ("RINGBUS_LOG_LEVEL", "LOUD", "'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
        ("RINGBUS_AUTO_CREATE_TOPICS", "maybe", "valid boolean"),
        ("RINGBUS_RETENTION_BYTES", "0", "-1 or positive"),
        ("RINGBUS_KAFAK_PORT", "9092", "unknown setting"),
    ],
)
def test_settings_reject_bad_value_naming_variable(
    variable: str, value: str, expected: str
) -> None:
    with pytest.raises(SettingsError, match=expected) as info:
        load_settings({variable: value})
    assert info.value.variable == variable
    assert info.value.value == value
    assert f"{variable}={value!r}" in str(info.value)


def test_broker_exits_2_with_one_line_on_bad_setting(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "RINGBUS_KAFKA_PORT": "not-a-port"}
    result = subprocess.run(
        [sys.executable, "-m", "broker"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "RINGBUS_KAFKA_PORT='not-a-port'" in lines[0]


def test_readme_documents_every_setting() -> None:
    from broker.settings import ENV_PREFIX, Settings

    readme = (ROOT / "README.md").read_text()
    missing = [
        ENV_PREFIX + name.upper()
        for name in Settings.model_fields
        if f"`{ENV_PREFIX}{name.upper()}`" not in readme
    ]
    assert not missing, f"README.md settings table lacks {missing}"
