"""Committed entries as a subscription gives them, and the entry hash (docs/entry-hash.md)."""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from typing import Optional

from coalition_client._pb.coalition.v1 import query_pb2

_ENTRY_KIND = "ENTRY_KIND_"
_ACCOUNT_KIND = "ACCOUNT_KIND_"


def _code(enum_type, value: int, prefix: str) -> str:
    name = enum_type.Name(value)
    return "" if name.endswith("UNSPECIFIED") else name[len(prefix):].lower()


def entry_hash(entry: query_pb2.JournalEntry) -> bytes:
    """The hash of an entry from its fields and previous hash, as the server chains them."""

    def text(value: str) -> bytes:
        data = value.encode()
        return struct.pack(">I", len(data)) + data

    def optional(present: bool, packed: bytes) -> bytes:
        return b"\x01" + packed if present else b"\x00"

    parts = [
        b"coalition.v1.entry\0",
        entry.previous_hash,
        struct.pack(">Q", entry.sequence),
        text(_code(query_pb2.EntryKind, entry.entry_kind, _ENTRY_KIND)),
        struct.pack(">q", entry.accepted_at_unix_ms),
    ]
    if entry.merchant_id:
        parts += [b"\x01", text(entry.merchant_id), text(entry.merchant_transaction_id),
                  text(entry.store_id), text(entry.terminal_id),
                  struct.pack(">q", entry.occurred_at_unix_ms), entry.body_hash]
    else:
        parts.append(b"\x00")
    parts += [
        text(entry.member_id),
        struct.pack(">q", entry.points),
        optional(entry.HasField("spend_minor"), struct.pack(">q", entry.spend_minor)),
        struct.pack(">q", entry.member_points_balance),
        text(entry.memo),
        optional(entry.HasField("terms_version"), struct.pack(">I", entry.terms_version)),
        optional(entry.HasField("refers_to_sequence"), struct.pack(">Q", entry.refers_to_sequence)),
        optional(entry.HasField("expires_at_unix_ms"), struct.pack(">q", entry.expires_at_unix_ms)),
        optional(entry.HasField("earn_rule_version"), struct.pack(">I", entry.earn_rule_version)),
        struct.pack(">I", len(entry.postings)),
    ]
    for posting in entry.postings:
        account = _code(query_pb2.AccountKind, posting.account_kind, _ACCOUNT_KIND)
        parts += [text(f"{account}:{posting.owner_id}"), text(posting.asset),
                  struct.pack(">q", posting.amount)]
    return hashlib.sha256(b"".join(parts)).digest()


@dataclasses.dataclass(frozen=True)
class ReceivedEntry:
    """One entry from a subscription; for a merchant without other merchants' postings."""

    entry: query_pb2.JournalEntry
    postings_withheld: int

    def hash_checks(self) -> Optional[bool]:
        """Whether the hash is what the fields give; None when postings were withheld."""
        if self.postings_withheld:
            return None
        return entry_hash(self.entry) == self.entry.hash
