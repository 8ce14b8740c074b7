"""Kafka error codes: one table of every code Ringbus uses (NOTES.md section 6),
each with its name, retriable flag, default text and exception class.

Handlers put codes in responses (``ErrorCode.NOT_LEADER_OR_FOLLOWER``); code
that fails inside the broker can raise the matching exception
(``NotLeaderOrFollowerError``) and let the boundary turn it back into a code
with ``exc.code``. ``error_class(code)`` and ``error_info(code)`` look codes up;
a code missing from the table maps to UNKNOWN_SERVER_ERROR, as Kafka's
``Errors.forCode`` does.

"Retriable" follows the Java client: the client retries, or refreshes its
metadata or coordinator and retries. The default texts are this project's.

These are a different family from the codec's own exceptions
(``net.kafka.codec_errors``), which mean the peer sent bytes that cannot be
parsed. Imported by the net process and the broker's handlers; no state
besides the tables built at import.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, ClassVar, NamedTuple


class ErrorCode(IntEnum):
    """The Kafka error codes Ringbus uses."""

    UNKNOWN_SERVER_ERROR = -1
    NONE = 0
    OFFSET_OUT_OF_RANGE = 1
    CORRUPT_MESSAGE = 2
    UNKNOWN_TOPIC_OR_PARTITION = 3
    LEADER_NOT_AVAILABLE = 5
    NOT_LEADER_OR_FOLLOWER = 6
    REQUEST_TIMED_OUT = 7
    MESSAGE_TOO_LARGE = 10
    OFFSET_METADATA_TOO_LARGE = 12
    COORDINATOR_LOAD_IN_PROGRESS = 14
    COORDINATOR_NOT_AVAILABLE = 15
    NOT_COORDINATOR = 16
    INVALID_TOPIC_EXCEPTION = 17
    RECORD_LIST_TOO_LARGE = 18
    NOT_ENOUGH_REPLICAS = 19
    INVALID_REQUIRED_ACKS = 21
    ILLEGAL_GENERATION = 22
    INCONSISTENT_GROUP_PROTOCOL = 23
    INVALID_GROUP_ID = 24
    UNKNOWN_MEMBER_ID = 25
    INVALID_SESSION_TIMEOUT = 26
    REBALANCE_IN_PROGRESS = 27
    INVALID_COMMIT_OFFSET_SIZE = 28
    TOPIC_AUTHORIZATION_FAILED = 29
    GROUP_AUTHORIZATION_FAILED = 30
    CLUSTER_AUTHORIZATION_FAILED = 31
    INVALID_TIMESTAMP = 32
    UNSUPPORTED_SASL_MECHANISM = 33
    ILLEGAL_SASL_STATE = 34
    UNSUPPORTED_VERSION = 35
    TOPIC_ALREADY_EXISTS = 36
    INVALID_PARTITIONS = 37
    INVALID_REPLICATION_FACTOR = 38
    INVALID_REPLICA_ASSIGNMENT = 39
    INVALID_CONFIG = 40
    NOT_CONTROLLER = 41
    INVALID_REQUEST = 42
    UNSUPPORTED_FOR_MESSAGE_FORMAT = 43
    POLICY_VIOLATION = 44
    OUT_OF_ORDER_SEQUENCE_NUMBER = 45
    DUPLICATE_SEQUENCE_NUMBER = 46
    INVALID_PRODUCER_EPOCH = 47
    INVALID_PRODUCER_ID_MAPPING = 49
    KAFKA_STORAGE_ERROR = 56
    SASL_AUTHENTICATION_FAILED = 58
    UNKNOWN_PRODUCER_ID = 59
    NON_EMPTY_GROUP = 68
    GROUP_ID_NOT_FOUND = 69
    FETCH_SESSION_ID_NOT_FOUND = 70
    INVALID_FETCH_SESSION_EPOCH = 71
    TOPIC_DELETION_DISABLED = 73
    FENCED_LEADER_EPOCH = 74
    UNKNOWN_LEADER_EPOCH = 75
    UNSUPPORTED_COMPRESSION_TYPE = 76
    OFFSET_NOT_AVAILABLE = 78
    MEMBER_ID_REQUIRED = 79
    GROUP_MAX_SIZE_REACHED = 81
    FENCED_INSTANCE_ID = 82
    GROUP_SUBSCRIBED_TO_TOPIC = 86
    INVALID_RECORD = 87
    UNSTABLE_OFFSET_COMMIT = 88
    THROTTLING_QUOTA_EXCEEDED = 89
    PRODUCER_FENCED = 90
    UNKNOWN_TOPIC_ID = 100


class ErrorInfo(NamedTuple):
    """One row of the error table."""

    code: int
    name: str
    retriable: bool
    text: str


_CLASSES: dict[int, type[KafkaError]] = {}


class KafkaError(Exception):
    """Base of the per-code exceptions; ``code`` goes into the response.

    Subclasses declare ``code`` and ``retriable`` as class keywords; their
    docstring is the default text.
    """

    code: ClassVar[ErrorCode]
    name: ClassVar[str]
    retriable: ClassVar[bool]
    text: ClassVar[str]

    def __init_subclass__(
        cls, *, code: ErrorCode, retriable: bool = False, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        if code in _CLASSES:
            raise TypeError(f"{cls.__name__}: code {code} already has a class")
        cls.code = code
        cls.name = code.name
        cls.retriable = retriable
        cls.text = " ".join((cls.__doc__ or code.name).split())
        _CLASSES[code] = cls

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.text)
        self.message = message or self.text


class UnknownServerError(KafkaError, code=ErrorCode.UNKNOWN_SERVER_ERROR):
    """The broker hit an unexpected internal failure."""


class OffsetOutOfRangeError(KafkaError, code=ErrorCode.OFFSET_OUT_OF_RANGE):
    """The requested offset is outside the partition's log start offset to log end
    offset range."""


class CorruptMessageError(KafkaError, code=ErrorCode.CORRUPT_MESSAGE, retriable=True):
    """A record batch failed its CRC or length checks, or is malformed."""


class UnknownTopicOrPartitionError(
    KafkaError, code=ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, retriable=True
):
    """This broker has no such topic or partition."""


class LeaderNotAvailableError(
    KafkaError, code=ErrorCode.LEADER_NOT_AVAILABLE, retriable=True
):
    """The partition has no leader yet, for example while the topic is being created."""


class NotLeaderOrFollowerError(
    KafkaError, code=ErrorCode.NOT_LEADER_OR_FOLLOWER, retriable=True
):
    """This broker does not lead the partition."""


class RequestTimedOutError(
    KafkaError, code=ErrorCode.REQUEST_TIMED_OUT, retriable=True
):
    """The request did not complete within its timeout."""


class MessageTooLargeError(KafkaError, code=ErrorCode.MESSAGE_TOO_LARGE):
    """A record batch is larger than the topic's max.message.bytes."""


