"""What a submission's answer means, as types, and the errors of whole calls."""

from __future__ import annotations

import dataclasses
import enum
from typing import Union

import grpc

from coalition_client._pb.coalition.v1 import submission_pb2

_PREFIX = "REJECTION_REASON_"

#: Why a submission was refused: the stable codes of `RejectionReason` in submission.proto,
#: named without their prefix (`RejectionReason.MEMBER_UNKNOWN`).
RejectionReason = enum.IntEnum(
    "RejectionReason",
    {name[len(_PREFIX):]: value for name, value in submission_pb2.RejectionReason.items()},
)


@dataclasses.dataclass(frozen=True)
class Accepted:
    """Booked by this submission."""

    merchant_transaction_id: str
    entry_sequence: int
    accepted_at_ms: int
    kind: int
    member_id: str
    points: int
    member_points_balance: int


@dataclasses.dataclass(frozen=True)
class Duplicate(Accepted):
    """The same body was booked before: its original result; nothing new was applied. A
    retry after a lost answer reads so: the transaction is booked exactly once."""


@dataclasses.dataclass(frozen=True)
class Rejected:
    """Refused; nothing was applied."""

    merchant_transaction_id: str
    reason: RejectionReason
    message: str


Outcome = Union[Accepted, Duplicate, Rejected]


class CoalitionError(Exception):
    """A whole call failed; refusals of single transactions are `Rejected` outcomes."""


class Refused(CoalitionError):
    """The server refused the call for a reason a retry cannot change."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class RetriesExhausted(CoalitionError):
    """The call failed every time with a failure that may pass. What was sent may or may not
    be booked: send the same `Signed` again later to learn which."""

    def __init__(self, attempts: int, code: grpc.StatusCode, details: str):
        super().__init__(f"gave up after {attempts} attempts: {code.name}: {details}")
        self.attempts = attempts
        self.code = code
        self.details = details


class ProtocolError(CoalitionError):
    """The server answered something this client cannot read."""


def outcome_from_wire(result: submission_pb2.SubmissionResult) -> Outcome:
    which = result.WhichOneof("outcome")
    if which == "accepted":
        a = result.accepted
        cls = Duplicate if a.duplicate else Accepted
        return cls(result.merchant_transaction_id, a.entry_sequence, a.accepted_at_unix_ms,
                   a.kind, a.member_id, a.points, a.member_points_balance)
    if which == "rejected":
        try:
            reason = RejectionReason(result.rejected.reason)
        except ValueError:
            raise ProtocolError(f"rejection reason {result.rejected.reason} is unknown to this "
                                f"client ({result.rejected.message}): upgrade it") from None
        return Rejected(result.merchant_transaction_id, reason, result.rejected.message)
    raise ProtocolError(f"the result for {result.merchant_transaction_id!r} has no outcome")
