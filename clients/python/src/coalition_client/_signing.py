"""Transactions by kind, and signing of the exact bytes that are sent (and resent)."""

from __future__ import annotations

import dataclasses
import time
from typing import Optional

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from coalition_client._pb.coalition.v1 import submission_pb2

#: Prefix of every signed transaction body.
SUBMISSION_DOMAIN = b"coalition.v1.submission\0"
#: Prefix of every signed query.
QUERY_DOMAIN = b"coalition.v1.query\0"

Kind = submission_pb2.TransactionKind


def now_ms() -> int:
    return int(time.time() * 1000)


class Signer:
    """A merchant's signing identity: its id, the registered key's id, and the key."""

    def __init__(self, merchant_id: str, key_id: str, key: Ed25519PrivateKey):
        self.merchant_id = merchant_id
        self.key_id = key_id
        self._key = key

    @classmethod
    def from_seed(cls, merchant_id: str, key_id: str, seed: bytes) -> "Signer":
        """From the 32-byte seed (what `coalition keygen` writes, in hex)."""
        return cls(merchant_id, key_id, Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def public_key(self) -> bytes:
        """The 32-byte public key to register."""
        return self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sign_bytes(self, domain: bytes, data: bytes) -> bytes:
        """The 64-byte signature over `domain || data`."""
        return self._key.sign(domain + data)

    def __repr__(self) -> str:
        return f"Signer(merchant_id={self.merchant_id!r}, key_id={self.key_id!r})"


@dataclasses.dataclass(frozen=True)
class Signed:
    """A signed transaction: the exact bytes sent, and resent on a retry. Keep it to resend
    after a restart of your own process; a transaction built again gets a new time, hence a
    new body, and is refused as TRANSACTION_ID_CONFLICT."""

    merchant_transaction_id: str
    envelope: submission_pb2.Envelope


@dataclasses.dataclass(frozen=True)
class Transaction:
    """A transaction to submit, built by kind (`Transaction.earn(...)` and the others).

    `id` is the merchant's own transaction id, the idempotency key. `store_id` and
    `terminal_id` default to the client's; `occurred_at_ms` to the time of signing."""

    kind: int
    id: str
    member_id: str
    points: int = 0
    spend_minor: Optional[int] = None
    refers_to: str = ""
    refers_to_merchant: str = ""
    legacy_units: int = 0
    store_id: str = ""
    terminal_id: str = ""
    occurred_at_ms: Optional[int] = None

    @classmethod
    def earn(cls, id: str, member_id: str, points: int, **details) -> "Transaction":
        """The merchant awards `points` to the member."""
        return cls(Kind.TRANSACTION_KIND_EARN, id, member_id, points=points, **details)

    @classmethod
    def earn_by_spend(cls, id: str, member_id: str, spend_minor: int, **details) -> "Transaction":
        """Awards what a purchase of `spend_minor` earns under the rules in force."""
        return cls(Kind.TRANSACTION_KIND_EARN, id, member_id, spend_minor=spend_minor, **details)

    @classmethod
    def burn(cls, id: str, member_id: str, points: int, **details) -> "Transaction":
        """The member redeems `points` at the merchant."""
        return cls(Kind.TRANSACTION_KIND_BURN, id, member_id, points=points, **details)

    @classmethod
    def hold(cls, id: str, member_id: str, points: int, **details) -> "Transaction":
        """Reserves `points` for a later capture or void."""
        return cls(Kind.TRANSACTION_KIND_HOLD, id, member_id, points=points, **details)

    @classmethod
    def capture(cls, id: str, hold_id: str, member_id: str, points: int, **details) -> "Transaction":
        """Redeems `points` of the hold `hold_id`, releasing the rest."""
        return cls(Kind.TRANSACTION_KIND_CAPTURE, id, member_id, points=points, refers_to=hold_id,
                   **details)

    @classmethod
    def void(cls, id: str, hold_id: str, member_id: str, **details) -> "Transaction":
        """Releases the whole hold `hold_id`."""
        return cls(Kind.TRANSACTION_KIND_VOID, id, member_id, refers_to=hold_id, **details)

    @classmethod
    def reverse(cls, id: str, original_id: str, member_id: str, points: int,
                of_merchant: str = "", **details) -> "Transaction":
        """Undoes `points` of the earn, burn or capture `original_id` (of `of_merchant`, for
        a return at another merchant than the seller)."""
        return cls(Kind.TRANSACTION_KIND_REVERSAL, id, member_id, points=points,
                   refers_to=original_id, refers_to_merchant=of_merchant, **details)

    @classmethod
    def exchange_in(cls, id: str, member_id: str, legacy_units: int, **details) -> "Transaction":
        """Converts the merchant's legacy units into alliance points."""
        return cls(Kind.TRANSACTION_KIND_EXCHANGE_IN, id, member_id, legacy_units=legacy_units,
                   **details)

    @classmethod
    def exchange_out(cls, id: str, member_id: str, points: int, **details) -> "Transaction":
        """Converts points into the merchant's legacy units."""
        return cls(Kind.TRANSACTION_KIND_EXCHANGE_OUT, id, member_id, points=points, **details)

    def sign(self, signer: Signer, store_id: str = "", terminal_id: str = "") -> Signed:
        """Encodes the body for `signer`'s merchant and signs exactly those bytes."""
        body = submission_pb2.TransactionBody(
            merchant_id=signer.merchant_id,
            merchant_transaction_id=self.id,
            kind=self.kind,
            member_id=self.member_id,
            points=self.points,
            occurred_at_unix_ms=self.occurred_at_ms if self.occurred_at_ms is not None else now_ms(),
            store_id=self.store_id or store_id,
            terminal_id=self.terminal_id or terminal_id,
            refers_to_transaction_id=self.refers_to,
            refers_to_merchant_id=self.refers_to_merchant,
            legacy_units=self.legacy_units,
        )
        if self.spend_minor is not None:
            body.spend_minor = self.spend_minor
        data = body.SerializeToString(deterministic=True)
        envelope = submission_pb2.Envelope(
            merchant_id=signer.merchant_id,
            key_id=signer.key_id,
            body=data,
            signature=signer.sign_bytes(SUBMISSION_DOMAIN, data),
        )
        return Signed(self.id, envelope)