class OffsetMetadataTooLargeError(KafkaError, code=ErrorCode.OFFSET_METADATA_TOO_LARGE):
    """The metadata string of the committed offset is too long."""


class CoordinatorLoadInProgressError(
    KafkaError, code=ErrorCode.COORDINATOR_LOAD_IN_PROGRESS, retriable=True
):
    """The group coordinator is still loading group state."""


class CoordinatorNotAvailableError(
    KafkaError, code=ErrorCode.COORDINATOR_NOT_AVAILABLE, retriable=True
):
    """The group coordinator is not available."""


class NotCoordinatorError(KafkaError, code=ErrorCode.NOT_COORDINATOR, retriable=True):
    """This broker is not the coordinator of the group."""


class InvalidTopicError(KafkaError, code=ErrorCode.INVALID_TOPIC_EXCEPTION):
    """The topic name is not legal, or the topic is internal and cannot be written."""


class RecordListTooLargeError(KafkaError, code=ErrorCode.RECORD_LIST_TOO_LARGE):
    """The record data of the produce request is too large."""


class NotEnoughReplicasError(
    KafkaError, code=ErrorCode.NOT_ENOUGH_REPLICAS, retriable=True
):
    """Fewer in-sync replicas than min.insync.replicas are available."""


class InvalidRequiredAcksError(KafkaError, code=ErrorCode.INVALID_REQUIRED_ACKS):
    """Acks must be -1, 0 or 1."""


class IllegalGenerationError(KafkaError, code=ErrorCode.ILLEGAL_GENERATION):
    """The generation id is not the group's current generation."""


class InconsistentGroupProtocolError(
    KafkaError, code=ErrorCode.INCONSISTENT_GROUP_PROTOCOL
):
    """The member's protocol type or protocols do not match the group's."""


