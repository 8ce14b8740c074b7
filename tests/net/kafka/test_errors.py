"""The Kafka error-code table (net.kafka.errors)."""

from __future__ import annotations

import pytest

from net.kafka import errors
from net.kafka.errors import (
    ERRORS,
    ErrorCode,
    KafkaError,
    NotLeaderOrFollowerError,
    UnknownServerError,
    error_class,
    error_info,
)

# NOTES.md section 6: every code the broker uses, and the retriable ones.
NOTES_CODES = {
    -1, 0, 1, 2, 3, 5, 6, 7, 10, 12, 14, 15, 16, 17, 18, 19, 21, 22, 23, 24, 25, 26,
    27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46,
    47, 49, 56, 58, 59, 68, 69, 70, 71, 73, 74, 75, 76, 78, 79, 81, 82, 86, 87, 88,
    89, 90, 100,
}  # fmt: skip
NOTES_RETRIABLE = {
    2,
    3,
    5,
    6,
    7,
    14,
    15,
    16,
    19,
    41,
    56,
    70,
    71,
    74,
    75,
    78,
    88,
    89,
    100,
}


def test_table_holds_every_code_of_the_notes() -> None:
    assert set(ERRORS) == NOTES_CODES == {int(code) for code in ErrorCode}


def test_retriable_flags_match_the_notes() -> None:
    assert {code for code, info in ERRORS.items() if info.retriable} == NOTES_RETRIABLE


def test_every_error_code_has_one_exception_class_ending_in_error() -> None:
    classes = [
        value
        for value in vars(errors).values()
        if isinstance(value, type)
        and issubclass(value, KafkaError)
        and value is not KafkaError
    ]
    assert sorted(cls.code for cls in classes) == sorted(NOTES_CODES - {0})
    for cls in classes:
        assert cls.__name__.endswith("Error")
        assert error_class(cls.code) is cls
        assert cls.text and cls.name == ErrorCode(cls.code).name


def test_error_class_maps_unknown_codes_to_unknown_server_error() -> None:
    assert error_class(12345) is UnknownServerError
    assert error_info(12345).name == "UNKNOWN_SERVER_ERROR"
    with pytest.raises(ValueError, match="success"):
        error_class(0)


def test_exception_carries_code_and_default_or_given_message() -> None:
    with pytest.raises(KafkaError) as info:
        raise NotLeaderOrFollowerError()
    assert info.value.code == ErrorCode.NOT_LEADER_OR_FOLLOWER == 6
    assert info.value.retriable
    assert str(info.value) == "This broker does not lead the partition."
    assert str(NotLeaderOrFollowerError("orders-3 is led by broker 2")) == (
        "orders-3 is led by broker 2"
    )
