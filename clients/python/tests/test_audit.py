"""The reference verifier against the worked examples of docs/entry-hash.md and
docs/export-format.md (CI also runs it on the demo's exports, and on a tampered copy)."""

import hashlib

from coalition_client import audit

EXAMPLE_ENTRY = {
    "sequence": 1,
    "kind": "earn",
    "accepted_at_ms": 1767225600250,
    "merchant_id": "tenant-001",
    "merchant_transaction_id": "pos-7-000123",
    "store_id": "store-12",
    "terminal_id": "pos-7",
    "occurred_at_ms": 1767225600000,
    "body_hash": "11" * 32,
    "member_id": "member-000042",
    "points": 180,
    "spend_minor": 18000,
    "member_points_after": 180,
    "memo": "",
    "terms_version": 1,
    "refers_to": None,
    "expires_at_ms": 1798761600000,
    "earn_rule_version": None,
    "postings": [
        {"entry_sequence": 1, "account_kind": "member_wallet", "owner": "member-000042",
         "asset": "PTS", "amount": 180},
        {"entry_sequence": 1, "account_kind": "merchant_issued", "owner": "tenant-001",
         "asset": "PTS", "amount": -180},
    ],
    "previous_hash": "00" * 32,
}
EXAMPLE_HASH = "8dc36be0661886890d20753419213ec6004e56cedf8962bcd1b34a965f5b3389"


def test_the_documented_entry_hash():
    assert audit.entry_hash(EXAMPLE_ENTRY).hex() == EXAMPLE_HASH


def test_the_documented_merkle_example():
    leaves = [bytes.fromhex(EXAMPLE_HASH), b"\x22" * 32, b"\x33" * 32]
    tree = audit.RootBuilder()
    for leaf in leaves:
        tree.push(leaf)
    root = tree.root()
    assert root.hex() == "d1df3ca29087ef49fdf4ad7c0f1f5ca5e541a925a07996dd627fdd3fc22e636e"
    path_0 = [audit.leaf_hash(leaves[1]), audit.leaf_hash(leaves[2])]
    assert audit.root_from_path(0, 3, leaves[0], path_0) == root
    node = audit.node_hash(audit.leaf_hash(leaves[0]), audit.leaf_hash(leaves[1]))
    assert node.hex() == "e8c529b174a5c95e68e63f17c37b8c36c9ec2f79989138d719cc2464179d1588"
    assert audit.root_from_path(2, 3, leaves[2], [node]) == root
    # Another index, a changed sibling or another leaf lead elsewhere.
    assert audit.root_from_path(1, 3, leaves[0], path_0) != root
    assert audit.root_from_path(2, 3, leaves[1], [node]) != root
    assert audit.root_from_path(3, 3, leaves[2], [node]) is None
    assert audit.RootBuilder().root() == hashlib.sha256(b"").digest()


def test_largest_remainder_gives_ties_to_the_first():
    # The same cases as the Rust unit test of split_largest_remainder.
    assert audit.split_largest_remainder(100, [1, 1, 1]) == [34, 33, 33]
    assert audit.split_largest_remainder(-100, [1, 1, 1]) == [-33, -33, -34]
    assert audit.split_largest_remainder(7, [0, 5]) == [0, 7]
    assert audit.split_largest_remainder(10, [1, 1, 1]) == [4, 3, 3]
    assert audit.split_largest_remainder(100, [3, 7]) == [30, 70]
    assert audit.split_largest_remainder(1, [0, 0]) == [0, 0]
    assert sum(audit.split_largest_remainder(997, [13, 29, 31])) == 997