class InvalidGroupIdError(KafkaError, code=ErrorCode.INVALID_GROUP_ID):
    """The group id is empty or not valid."""


class UnknownMemberIdError(KafkaError, code=ErrorCode.UNKNOWN_MEMBER_ID):
    """The member id is not known to the group."""


class InvalidSessionTimeoutError(KafkaError, code=ErrorCode.INVALID_SESSION_TIMEOUT):
    """The session timeout is outside the broker's allowed range."""


class RebalanceInProgressError(KafkaError, code=ErrorCode.REBALANCE_IN_PROGRESS):
    """The group is rebalancing; the member must rejoin."""


class InvalidCommitOffsetSizeError(
    KafkaError, code=ErrorCode.INVALID_COMMIT_OFFSET_SIZE
):
    """The committed offset data is too large."""


class TopicAuthorizationFailedError(
    KafkaError, code=ErrorCode.TOPIC_AUTHORIZATION_FAILED
):
    """The client is not authorized to access the topic."""


class GroupAuthorizationFailedError(
    KafkaError, code=ErrorCode.GROUP_AUTHORIZATION_FAILED
):
    """The client is not authorized to access the group."""


class ClusterAuthorizationFailedError(
    KafkaError, code=ErrorCode.CLUSTER_AUTHORIZATION_FAILED
):
    """The client is not authorized for this cluster operation."""


class InvalidTimestampError(KafkaError, code=ErrorCode.INVALID_TIMESTAMP):
    """A record timestamp is outside the allowed window."""


class UnsupportedSaslMechanismError(
    KafkaError, code=ErrorCode.UNSUPPORTED_SASL_MECHANISM
):
    """The broker does not support the requested SASL mechanism."""


class IllegalSaslStateError(KafkaError, code=ErrorCode.ILLEGAL_SASL_STATE):
    """The SASL request is not valid in the connection's authentication state."""


class UnsupportedVersionError(KafkaError, code=ErrorCode.UNSUPPORTED_VERSION):
    """The broker does not support this API version."""


class TopicAlreadyExistsError(KafkaError, code=ErrorCode.TOPIC_ALREADY_EXISTS):
    """The topic already exists."""


class InvalidPartitionsError(KafkaError, code=ErrorCode.INVALID_PARTITIONS):
    """The partition count is not valid."""


class InvalidReplicationFactorError(
    KafkaError, code=ErrorCode.INVALID_REPLICATION_FACTOR
):
    """The replication factor is not valid."""


class InvalidReplicaAssignmentError(
    KafkaError, code=ErrorCode.INVALID_REPLICA_ASSIGNMENT
):
    """The replica assignment is not valid."""


class InvalidConfigError(KafkaError, code=ErrorCode.INVALID_CONFIG):
    """A configuration entry is not valid."""


class NotControllerError(KafkaError, code=ErrorCode.NOT_CONTROLLER, retriable=True):
    """This broker is not the controller."""


class InvalidRequestError(KafkaError, code=ErrorCode.INVALID_REQUEST):
    """The request is malformed or breaks a protocol rule."""


class UnsupportedForMessageFormatError(
    KafkaError, code=ErrorCode.UNSUPPORTED_FOR_MESSAGE_FORMAT
):
    """The record format (magic) is not supported for this request."""


class PolicyViolationError(KafkaError, code=ErrorCode.POLICY_VIOLATION):
    """The request breaks a broker policy."""


class OutOfOrderSequenceNumberError(
    KafkaError, code=ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
):
    """The batch sequence number leaves a gap after the last one seen."""


class DuplicateSequenceNumberError(
    KafkaError, code=ErrorCode.DUPLICATE_SEQUENCE_NUMBER
):
    """The batch sequence number was already written."""


class InvalidProducerEpochError(KafkaError, code=ErrorCode.INVALID_PRODUCER_EPOCH):
    """The producer epoch is older than the current one."""


class InvalidProducerIdMappingError(
    KafkaError, code=ErrorCode.INVALID_PRODUCER_ID_MAPPING
):
    """The producer id is not mapped to the transactional id."""


class KafkaStorageError(KafkaError, code=ErrorCode.KAFKA_STORAGE_ERROR, retriable=True):
    """The partition's storage failed on this broker."""


