"""The classic consumer-group coordinator: membership, rebalances and
generations of every group, as a sans-IO state machine.

States and moves (Kafka's classic protocol)::

    Empty --first join--> PreparingRebalance --all joined / deadline--+
      ^                        ^        |                             |
      |                        |        +--no members left--> Empty   v
      |       join / leave / expiry / leader rejoin        CompletingRebalance
      |                        |                                      |
      |                        +------------ Stable <--leader's sync--+
      +-- DeleteGroups: Dead (the group object is dropped)

- A rebalance collects a JoinGroup from every member. It completes when all
  members have rejoined and no member id handed out by MEMBER_ID_REQUIRED
  is still outstanding, or at the rebalance deadline (the largest rebalance
  timeout of the members), which removes the members that did not rejoin.
  A rebalance of an Empty group first waits ``initial_rebalance_delay_ms``
  (extended by each new member, bounded by the rebalance timeout) so that
  consumers starting together land in one generation.
- Completing a rebalance bumps the generation, elects the protocol by votes
  (each member votes for its most preferred protocol among those every
  member supports) and answers every parked JoinGroup; the leader's answer
  lists the members and their metadata. The group then waits for the
  leader's SyncGroup, whose assignments answer every parked SyncGroup.
- Session timeouts: every member must show life (heartbeat, join, sync,
  commit) within its session timeout, except while its JoinGroup is parked.
  An expired member is removed and the group rebalances. A client that
  vanishes mid-rebalance therefore holds the group up for at most its
  session timeout (or the rebalance timeout if its JoinGroup is parked).
- Static members (``group.instance.id``): the instance id maps to the
  current member id. A join with an empty member id and a known instance
  id replaces the old member (the old member id is fenced: FENCED_INSTANCE_ID)
  and, when the group is Stable and nothing changed, keeps the current
  generation and assignment without a rebalance.

Time comes from an injected clock (monotonic milliseconds), so tests drive
expiry without sleeping. Replies to JoinGroup and SyncGroup are callbacks:
the coordinator calls them when the answer is known, possibly during a later
call or ``tick``. Callbacks run only at the end of a public method, after the
group is consistent, so a callback may call back into the coordinator.

Group membership is not persisted: after a control process restart every
member gets UNKNOWN_MEMBER_ID and rejoins (committed offsets are persisted,
by ``broker.control.offsets``).

Imported by the control process only. Not thread-safe: one event loop
thread drives it.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

from broker.logs import event
from net.kafka.codec import decode_consumer_protocol
from net.kafka.codec_errors import CodecError
from net.kafka.errors import ErrorCode

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
"""Monotonic time in milliseconds."""

CONSUMER_PROTOCOL_TYPE = "consumer"


class GroupState(Enum):
    """A group's state; the value is the name DescribeGroups and ListGroups
    report."""

    EMPTY = "Empty"
    PREPARING_REBALANCE = "PreparingRebalance"
    COMPLETING_REBALANCE = "CompletingRebalance"
    STABLE = "Stable"
    DEAD = "Dead"


@dataclass(frozen=True)
class GroupConfig:
    """Limits of the coordinator; the defaults are Kafka's broker defaults
    unless noted."""

    min_session_timeout_ms: int = 6_000
    max_session_timeout_ms: int = 1_800_000
    # LIMITATION: not settable through RINGBUS_* yet; every new group waits
    # these 3 s before its first generation, as on Kafka.
    initial_rebalance_delay_ms: int = 3_000
    # Kafka accepts any INT32 rebalance timeout; a bound keeps a parked
    # JoinGroup finite. Same value as the session timeout maximum.
    max_rebalance_timeout_ms: int = 1_800_000
    # Kafka's default is unbounded; a guess that no real group reaches.
    max_group_size: int = 10_000


@dataclass(frozen=True)
class JoinRequest:
    """The fields of a JoinGroup request the coordinator needs."""

    group_id: str
    member_id: str
    group_instance_id: str | None
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocol_type: str
    protocols: tuple[tuple[str, bytes], ...]
    client_id: str = ""
    client_host: str = ""
    # JoinGroup v4+ without an instance id: a new member first gets
    # MEMBER_ID_REQUIRED with its id and must join again with it (KIP-394).
    require_known_member_id: bool = False


class JoinedMember(NamedTuple):
    """One member as the leader's JoinGroup response lists it."""

    member_id: str
    group_instance_id: str | None
    metadata: bytes


@dataclass(frozen=True)
class JoinResult:
    """The answer to a JoinGroup."""

    error: ErrorCode
    member_id: str = ""
    generation_id: int = -1
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader_id: str = ""
    members: tuple[JoinedMember, ...] = ()


@dataclass(frozen=True)
class SyncResult:
    """The answer to a SyncGroup."""

    error: ErrorCode
    assignment: bytes = b""
    protocol_type: str | None = None
    protocol_name: str | None = None


