"""Broker settings, read once from ``RINGBUS_*`` environment variables.

The variable names are the public interface (the README lists them all).
Every value is checked at start-up; a bad one stops the broker with exit
code 2 and a single line naming the variable, the value seen and what is
expected, so an operator can fix it without reading a traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_PREFIX = "RINGBUS_"

# Variables that share the prefix but are not broker settings: the test
# harness reads them, the broker ignores them.
NON_SETTING_VARIABLES = frozenset({"RINGBUS_REQUIRE_ALL", "RINGBUS_FUZZ_SEED"})

GIB = 1 << 30
MIB = 1 << 20
DAY_MS = 24 * 3600 * 1000


class Settings(BaseModel):
    """Every tunable of one broker. Field names are the variable names
    without the ``RINGBUS_`` prefix, lower-cased."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field("127.0.0.1", description="address the Kafka and HTTP ports bind")
    kafka_port: int = Field(9092, ge=1, le=65535, description="Kafka protocol port")
    http_port: int = Field(
        9644, ge=0, le=65535, description="metrics, REST API and UI port (0 = off)"
    )
    advertised_host: str = Field(
        "", description="host name clients are told to connect to (default: HOST)"
    )
    node_id: int = Field(0, ge=0, le=2**31 - 1, description="this broker's id")
    data_dir: Path = Field(Path("data"), description="where segments and state live")
    net_procs: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        le=256,
        description="number of network I/O processes (default: CPU count)",
    )
    ring_bytes: int = Field(
        64 * MIB,
        ge=1 * MIB,
        le=4 * GIB,
        description="data area of each produce ring, in bytes",
    )
    max_partitions: int = Field(
        4096, ge=1, le=1_000_000, description="rows in the partition state table"
    )
    segment_bytes: int = Field(
        1 * GIB, ge=1024, le=2 * GIB - 1, description="roll a segment at this size"
    )
    segment_ms: int = Field(
        7 * DAY_MS, ge=1, description="roll a segment at this age, in milliseconds"
    )
    index_interval_bytes: int = Field(
        4096, ge=1, le=64 * MIB, description="bytes between sparse index entries"
    )
    retention_ms: int = Field(
        7 * DAY_MS, ge=-1, description="delete segments older than this (-1 = never)"
    )
    retention_bytes: int = Field(
        -1, ge=-1, description="keep each partition below this size (-1 = no limit)"
    )
    flush_ms: int = Field(
        1000, ge=1, description="background fsync interval, in milliseconds"
    )
    auto_create_topics: bool = Field(
        True, description="create unknown topics on Metadata and Produce"
    )
    default_partitions: int = Field(
        1, ge=1, le=100_000, description="partitions of an auto-created topic"
    )
    max_request_bytes: int = Field(
        100 * MIB,
        ge=1024,
        le=2 * GIB - 1,
        description="largest Kafka request frame accepted",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="least severe log level written"
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level_any_case(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _retention_bytes_not_zero(self) -> Settings:
        if self.retention_bytes == 0:
            raise ValueError("RINGBUS_RETENTION_BYTES: must be -1 or positive")
        return self

    @property
    def advertised(self) -> str:
        """The host name put in Metadata responses."""
        return self.advertised_host or self.host


class SettingsError(Exception):
    """A ``RINGBUS_*`` variable holds a value the broker cannot use."""

    def __init__(self, variable: str, value: str | None, expected: str) -> None:
        self.variable = variable
        self.value = value
        self.expected = expected
        shown = "(unset)" if value is None else repr(value)
        super().__init__(f"invalid setting {variable}={shown}: {expected}")


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Read and check every setting; raise SettingsError on the first bad one."""
    env = dict(os.environ if environ is None else environ)

    # A misspelt variable would otherwise be ignored without a word.
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    for name in env:
        if (
            name.upper().startswith(ENV_PREFIX)
            and name.upper() not in known
            and name.upper() not in NON_SETTING_VARIABLES
        ):
            raise SettingsError(name, env[name], "unknown setting (see README.md)")

    values = {
        name[len(ENV_PREFIX) :].lower(): value
        for name, value in env.items()
        if name.upper() in known
    }
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        message = first["msg"]
        if not field and ":" in message and ENV_PREFIX in message:
            # Raised by a model validator: the message names the variable.
            variable, _, expected = message.partition(":")
            variable = variable.split()[-1]
            raise SettingsError(variable, env.get(variable), expected.strip()) from exc
        variable = ENV_PREFIX + field.upper()
        expected = message[:1].lower() + message[1:]
        raise SettingsError(variable, env.get(variable), expected) from exc


def load_settings_or_exit(environ: dict[str, str] | None = None) -> Settings:
    """Start-up helper: print one line and exit with code 2 on a bad setting."""
    try:
        return load_settings(environ)
    except SettingsError as exc:
        print(f"ringbus: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