class SaslAuthenticationFailedError(
    KafkaError, code=ErrorCode.SASL_AUTHENTICATION_FAILED
):
    """SASL authentication failed."""


class UnknownProducerIdError(KafkaError, code=ErrorCode.UNKNOWN_PRODUCER_ID):
    """The broker has no state for this producer id."""


class NonEmptyGroupError(KafkaError, code=ErrorCode.NON_EMPTY_GROUP):
    """The group still has members."""


class GroupIdNotFoundError(KafkaError, code=ErrorCode.GROUP_ID_NOT_FOUND):
    """The group does not exist."""


class FetchSessionIdNotFoundError(
    KafkaError, code=ErrorCode.FETCH_SESSION_ID_NOT_FOUND, retriable=True
):
    """The fetch session id is not known; send a full fetch."""


class InvalidFetchSessionEpochError(
    KafkaError, code=ErrorCode.INVALID_FETCH_SESSION_EPOCH, retriable=True
):
    """The fetch session epoch is not the expected one."""


class TopicDeletionDisabledError(KafkaError, code=ErrorCode.TOPIC_DELETION_DISABLED):
    """Topic deletion is disabled."""


class FencedLeaderEpochError(
    KafkaError, code=ErrorCode.FENCED_LEADER_EPOCH, retriable=True
):
    """The request's leader epoch is older than the broker's."""


class UnknownLeaderEpochError(
    KafkaError, code=ErrorCode.UNKNOWN_LEADER_EPOCH, retriable=True
):
    """The request's leader epoch is newer than the broker's."""


class UnsupportedCompressionTypeError(
    KafkaError, code=ErrorCode.UNSUPPORTED_COMPRESSION_TYPE
):
    """The compression type is not supported for this request version."""


class OffsetNotAvailableError(
    KafkaError, code=ErrorCode.OFFSET_NOT_AVAILABLE, retriable=True
):
    """The offset is not available yet, for example during a leader change."""


class MemberIdRequiredError(KafkaError, code=ErrorCode.MEMBER_ID_REQUIRED):
    """The member must rejoin with the member id given in the response."""


class GroupMaxSizeReachedError(KafkaError, code=ErrorCode.GROUP_MAX_SIZE_REACHED):
    """The group has reached its maximum size."""


class FencedInstanceIdError(KafkaError, code=ErrorCode.FENCED_INSTANCE_ID):
    """Another member with the same group instance id replaced this one."""


class GroupSubscribedToTopicError(KafkaError, code=ErrorCode.GROUP_SUBSCRIBED_TO_TOPIC):
    """The group still consumes the topic."""


class InvalidRecordError(KafkaError, code=ErrorCode.INVALID_RECORD):
    """A record failed validation."""


class UnstableOffsetCommitError(
    KafkaError, code=ErrorCode.UNSTABLE_OFFSET_COMMIT, retriable=True
):
    """A transaction on the partition is pending, so the committed offset is not stable
    yet."""


class ThrottlingQuotaExceededError(
    KafkaError, code=ErrorCode.THROTTLING_QUOTA_EXCEEDED, retriable=True
):
    """The topic mutation quota is exceeded."""


class ProducerFencedError(KafkaError, code=ErrorCode.PRODUCER_FENCED):
    """A newer producer with the same transactional id fenced this one."""


class UnknownTopicIdError(KafkaError, code=ErrorCode.UNKNOWN_TOPIC_ID, retriable=True):
    """This broker has no topic with that id."""


ERRORS: dict[int, ErrorInfo] = {
    ErrorCode.NONE: ErrorInfo(0, "NONE", False, "Success."),
    **{
        code: ErrorInfo(int(code), cls.name, cls.retriable, cls.text)
        for code, cls in sorted(_CLASSES.items())
    },
}


def error_class(code: int) -> type[KafkaError]:
    """The exception class of ``code``; unknown codes give UnknownServerError.

    Code 0 (NONE) is success and has no class: ValueError.
    """
    if code == ErrorCode.NONE:
        raise ValueError("error code 0 (NONE) is success, not an error")
    return _CLASSES.get(code, UnknownServerError)


def error_info(code: int) -> ErrorInfo:
    """The table row of ``code``; unknown codes give UNKNOWN_SERVER_ERROR's row."""
    return ERRORS.get(code, ERRORS[ErrorCode.UNKNOWN_SERVER_ERROR])