JoinReply = Callable[[JoinResult], None]
SyncReply = Callable[[SyncResult], None]


@dataclass(frozen=True)
class MemberDescription:
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    metadata: bytes
    assignment: bytes


@dataclass(frozen=True)
class GroupDescription:
    group_id: str
    state: GroupState
    protocol_type: str
    protocol_name: str
    generation_id: int
    leader_id: str
    members: tuple[MemberDescription, ...]


class GroupListing(NamedTuple):
    group_id: str
    protocol_type: str
    state: GroupState


@dataclass(frozen=True)
class CoordinatorStatistics:
    """Counts for the metrics process."""

    groups: int
    members: int
    groups_by_state: dict[str, int]
    rebalances_completed: int
    members_expired: int


@dataclass(eq=False)
class Member:
    """One member of a group."""

    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocol_type: str
    protocols: tuple[tuple[str, bytes], ...]
    session_deadline: float
    assignment: bytes = b""
    join_reply: JoinReply | None = None
    sync_reply: SyncReply | None = None

    def protocol_names(self) -> list[str]:
        return [name for name, _ in self.protocols]

    def metadata(self, protocol: str | None) -> bytes:
        for name, data in self.protocols:
            if name == protocol:
                return data
        return b""

    def update(self, request: JoinRequest) -> None:
        self.client_id = request.client_id
        self.client_host = request.client_host
        self.session_timeout_ms = request.session_timeout_ms
        self.rebalance_timeout_ms = request.rebalance_timeout_ms
        self.protocol_type = request.protocol_type
        self.protocols = request.protocols


def _new_member_id(prefix: str) -> str:
    # Kafka's form: the client id (or instance id), a dash, a random UUID.
    return f"{prefix}-{uuid.uuid4()}"


class _Outbox:
    """Replies decided during a call, delivered when the call ends."""

    def __init__(self) -> None:
        self.joins: list[tuple[JoinReply, JoinResult]] = []
        self.syncs: list[tuple[SyncReply, SyncResult]] = []

    def join(self, reply: JoinReply, result: JoinResult) -> None:
        self.joins.append((reply, result))

    def sync(self, reply: SyncReply, result: SyncResult) -> None:
        self.syncs.append((reply, result))

    def deliver(self) -> None:
        # Callbacks may enter the coordinator again; take the lists first.
        joins, self.joins = self.joins, []
        syncs, self.syncs = self.syncs, []
        for join_reply, join_result in joins:
            join_reply(join_result)
        for sync_reply, sync_result in syncs:
            sync_reply(sync_result)


@dataclass(eq=False)
class Group:
    """One group's state; its methods are the state machine's moves. The
    coordinator owns groups and calls these with the current time."""

    group_id: str
    config: GroupConfig
    outbox: _Outbox
    stats: dict[str, int]
    state: GroupState = GroupState.EMPTY
    generation_id: int = 0
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader_id: str | None = None
    members: dict[str, Member] = field(default_factory=dict)
    static_members: dict[str, str] = field(default_factory=dict)
    # Member ids handed out with MEMBER_ID_REQUIRED, and when each expires.
    pending_members: dict[str, float] = field(default_factory=dict)
    rebalance_deadline: float | None = None
    # While the first rebalance of an Empty group waits for more members.
    initial_delay: bool = False
    initial_hard_deadline: float = 0.0
    # Topics the members subscribe to (consumer protocol), None if unknown.
    subscribed_topics: frozenset[str] | None = None
    # The deadline the coordinator's timer heap holds for this group.
    scheduled: float | None = None

    # -- queries --------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """The earliest time at which ``expire`` has something to do."""
        deadlines = list(self.pending_members.values())
        preparing = self.state is GroupState.PREPARING_REBALANCE
        if preparing and self.rebalance_deadline is not None:
            deadlines.append(self.rebalance_deadline)
        for member in self.members.values():
            # A member whose JoinGroup is parked is kept alive by it.
            if not (preparing and member.join_reply is not None):
                deadlines.append(member.session_deadline)
        return min(deadlines) if deadlines else None

    def is_fenced(self, member_id: str, instance_id: str | None) -> bool:
        """True when ``instance_id`` belongs to a different member id."""
        if instance_id is None:
            return False
        known = self.static_members.get(instance_id)
        return known is not None and known != member_id

    def describe(self) -> GroupDescription:
        stable = self.state is GroupState.STABLE
        members = tuple(
            MemberDescription(
                member.member_id,
                member.group_instance_id,
                member.client_id,
                member.client_host,
                member.metadata(self.protocol_name) if stable else b"",
                member.assignment if stable else b"",
            )
            for member in self.members.values()
        )
        return GroupDescription(
            self.group_id,
            self.state,
            self.protocol_type or "",
            (self.protocol_name or "") if stable else "",
            self.generation_id,
            self.leader_id or "",
            members,
        )

    # -- JoinGroup ------------------------------------------------------------

    def join(self, request: JoinRequest, reply: JoinReply, now: float) -> None:
        if self.state is GroupState.DEAD:
            self.outbox.join(reply, _join_error(ErrorCode.COORDINATOR_NOT_AVAILABLE))
            return
        if not self._protocols_acceptable(request):
            error = _join_error(
                ErrorCode.INCONSISTENT_GROUP_PROTOCOL, request.member_id
            )
            self.outbox.join(reply, error)
            return

        instance_id = request.group_instance_id
        if not request.member_id:
            self._join_new(request, reply, now)
            return

        # A member coming back with the id MEMBER_ID_REQUIRED gave it.
        if request.member_id in self.pending_members:
            del self.pending_members[request.member_id]
            self._add_member(request.member_id, request, reply, now)
            return

        if self.is_fenced(request.member_id, instance_id):
            error = _join_error(ErrorCode.FENCED_INSTANCE_ID, request.member_id)
            self.outbox.join(reply, error)
            return
        member = self.members.get(request.member_id)
        if member is None:
            error = _join_error(ErrorCode.UNKNOWN_MEMBER_ID, request.member_id)
            self.outbox.join(reply, error)
            return
        self._rejoin(member, request, reply, now)

    def _protocols_acceptable(self, request: JoinRequest) -> bool:
        if not request.protocol_type or not request.protocols:
            return False

        # The request must share a protocol with every other member; the
        # joining member's own old protocols do not count.
        others = [m for m in self.members.values() if m.member_id != request.member_id]
        if not others:
            return True
        if request.protocol_type != self.protocol_type:
            return False
        common = set(others[0].protocol_names())
        for member in others[1:]:
            common.intersection_update(member.protocol_names())
        return any(name in common for name, _ in request.protocols)

    def _join_new(self, request: JoinRequest, reply: JoinReply, now: float) -> None:
        instance_id = request.group_instance_id
        if instance_id is not None and instance_id in self.static_members:
            self._replace_static_member(request, reply, now)
            return
        if len(self.members) + len(self.pending_members) >= self.config.max_group_size:
            self.outbox.join(reply, _join_error(ErrorCode.GROUP_MAX_SIZE_REACHED))
            return

        member_id = _new_member_id(instance_id or request.client_id)
        if instance_id is None and request.require_known_member_id:
            self.pending_members[member_id] = now + request.session_timeout_ms
            self.outbox.join(
                reply, _join_error(ErrorCode.MEMBER_ID_REQUIRED, member_id)
            )
            return
        self._add_member(member_id, request, reply, now)

    def _add_member(
        self, member_id: str, request: JoinRequest, reply: JoinReply, now: float
    ) -> None:
        member = Member(
            member_id=member_id,
            group_instance_id=request.group_instance_id,
            client_id=request.client_id,
            client_host=request.client_host,
            session_timeout_ms=request.session_timeout_ms,
            rebalance_timeout_ms=request.rebalance_timeout_ms,
            protocol_type=request.protocol_type,
            protocols=request.protocols,
            session_deadline=now + request.session_timeout_ms,
            join_reply=reply,
        )
        self.members[member_id] = member
        if request.group_instance_id is not None:
            self.static_members[request.group_instance_id] = member_id
        if self.leader_id is None:
            self.leader_id = member_id
        if not self.protocol_type or len(self.members) == 1:
            self.protocol_type = request.protocol_type
        event(
            logger,
            logging.INFO,
            "group.member_added",
            group=self.group_id,
            member=member_id,
            instance=request.group_instance_id or "",
            client=request.client_id,
            members=len(self.members),
        )
        self._on_member_joined(now, f"member {member_id} joined")

    def _on_member_joined(self, now: float, reason: str) -> None:
        if self.state is GroupState.PREPARING_REBALANCE:
            if self.initial_delay:
                # Each newcomer buys the others more time, up to the bound.
                self.rebalance_deadline = min(
                    now + self.config.initial_rebalance_delay_ms,
                    self.initial_hard_deadline,
                )
            else:
                self._maybe_complete_join(now)
        else:
            self._prepare_rebalance(now, reason)

    def _rejoin(
        self, member: Member, request: JoinRequest, reply: JoinReply, now: float
    ) -> None:
        member.session_deadline = now + request.session_timeout_ms
        unchanged = member.protocols == request.protocols

        if self.state is GroupState.PREPARING_REBALANCE:
            if member.join_reply is not None:
                # An earlier JoinGroup of this member is still parked: its
                # client gave up on it; answer it so nothing leaks.
                retry = _join_error(ErrorCode.REBALANCE_IN_PROGRESS, member.member_id)
                self.outbox.join(member.join_reply, retry)
            member.update(request)
            member.join_reply = reply
            if not self.initial_delay:
                self._maybe_complete_join(now)
            return

        # Completing or Stable: a follower repeating its join with nothing
        # changed (its response was lost) gets the current generation back.
        follower = member.member_id != self.leader_id
        completing = self.state is GroupState.COMPLETING_REBALANCE
        if unchanged and (completing or follower):
            self.outbox.join(reply, self._join_result(member))
            return
        member.update(request)
        member.join_reply = reply
        why = "leader rejoined" if unchanged else "member changed its protocols"
        self._prepare_rebalance(now, f"{why}: {member.member_id}")

    def _replace_static_member(
        self, request: JoinRequest, reply: JoinReply, now: float
    ) -> None:
        instance_id = request.group_instance_id
        assert instance_id is not None
        old = self.members[self.static_members[instance_id]]
        new_id = _new_member_id(instance_id)

        # The old member id is fenced from now on.
        fenced = ErrorCode.FENCED_INSTANCE_ID
        if old.join_reply is not None:
            self.outbox.join(old.join_reply, _join_error(fenced, old.member_id))
        if old.sync_reply is not None:
            self.outbox.sync(old.sync_reply, SyncResult(fenced))
        del self.members[old.member_id]
        member = Member(
            member_id=new_id,
            group_instance_id=instance_id,
            client_id=request.client_id,
            client_host=request.client_host,
            session_timeout_ms=request.session_timeout_ms,
            rebalance_timeout_ms=request.rebalance_timeout_ms,
            protocol_type=request.protocol_type,
            protocols=request.protocols,
            session_deadline=now + request.session_timeout_ms,
            assignment=old.assignment,
        )
        self.members[new_id] = member
        self.static_members[instance_id] = new_id
        was_leader = self.leader_id == old.member_id
        if was_leader:
            self.leader_id = new_id
        event(
            logger,
            logging.INFO,
            "group.static_member_replaced",
            group=self.group_id,
            instance=instance_id,
            old_member=old.member_id,
            member=new_id,
        )

        unchanged = old.protocols == request.protocols
        if self.state is GroupState.STABLE and unchanged and not was_leader:
            # Same instance, same subscription: keep generation and assignment.
            self.outbox.join(reply, self._join_result(member))
            return
        member.join_reply = reply
        if self.state is GroupState.PREPARING_REBALANCE:
            if not self.initial_delay:
                self._maybe_complete_join(now)
            return
        self._prepare_rebalance(now, f"static member {instance_id} rejoined")

    def _join_result(self, member: Member) -> JoinResult:
        members: tuple[JoinedMember, ...] = ()
        if member.member_id == self.leader_id:
            members = tuple(
                JoinedMember(
                    m.member_id, m.group_instance_id, m.metadata(self.protocol_name)
                )
                for m in self.members.values()
            )
        return JoinResult(
            ErrorCode.NONE,
            member_id=member.member_id,
            generation_id=self.generation_id,
            protocol_type=self.protocol_type,
            protocol_name=self.protocol_name,
            leader_id=self.leader_id or "",
            members=members,
        )

    # -- rebalance ------------------------------------------------------------

    def _prepare_rebalance(self, now: float, reason: str) -> None:
        if self.state is GroupState.COMPLETING_REBALANCE:
            self._fail_parked_syncs(ErrorCode.REBALANCE_IN_PROGRESS)
        was_empty = self.state is GroupState.EMPTY
        self.state = GroupState.PREPARING_REBALANCE

        timeout = min(
            max((m.rebalance_timeout_ms for m in self.members.values()), default=0),
            self.config.max_rebalance_timeout_ms,
        )
        delay = self.config.initial_rebalance_delay_ms
        self.initial_delay = was_empty and delay > 0
        if self.initial_delay:
            self.initial_hard_deadline = now + timeout
            self.rebalance_deadline = min(now + delay, self.initial_hard_deadline)
        else:
            self.rebalance_deadline = now + timeout
        event(
            logger,
            logging.INFO,
            "group.rebalance_started",
            group=self.group_id,
            generation=self.generation_id,
            members=len(self.members),
            reason=reason,
        )
        if not self.initial_delay:
            self._maybe_complete_join(now)

    def _fail_parked_syncs(self, error: ErrorCode) -> None:
        for member in self.members.values():
            member.assignment = b""
            if member.sync_reply is not None:
                self.outbox.sync(member.sync_reply, SyncResult(error))
                member.sync_reply = None

    def _maybe_complete_join(self, now: float) -> None:
        if self.state is not GroupState.PREPARING_REBALANCE:
            return
        if self.initial_delay and self.members:
            return
        if self.pending_members:
            return
        if any(m.join_reply is None for m in self.members.values()):
            return
        self._complete_join(now)

    def _complete_join(self, now: float) -> None:
        # At the deadline: members that did not rejoin are out.
        for member in [m for m in self.members.values() if m.join_reply is None]:
            self._remove(member, "rebalance_timeout", now, rebalance=False)
        self.pending_members.clear()
        self.initial_delay = False
        self.rebalance_deadline = None
        self.generation_id += 1

        if not self.members:
            self.state = GroupState.EMPTY
            self.protocol_name = None
            self.leader_id = None
            self.subscribed_topics = frozenset()
            event(
                logger,
                logging.INFO,
                "group.emptied",
                group=self.group_id,
                generation=self.generation_id,
            )
            return

        self.protocol_name = self._elect_protocol()
        self.state = GroupState.COMPLETING_REBALANCE
        if self.leader_id not in self.members:
            self.leader_id = next(iter(self.members))
        self.subscribed_topics = self._subscriptions()
        self.stats["rebalances_completed"] += 1
        event(
            logger,
            logging.INFO,
            "group.join_completed",
            group=self.group_id,
            generation=self.generation_id,
            protocol=self.protocol_name,
            leader=self.leader_id,
            members=len(self.members),
        )
        for member in self.members.values():
            member.session_deadline = now + member.session_timeout_ms
            reply, member.join_reply = member.join_reply, None
            assert reply is not None
            self.outbox.join(reply, self._join_result(member))

    def _elect_protocol(self) -> str:
        members = list(self.members.values())
        candidates = set(members[0].protocol_names())
        for member in members[1:]:
            candidates.intersection_update(member.protocol_names())

        # Each member votes for the first candidate in its own preference
        # order; ties go to the protocol the earliest member ranks higher.
        votes: dict[str, int] = {}
        for member in members:
            choice = next((n for n in member.protocol_names() if n in candidates), None)
            if choice is not None:
                votes[choice] = votes.get(choice, 0) + 1
        first_order = members[0].protocol_names()
        if not votes:
            # Join checks keep a common protocol; this is only a guard.
            return first_order[0]
        return max(votes, key=lambda name: (votes[name], -first_order.index(name)))

    def _subscriptions(self) -> frozenset[str] | None:
        if self.protocol_type != CONSUMER_PROTOCOL_TYPE:
            return None
        topics: set[str] = set()
        for member in self.members.values():
            try:
                _, subscription = decode_consumer_protocol(
                    "ConsumerProtocolSubscription", member.metadata(self.protocol_name)
                )
            except CodecError:
                return None
            topics.update(subscription["topics"])
        return frozenset(topics)

    # -- SyncGroup, Heartbeat, LeaveGroup ------------------------------------

    def sync(
        self,
        member: Member,
        assignments: dict[str, bytes],
        reply: SyncReply,
        now: float,
    ) -> None:
        if self.state is GroupState.PREPARING_REBALANCE:
            self.outbox.sync(reply, SyncResult(ErrorCode.REBALANCE_IN_PROGRESS))
            return
        member.session_deadline = now + member.session_timeout_ms
        if self.state is GroupState.STABLE:
            self.outbox.sync(reply, self._sync_result(member))
            return

        # CompletingRebalance: park until the leader's assignments arrive.
        if member.sync_reply is not None:
            retry = SyncResult(ErrorCode.REBALANCE_IN_PROGRESS)
            self.outbox.sync(member.sync_reply, retry)
        member.sync_reply = reply
        if member.member_id != self.leader_id:
            return
        for each in self.members.values():
            each.assignment = assignments.get(each.member_id, b"")
        self.state = GroupState.STABLE
        event(
            logger,
            logging.INFO,
            "group.stable",
            group=self.group_id,
            generation=self.generation_id,
            members=len(self.members),
        )
        for each in self.members.values():
            if each.sync_reply is not None:
                self.outbox.sync(each.sync_reply, self._sync_result(each))
                each.sync_reply = None

    def _sync_result(self, member: Member) -> SyncResult:
        return SyncResult(
            ErrorCode.NONE, member.assignment, self.protocol_type, self.protocol_name
        )

    def leave(self, member_id: str, instance_id: str | None, now: float) -> ErrorCode:
        if instance_id is not None:
            known = self.static_members.get(instance_id)
            if known is None:
                return ErrorCode.UNKNOWN_MEMBER_ID
            if member_id and member_id != known:
                return ErrorCode.FENCED_INSTANCE_ID
            self._remove(self.members[known], "left", now)
            return ErrorCode.NONE
        if member_id in self.pending_members:
            del self.pending_members[member_id]
            self._maybe_complete_join(now)
            return ErrorCode.NONE
        member = self.members.get(member_id)
        if member is None:
            return ErrorCode.UNKNOWN_MEMBER_ID
        self._remove(member, "left", now)
        return ErrorCode.NONE

    def _remove(
        self, member: Member, reason: str, now: float, *, rebalance: bool = True
    ) -> None:
        del self.members[member.member_id]
        instance_id = member.group_instance_id
        if instance_id is not None and self.static_members.get(instance_id) == (
            member.member_id
        ):
            del self.static_members[instance_id]
        unknown = ErrorCode.UNKNOWN_MEMBER_ID
        if member.join_reply is not None:
            self.outbox.join(member.join_reply, _join_error(unknown, member.member_id))
        if member.sync_reply is not None:
            self.outbox.sync(member.sync_reply, SyncResult(unknown))
        if self.leader_id == member.member_id:
            self.leader_id = next(iter(self.members), None)
        if reason == "session_timeout":
            self.stats["members_expired"] += 1
        event(
            logger,
            logging.INFO,
            "group.member_removed",
            group=self.group_id,
            member=member.member_id,
            instance=instance_id or "",
            reason=reason,
            members=len(self.members),
        )
        if not rebalance:
            return
        if self.state is GroupState.PREPARING_REBALANCE:
            self._maybe_complete_join(now)
        elif self.state in (GroupState.STABLE, GroupState.COMPLETING_REBALANCE):
            self._prepare_rebalance(now, f"member {member.member_id} {reason}")

    # -- time -----------------------------------------------------------------

    def expire(self, now: float) -> None:
        """Apply every deadline that has passed."""
        preparing = self.state is GroupState.PREPARING_REBALANCE
        for member in list(self.members.values()):
            if preparing and member.join_reply is not None:
                continue
            if member.session_deadline <= now and member.member_id in self.members:
                self._remove(member, "session_timeout", now)
                preparing = self.state is GroupState.PREPARING_REBALANCE

        expired = [mid for mid, at in self.pending_members.items() if at <= now]
        for member_id in expired:
            del self.pending_members[member_id]
        if expired:
            self._maybe_complete_join(now)

        if (
            self.state is GroupState.PREPARING_REBALANCE
            and self.rebalance_deadline is not None
            and self.rebalance_deadline <= now
        ):
            self._complete_join(now)

    def kill(self, error: ErrorCode) -> None:
        """Answer everything parked with ``error`` and mark the group Dead."""
        for member in self.members.values():
            if member.join_reply is not None:
                self.outbox.join(
                    member.join_reply, _join_error(error, member.member_id)
                )
                member.join_reply = None
            if member.sync_reply is not None:
                self.outbox.sync(member.sync_reply, SyncResult(error))
                member.sync_reply = None
        self.state = GroupState.DEAD
        self.members.clear()
        self.static_members.clear()
        self.pending_members.clear()


def _same_protocol(
    group: Group, protocol_type: str | None, protocol_name: str | None
) -> bool:
    """SyncGroup v5+ names the protocol; it must be the group's (None: not sent)."""
    if protocol_type is not None and protocol_type != group.protocol_type:
        return False
    return protocol_name is None or protocol_name == group.protocol_name


def _join_error(error: ErrorCode, member_id: str = "") -> JoinResult:
    return JoinResult(error, member_id=member_id)


# LIMITATION: membership lives in memory only; a control process restart
# makes every member rejoin (UNKNOWN_MEMBER_ID), and an Empty group object
# stays until DeleteGroups.
class GroupCoordinator:
    """Every group of the broker (see the module docstring).

    Public methods validate the group id, find or create the group, let it
    move, then deliver the replies the move decided. ``tick`` applies
    expired deadlines; the caller runs it at ``next_deadline()``.
    """

    def __init__(
        self,
        clock: Clock,
        config: GroupConfig | None = None,
        *,
        on_earlier_deadline: Callable[[float], None] | None = None,
    ) -> None:
        self.clock = clock
        self.config = config or GroupConfig()
        # Called when the earliest deadline moves earlier, so a driver
        # sleeping until the old one can re-arm its timer.
        self.on_earlier_deadline = on_earlier_deadline
        self._groups: dict[str, Group] = {}
        self._outbox = _Outbox()
        self._timers: list[tuple[float, int, str]] = []
        self._timer_sequence = itertools.count()
        self._stats = {"rebalances_completed": 0, "members_expired": 0}

    # -- requests -------------------------------------------------------------

    def join(self, request: JoinRequest, reply: JoinReply) -> None:
        """Handle a JoinGroup; ``reply`` is called now or when the rebalance
        completes. A negative rebalance timeout (JoinGroup v0) means the
        session timeout."""
        try:
            self._join(request, reply)
        finally:
            self._outbox.deliver()

    def _join(self, request: JoinRequest, reply: JoinReply) -> None:
        if not request.group_id:
            self._outbox.join(reply, _join_error(ErrorCode.INVALID_GROUP_ID))
            return
        config = self.config
        session = request.session_timeout_ms
        if (
            not config.min_session_timeout_ms
            <= session
            <= config.max_session_timeout_ms
        ):
            error = _join_error(ErrorCode.INVALID_SESSION_TIMEOUT, request.member_id)
            self._outbox.join(reply, error)
            return
        if request.rebalance_timeout_ms < 0:
            request = dataclasses.replace(request, rebalance_timeout_ms=session)

        group = self._groups.get(request.group_id)
        if group is None:
            if request.member_id:
                # E.g. a member of a group this process forgot in a restart.
                error = _join_error(ErrorCode.UNKNOWN_MEMBER_ID, request.member_id)
                self._outbox.join(reply, error)
                return
            group = Group(request.group_id, config, self._outbox, self._stats)
            self._groups[request.group_id] = group
        group.join(request, reply, self.clock())
        self._schedule(group)

    def sync(
        self,
        group_id: str,
        generation_id: int,
        member_id: str,
        group_instance_id: str | None,
        assignments: dict[str, bytes],
        reply: SyncReply,
        *,
        protocol_type: str | None = None,
        protocol_name: str | None = None,
    ) -> None:
        """Handle a SyncGroup; ``assignments`` counts only from the leader."""
        try:
            group, member, error = self._member(
                group_id, generation_id, member_id, group_instance_id
            )
            if (
                error is ErrorCode.NONE
                and group is not None
                and not _same_protocol(group, protocol_type, protocol_name)
            ):
                error = ErrorCode.INCONSISTENT_GROUP_PROTOCOL
            if error is not ErrorCode.NONE or group is None or member is None:
                self._outbox.sync(reply, SyncResult(error))
                return
            group.sync(member, assignments, reply, self.clock())
            self._schedule(group)
        finally:
            self._outbox.deliver()

    def heartbeat(
        self,
        group_id: str,
        generation_id: int,
        member_id: str,
        group_instance_id: str | None,
    ) -> ErrorCode:
        try:
            group, member, error = self._member(
                group_id, generation_id, member_id, group_instance_id
            )
            if error is not ErrorCode.NONE or group is None or member is None:
                return error
            member.session_deadline = self.clock() + member.session_timeout_ms
            if group.state is GroupState.PREPARING_REBALANCE:
                return ErrorCode.REBALANCE_IN_PROGRESS
            return ErrorCode.NONE
        finally:
            self._outbox.deliver()

    def _member(
        self,
        group_id: str,
        generation_id: int,
        member_id: str,
        group_instance_id: str | None,
    ) -> tuple[Group | None, Member | None, ErrorCode]:
        """The checks SyncGroup, Heartbeat and OffsetCommit share, in Kafka's
        order: group, fencing, member, generation."""
        if not group_id:
            return None, None, ErrorCode.INVALID_GROUP_ID
        group = self._groups.get(group_id)
        if group is None:
            return None, None, ErrorCode.UNKNOWN_MEMBER_ID
        if group.state is GroupState.DEAD:
            return group, None, ErrorCode.COORDINATOR_NOT_AVAILABLE
        if group.is_fenced(member_id, group_instance_id):
            return group, None, ErrorCode.FENCED_INSTANCE_ID
        member = group.members.get(member_id)
        if member is None:
            return group, None, ErrorCode.UNKNOWN_MEMBER_ID
        if generation_id != group.generation_id:
            return group, member, ErrorCode.ILLEGAL_GENERATION
        return group, member, ErrorCode.NONE

    def leave(
        self, group_id: str, members: Iterable[tuple[str, str | None]]
    ) -> tuple[ErrorCode, list[ErrorCode]]:
        """Handle a LeaveGroup of ``(member id, instance id)`` pairs: the
        group-level error and one error per member."""
        identities = list(members)
        try:
            if not group_id:
                return ErrorCode.INVALID_GROUP_ID, []
            group = self._groups.get(group_id)
            if group is None:
                return ErrorCode.NONE, [ErrorCode.UNKNOWN_MEMBER_ID] * len(identities)
            if group.state is GroupState.DEAD:
                return ErrorCode.COORDINATOR_NOT_AVAILABLE, []
            now = self.clock()
            errors = [group.leave(mid, iid, now) for mid, iid in identities]
            self._schedule(group)
            return ErrorCode.NONE, errors
        finally:
            self._outbox.deliver()

    def validate_commit(
        self,
        group_id: str,
        generation_id: int,
        member_id: str,
        group_instance_id: str | None,
    ) -> ErrorCode:
        """May this OffsetCommit be applied? A commit with a negative
        generation is accepted for a group without members (a consumer
        that assigns partitions itself); a commit by a member counts as a
        heartbeat."""
        if not group_id:
            return ErrorCode.INVALID_GROUP_ID
        group = self._groups.get(group_id)
        if group is None:
            return ErrorCode.NONE if generation_id < 0 else ErrorCode.ILLEGAL_GENERATION
        if group.state is GroupState.DEAD:
            return ErrorCode.COORDINATOR_NOT_AVAILABLE
        if group.is_fenced(member_id, group_instance_id):
            return ErrorCode.FENCED_INSTANCE_ID
        if generation_id < 0 and group.state is GroupState.EMPTY:
            return ErrorCode.NONE
        _, member, error = self._member(
            group_id, generation_id, member_id, group_instance_id
        )
        if error is not ErrorCode.NONE or member is None:
            return error
        if group.state is GroupState.COMPLETING_REBALANCE:
            return ErrorCode.REBALANCE_IN_PROGRESS
        member.session_deadline = self.clock() + member.session_timeout_ms
        return ErrorCode.NONE

    # -- admin ----------------------------------------------------------------

    def describe(self, group_id: str) -> GroupDescription | None:
        group = self._groups.get(group_id)
        return None if group is None else group.describe()

    def list_groups(self) -> list[GroupListing]:
        return [
            GroupListing(g.group_id, g.protocol_type or "", g.state)
            for g in self._groups.values()
        ]

    def state_of(self, group_id: str) -> GroupState | None:
        group = self._groups.get(group_id)
        return None if group is None else group.state

    def subscribed_topics(self, group_id: str) -> frozenset[str] | None:
        """Topics the group's consumers subscribe to; None when unknown (not
        the consumer protocol, or metadata that does not decode)."""
        group = self._groups.get(group_id)
        if group is None or group.state is GroupState.EMPTY:
            return frozenset()
        return group.subscribed_topics

    def protocol_type_of(self, group_id: str) -> str | None:
        group = self._groups.get(group_id)
        return None if group is None else group.protocol_type

    def delete(self, group_id: str) -> ErrorCode:
        """Drop an Empty group: NONE, GROUP_ID_NOT_FOUND or NON_EMPTY_GROUP.
        Its committed offsets are the caller's to delete."""
        group = self._groups.get(group_id)
        if group is None or group.state is GroupState.DEAD:
            return ErrorCode.GROUP_ID_NOT_FOUND
        if group.state is not GroupState.EMPTY:
            return ErrorCode.NON_EMPTY_GROUP
        group.kill(ErrorCode.COORDINATOR_NOT_AVAILABLE)
        del self._groups[group_id]
        event(logger, logging.INFO, "group.deleted", group=group_id)
        return ErrorCode.NONE

    def shutdown(self) -> None:
        """Answer every parked request with COORDINATOR_NOT_AVAILABLE (the
        clients look the coordinator up again and rejoin) and forget all
        groups."""
        try:
            for group in self._groups.values():
                group.kill(ErrorCode.COORDINATOR_NOT_AVAILABLE)
            self._groups.clear()
            self._timers.clear()
        finally:
            self._outbox.deliver()

    # -- time -----------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When ``tick`` next has work (possibly earlier: entries are lazy)."""
        return self._timers[0][0] if self._timers else None

    def tick(self) -> None:
        """Apply every deadline that has passed by the clock's now."""
        try:
            now = self.clock()
            # Each turn pops one entry; entries are pushed only by moves, so
            # the loop is bounded by the heap's size at entry plus one
            # reschedule per group handled.
            budget = len(self._timers)
            while self._timers and self._timers[0][0] <= now and budget >= 0:
                budget -= 1
                deadline, _, group_id = heapq.heappop(self._timers)
                group = self._groups.get(group_id)
                if group is None or group.scheduled != deadline:
                    continue
                group.scheduled = None
                group.expire(now)
                self._schedule(group)
        finally:
            self._outbox.deliver()

    def _schedule(self, group: Group) -> None:
        deadline = group.next_deadline()
        if deadline is None:
            return
        if group.scheduled is not None and group.scheduled <= deadline:
            # An entry at or before it will fire and recompute.
            return
        group.scheduled = deadline
        entry = (deadline, next(self._timer_sequence), group.group_id)
        heapq.heappush(self._timers, entry)
        if self._timers[0] is entry and self.on_earlier_deadline is not None:
            self.on_earlier_deadline(deadline)

    # -- metrics --------------------------------------------------------------

    def statistics(self) -> CoordinatorStatistics:
        by_state: dict[str, int] = {}
        for group in self._groups.values():
            by_state[group.state.value] = by_state.get(group.state.value, 0) + 1
        return CoordinatorStatistics(
            groups=len(self._groups),
            members=sum(len(g.members) for g in self._groups.values()),
            groups_by_state=by_state,
            rebalances_completed=self._stats["rebalances_completed"],
            members_expired=self._stats["members_expired"],
        )
