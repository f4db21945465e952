"""A reference verifier of Coalition's exports and inclusion proofs, written from
docs/export-format.md alone (not from the Rust code), so that the document cannot drift
from what the server writes: CI runs it on the demo's exports.

    python -m coalition_client.audit verify EXPORT_DIR... --operator-key operator.pub
    python -m coalition_client.audit verify-proof member.proof.json --operator-key operator.pub

It checks the manifest's signature and that the manifest names the key, every file's
digest (and a compressed file's content), no file the manifest does not name (beside the
unsigned reconciliation reports), the hash chain, the Merkle root, that every entry
balances per asset and lies in the period, the partners' signed envelopes (body hash and
signature), every earn's and burn's money legs against the merchant's terms in force, the
trial balance, and the settlement
recomputed from the entries and the attribution; given several periods, that they chain.
Exit status 0 when everything verifies, 1 otherwise.
"""

from __future__ import annotations

import argparse
import decimal
import gzip
import hashlib
import json
import os
import struct
import sys
from collections import defaultdict
from typing import Iterator

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

MANIFEST_FORMAT = "coalition-export/2"
PROOF_FORMAT = "coalition-proof/1"
SIGNATURE_DOMAIN = b"coalition.v1.export-manifest\0"
ENTRY_DOMAIN = b"coalition.v1.entry\0"
SUBMISSION_DOMAIN = b"coalition.v1.submission\0"


# --- encodings (docs/entry-hash.md, docs/export-format.md) ---------------------------------


def _text(value: str) -> bytes:
    data = value.encode()
    return struct.pack(">I", len(data)) + data


def _optional(value, fmt: str) -> bytes:
    return b"\x00" if value is None else b"\x01" + struct.pack(fmt, value)


def entry_hash(entry: dict) -> bytes:
    """The hash of an entry as a line of entries.jsonl.gz holds it."""
    parts = [
        ENTRY_DOMAIN,
        bytes.fromhex(entry["previous_hash"]),
        struct.pack(">Q", entry["sequence"]),
        _text(entry["kind"]),
        struct.pack(">q", entry["accepted_at_ms"]),
    ]
    if entry["merchant_id"] is not None:
        parts += [
            b"\x01",
            _text(entry["merchant_id"]),
            _text(entry["merchant_transaction_id"]),
            _text(entry["store_id"]),
            _text(entry["terminal_id"]),
            struct.pack(">q", entry["occurred_at_ms"]),
            bytes.fromhex(entry["body_hash"]),
        ]
    else:
        parts.append(b"\x00")
    parts += [
        _text(entry["member_id"] or ""),
        struct.pack(">q", entry["points"]),
        _optional(entry["spend_minor"], ">q"),
        struct.pack(">q", entry["member_points_after"]),
        _text(entry["memo"]),
        _optional(entry["terms_version"], ">I"),
        _optional(entry["refers_to"], ">Q"),
        _optional(entry["expires_at_ms"], ">q"),
        _optional(entry["earn_rule_version"], ">I"),
        struct.pack(">I", len(entry["postings"])),
    ]
    for posting in entry["postings"]:
        parts += [
            _text(f"{posting['account_kind']}:{posting['owner']}"),
            _text(posting["asset"]),
            struct.pack(">q", posting["amount"]),
        ]
    return hashlib.sha256(b"".join(parts)).digest()


def leaf_hash(entry_hash_bytes: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry_hash_bytes).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class RootBuilder:
    """RFC 9162's Merkle root, a leaf at a time (a stack of complete subtrees)."""

    def __init__(self) -> None:
        self.stack: list[tuple[int, bytes]] = []

    def push(self, entry_hash_bytes: bytes) -> None:
        size, digest = 1, leaf_hash(entry_hash_bytes)
        while self.stack and self.stack[-1][0] == size:
            top_size, top = self.stack.pop()
            digest = node_hash(top, digest)
            size += top_size
        self.stack.append((size, digest))

    def root(self) -> bytes:
        if not self.stack:
            return hashlib.sha256(b"").digest()
        digest = self.stack[-1][1]
        for _, left in reversed(self.stack[:-1]):
            digest = node_hash(left, digest)
        return digest


def root_from_path(index: int, size: int, entry_hash_bytes: bytes, path: list[bytes]):
    """RFC 9162 section 2.1.3.2: the root the audit path leads to, or None."""
    if index >= size:
        return None
    fn, sn = index, size - 1
    digest = leaf_hash(entry_hash_bytes)
    for sibling in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            digest = node_hash(sibling, digest)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            digest = node_hash(digest, sibling)
        fn >>= 1
        sn >>= 1
    return digest if sn == 0 else None


def check_signature(manifest_bytes: bytes, signature_hex: str, key: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(
            bytes.fromhex(signature_hex.strip()), SIGNATURE_DOMAIN + manifest_bytes
        )
        return True
    except (InvalidSignature, ValueError):
        return False


def read_key(text: str) -> bytes:
    if os.path.exists(text):
        with open(text) as file:
            text = file.read()
    key = bytes.fromhex(text.strip())
    if len(key) != 32:
        raise ValueError("an operator key is 32 bytes of hex")
    return key


# --- one export ---------------------------------------------------------------------------


def _lines(folder: str, name: str) -> Iterator[dict]:
    path = os.path.join(folder, name)
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as file:
        for line in file:
            yield json.loads(line)


# Netting buckets of a merchant settlement posting, by entry kind (settlement.md).
_CATEGORY = {
    "earn": "issuance_minor",
    "exchange_in": "issuance_minor",
    "earn_reversal": "issuance_reversed_minor",
    "burn": "redemptions_minor",
    "capture": "redemptions_minor",
    "exchange_out": "redemptions_minor",
    "burn_reversal": "redemptions_reversed_minor",
    "funding": "funding_minor",
}
_REDEMPTIONS = {"burn", "capture", "exchange_out"}
_OPERATOR = {
    "operator_float": "float_minor",
    "operator_fees": "fees_minor",
    "operator_rounding": "rounding_minor",
    "operator_cash": "cash_minor",
}
_NET_FIELDS = [
    "points_issued", "points_redeemed", "issuance_minor", "issuance_reversed_minor",
    "redemptions_minor", "redemptions_reversed_minor", "fees_minor", "funding_minor",
    "breakage_minor",
]


def split_largest_remainder(value: int, weights: list[int]) -> list[int]:
    """Each part ⌊value × w / total⌋, the rest one each to the largest remainders, ties to
    the first."""
    total = sum(weights)
    if total == 0:
        return [0] * len(weights)
    parts = [value * w // total for w in weights]
    remainders = sorted(
        ((value * w % total, index) for index, w in enumerate(weights)),
        key=lambda pair: (-pair[0], pair[1]),
    )
    for _, index in remainders[: value - sum(parts)]:
        parts[index] += 1
    return parts


class Export:
    """What verifying one folder found."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.manifest: dict | None = None
        self.problems: list[str] = []
        self.opening: dict = {}
        self.closing: dict = {}

    def problem(self, text: str) -> None:
        self.problems.append(text)


def verify_export(folder: str, key: bytes) -> Export:
    result = Export(folder)
    with open(os.path.join(folder, "manifest.json"), "rb") as file:
        manifest_bytes = file.read()
    with open(os.path.join(folder, "manifest.sig")) as file:
        signature = file.read()
    if not check_signature(manifest_bytes, signature, key):
        result.problem("manifest.json: the signature does not verify with the key given")
    manifest = json.loads(manifest_bytes)
    result.manifest = manifest
    if manifest["format"] != MANIFEST_FORMAT:
        result.problem(f"manifest.json: format {manifest['format']!r}")
    if manifest["operator_public_key"] != key.hex():
        result.problem("manifest.json: names another operator key")

    # Digests of the files as stored, and of a compressed file's content.
    named = set()
    for file in manifest["files"]:
        path = file["path"]
        named.add(path)
        if path.startswith("/") or any(part in ("", ".", "..") for part in path.split("/")):
            result.problem(f"{path}: not a path inside the folder")
            continue
        full = os.path.join(folder, path)
        if not os.path.exists(full):
            result.problem(f"{path}: missing")
            continue
        if _digest(open(full, "rb")) != (file["sha256"], file["bytes"]):
            result.problem(f"{path}: altered")
        elif "content_sha256" in file:
            signed = (file["content_sha256"], file["content_bytes"])
            if _digest(gzip.open(full, "rb")) != signed:
                result.problem(f"{path}: its content is not the one signed")
    for root, _, names in os.walk(folder):
        for name in names:
            relative = os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
            if relative in ("manifest.json", "manifest.sig") or relative.startswith("reconciliation/"):
                continue
            if relative not in named:
                result.problem(f"{relative}: not named in the manifest")

    # The chain, the root, balance per asset, the period, the trial balance, the netting.
    currency = manifest["currency"]
    with open(os.path.join(folder, "settlement.json")) as file:
        record = json.load(file)
    settlement = record["settlement"]
    shares = {net["merchant_id"]: decimal.Decimal(net["breakage_share"])
              for net in settlement["merchants"]}
    nets: dict[str, dict] = {}
    operator = defaultdict(int)
    redemptions: dict[int, tuple[str, int, int]] = {}
    balances = defaultdict(lambda: [0, 0, 0])  # opening, debits, credits
    for line in _lines(folder, "trial_balance.jsonl.gz"):
        key_ = (line["asset"], line["account_kind"], line["owner"])
        balances[key_][0] = line["opening"]
        result.opening[key_] = line["opening"]
        result.closing[key_] = line["closing"]
    terms = defaultdict(list)
    for version in _lines(folder, "terms.jsonl"):
        terms[version["merchant_id"]].append(version)

    def in_force(merchant: str, at_ms: int):
        versions = [v for v in terms.get(merchant, []) if v["effective_from_ms"] <= at_ms]
        return max(versions, key=lambda v: v["version"]) if versions else None

    for net in settlement["merchants"]:
        version = in_force(net["merchant_id"], manifest["end_ms"] - 1)
        share = decimal.Decimal(version["breakage_share"]) if version else decimal.Decimal(0)
        if share != decimal.Decimal(net["breakage_share"]):
            result.problem(f"settlement.json: {net['merchant_id']}'s breakage share is not "
                           "the one of its terms in force (terms.jsonl)")
    keys = {(k["merchant_id"], k["key_id"]): k for k in _lines(folder, "keys.jsonl")}
    # Envelopes come in entry order: read along with the entries, one at a time.
    envelopes = _lines(folder, "envelopes.jsonl.gz")
    pending = next(envelopes, None)
    previous = bytes.fromhex(manifest["previous_hash"])
    sequence = manifest["first_sequence"] - 1
    tree = RootBuilder()
    count = 0
    for entry in _lines(folder, "entries.jsonl.gz"):
        count += 1
        sequence += 1
        if entry["sequence"] != sequence or bytes.fromhex(entry["previous_hash"]) != previous:
            result.problem(f"entries.jsonl.gz: entry {entry['sequence']} breaks the chain")
            return result
        digest = entry_hash(entry)
        if digest.hex() != entry["hash"]:
            result.problem(f"entries.jsonl.gz: entry {sequence} does not hash to its hash")
            return result
        previous = digest
        tree.push(digest)
        if not manifest["start_ms"] <= entry["accepted_at_ms"] < manifest["end_ms"]:
            result.problem(f"entries.jsonl.gz: entry {sequence} is outside the period")
        sums = defaultdict(int)
        for posting in entry["postings"]:
            sums[posting["asset"]] += posting["amount"]
            line_ = balances[(posting["asset"], posting["account_kind"], posting["owner"])]
            if posting["amount"] >= 0:
                line_[1] += posting["amount"]
            else:
                line_[2] -= posting["amount"]
        if any(sums.values()):
            result.problem(f"entries.jsonl.gz: entry {sequence} does not balance")
        envelope = None
        if pending is not None and pending["entry_sequence"] == sequence:
            envelope, pending = pending, next(envelopes, None)
        if envelope is not None:
            body = bytes.fromhex(envelope["body"])
            key = keys.get((entry["merchant_id"], envelope["key_id"]))
            if hashlib.sha256(body).hexdigest() != entry["body_hash"]:
                result.problem(f"envelopes.jsonl.gz: entry {sequence}'s body is not the one hashed")
            elif key is None or key["valid_from_ms"] > entry["accepted_at_ms"]:
                result.problem(f"envelopes.jsonl.gz: entry {sequence}'s key is not in keys.jsonl")
            else:
                try:
                    Ed25519PublicKey.from_public_bytes(bytes.fromhex(key["public_key"])).verify(
                        bytes.fromhex(envelope["signature"]), SUBMISSION_DOMAIN + body)
                except (InvalidSignature, ValueError):
                    result.problem(f"envelopes.jsonl.gz: entry {sequence}'s partner signature "
                                   "does not verify")
        if entry["kind"] in ("earn", "burn") and entry["merchant_id"] is not None:
            merchant = entry["merchant_id"]
            version = in_force(merchant, entry["accepted_at_ms"])
            if version is None or version["version"] != entry["terms_version"]:
                result.problem(f"entries.jsonl.gz: entry {sequence} does not record the terms "
                               "in force in terms.jsonl")
            else:
                points = decimal.Decimal(entry["points"])
                price = decimal.Decimal(version["issue_price_minor_per_point"
                                                 if entry["kind"] == "earn"
                                                 else "redeem_price_minor_per_point"])
                exact = points * price
                expected_settlement = (
                    -int(exact.to_integral_value(rounding=decimal.ROUND_CEILING))
                    if entry["kind"] == "earn"
                    else int(exact.to_integral_value(rounding=decimal.ROUND_FLOOR)))
                fee = points * decimal.Decimal(version["fee_minor_per_point"])
                expected_fee = -int(fee.to_integral_value(rounding=decimal.ROUND_CEILING))
                moved = defaultdict(int)
                for posting in entry["postings"]:
                    if posting["owner"] == merchant and posting["asset"] == currency:
                        moved[posting["account_kind"]] += posting["amount"]
                if (moved["merchant_settlement"], moved["merchant_fees"]) != (
                        expected_settlement, expected_fee):
                    result.problem(f"entries.jsonl.gz: entry {sequence}'s money legs are not "
                                   "what its terms in terms.jsonl give")
        if entry["kind"] in ("settlement", "payout"):
            continue
        redeemed_value = 0
        for posting in entry["postings"]:
            kind, owner, amount = posting["account_kind"], posting["owner"], posting["amount"]
            if posting["asset"] == "PTS":
                if kind == "merchant_issued":
                    _net(nets, owner)["points_issued"] -= amount
                elif kind == "merchant_redeemed":
                    _net(nets, owner)["points_redeemed"] += amount
                continue
            if posting["asset"] != currency:
                continue
            if kind == "merchant_settlement":
                if entry["kind"] not in _CATEGORY:
                    result.problem(f"entries.jsonl.gz: entry {sequence} ({entry['kind']}) "
                                   "moves a settlement account, which its kind never does")
                    continue
                _net(nets, owner)[_CATEGORY[entry["kind"]]] += amount
                if owner == entry["merchant_id"]:
                    redeemed_value += amount
            elif kind == "merchant_fees":
                _net(nets, owner)["fees_minor"] += amount
            elif kind == "merchant_breakage":
                _net(nets, owner)["breakage_minor"] += amount
            elif kind in _OPERATOR:
                operator[_OPERATOR[kind]] += amount
        if entry["kind"] in _REDEMPTIONS and entry["merchant_id"] is not None:
            redemptions[sequence] = (entry["merchant_id"], entry["points"], redeemed_value)
    if pending is not None:
        result.problem("envelopes.jsonl.gz: names entries the period does not have, "
                       "or is not in entry order")
    if previous.hex() != manifest["head_hash"] or count != manifest["entries"]:
        result.problem("entries.jsonl.gz: does not end at the manifest's head")
    if tree.root().hex() != manifest["entries_root"]:
        result.problem("entries.jsonl.gz: its Merkle root is not the manifest's")

    closing_sums = defaultdict(int)
    for key_, (opening, debits, credits) in balances.items():
        closing = opening + debits - credits
        if result.closing.get(key_, 0) != closing:
            result.problem(f"trial_balance.jsonl.gz: {key_} does not close at {closing}")
        closing_sums[key_[0]] += closing
    if any(closing_sums.values()):
        result.problem("trial_balance.jsonl.gz: the closing balances do not sum to zero")

    # The matrix: each redemption's money split over its attribution.
    by_entry = defaultdict(list)
    for attribution in _lines(folder, "attributions.jsonl.gz"):
        by_entry[attribution["entry_sequence"]].append(attribution)
    cells = defaultdict(lambda: [0, 0])
    for sequence_, (redeemer, points, value) in sorted(redemptions.items()):
        pieces = by_entry.pop(sequence_, [])
        if sum(piece["points"] for piece in pieces) != points:
            result.problem(f"attributions.jsonl.gz: entry {sequence_} is not attributed whole")
        parts = split_largest_remainder(value, [piece["points"] for piece in pieces])
        for piece, part in zip(pieces, parts):
            cell = cells[(piece["issuer"], redeemer)]
            cell[0] += piece["points"]
            cell[1] += part
    if by_entry:
        result.problem("attributions.jsonl.gz: attributes entries that redeem nothing")
    kept = 0
    for merchant, net in nets.items():
        share = shares.get(merchant, decimal.Decimal(0))
        net["breakage_share_minor"] = int(
            (decimal.Decimal(net["breakage_minor"]) * share).to_integral_value(
                rounding=decimal.ROUND_FLOOR))
        net["net_minor"] = (net["issuance_minor"] + net["issuance_reversed_minor"]
                            + net["redemptions_minor"] + net["redemptions_reversed_minor"]
                            + net["funding_minor"] + net["fees_minor"]
                            + net["breakage_share_minor"])
        kept += net["breakage_minor"] - net["breakage_share_minor"]
    operator["breakage_kept_minor"] = kept
    operator_net = sum(operator[field] for field in
                       ("float_minor", "fees_minor", "rounding_minor", "cash_minor",
                        "breakage_kept_minor"))
    signed_nets = {net["merchant_id"]: net for net in settlement["merchants"]}
    if set(signed_nets) != set(nets):
        result.problem("settlement.json: not the merchants the entries net")
    for merchant, net in nets.items():
        signed = signed_nets.get(merchant, {})
        for field in _NET_FIELDS + ["breakage_share_minor", "net_minor"]:
            if signed.get(field) != net[field]:
                result.problem(f"settlement.json: {merchant} {field} is {signed.get(field)}, "
                               f"the entries give {net[field]}")
    for field in ("float_minor", "fees_minor", "rounding_minor", "cash_minor",
                  "breakage_kept_minor"):
        if settlement["operator"][field] != operator[field]:
            result.problem(f"settlement.json: the operator's {field} is not the entries'")
    if settlement["operator"]["net_minor"] != operator_net:
        result.problem("settlement.json: the operator's net is not the entries'")
    if sum(net["net_minor"] for net in nets.values()) + operator_net != 0:
        result.problem("settlement.json: the nets do not sum to zero")
    matrix = {(cell["issuer"], cell["redeemer"]): [cell["points"], cell["value_minor"]]
              for cell in settlement["matrix"]}
    if matrix != dict(cells):
        result.problem("settlement.json: the matrix is not what the attribution gives")
    return result


def _digest(stream) -> tuple[str, int]:
    """SHA-256 (hex) and length of what a stream gives, a megabyte at a time."""
    hasher, length = hashlib.sha256(), 0
    with stream:
        while chunk := stream.read(1 << 20):
            hasher.update(chunk)
            length += len(chunk)
    return hasher.hexdigest(), length


def _net(nets: dict, merchant: str) -> dict:
    if merchant not in nets:
        nets[merchant] = {"merchant_id": merchant, **{field: 0 for field in _NET_FIELDS}}
    return nets[merchant]


def chain_problems(earlier: Export, later: Export) -> list[str]:
    first, second = earlier.manifest, later.manifest
    problems = []
    if second["start_ms"] < first["end_ms"]:
        problems.append(f"period {second['period']} starts before {first['period']} ends")
    if second["previous_hash"] != first["head_hash"]:
        problems.append(f"period {second['period']} does not continue the chain of {first['period']}")
    closing = {key: amount for key, amount in earlier.closing.items() if amount}
    opening = {key: amount for key, amount in later.opening.items() if amount}
    if closing != opening:
        problems.append(f"period {second['period']} does not open at {first['period']}'s closing")
    return problems


# --- proofs ---------------------------------------------------------------------------------


def _concerns(subject: dict, entry: dict) -> bool:
    kind = subject["kind"]
    if kind == "transaction":
        return (entry["merchant_id"] == subject["merchant_id"]
                and entry["merchant_transaction_id"] == subject["transaction_id"])
    if kind == "member":
        return entry["member_id"] == subject["member_id"]
    if kind == "merchant":
        return entry["merchant_id"] == subject["merchant_id"] or any(
            posting["account_kind"].startswith("merchant_")
            and posting["owner"] == subject["merchant_id"]
            for posting in entry["postings"])
    return False


def verify_proof(proof: dict, key: bytes) -> list[str]:
    problems = []
    if proof.get("format") != PROOF_FORMAT:
        problems.append(f"format {proof.get('format')!r}")
    manifest_bytes = proof["manifest"].encode()
    if not check_signature(manifest_bytes, proof["signature"], key):
        problems.append("manifest: the signature does not verify with the key given")
    manifest = json.loads(manifest_bytes)
    if manifest["operator_public_key"] != key.hex():
        problems.append("manifest: names another operator key")
    root = bytes.fromhex(manifest["entries_root"])
    if not proof["entries"]:
        problems.append("the proof lists no entry")
    indices = [proved["leaf_index"] for proved in proof["entries"]]
    if any(a >= b for a, b in zip(indices, indices[1:])):
        problems.append("the entries are not in order, or one is listed twice")
    subject = proof["subject"]
    if subject["kind"] == "merchant":
        counted = manifest.get("merchant_entries", {}).get(subject["merchant_id"], 0)
        if len(proof["entries"]) != counted:
            problems.append(f"lists {len(proof['entries'])} of the {counted} entries of the "
                            "merchant the manifest counts")
    for proved in proof["entries"]:
        entry = proved["entry"]
        if not _concerns(proof["subject"], entry):
            problems.append(f"entry {entry['sequence']}: not about the subject")
        if proved["leaf_index"] != entry["sequence"] - manifest["first_sequence"]:
            problems.append(f"entry {entry['sequence']}: at the wrong leaf")
        digest = entry_hash(entry)
        if digest.hex() != entry["hash"]:
            problems.append(f"entry {entry['sequence']}: its fields do not give its hash")
            continue
        path = [bytes.fromhex(node) for node in proved["path"]]
        if root_from_path(proved["leaf_index"], manifest["entries"], digest, path) != root:
            problems.append(f"entry {entry['sequence']}: its path does not lead to the root")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coalition_client.audit")
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="verify export folders, in period order")
    verify.add_argument("folders", nargs="+")
    verify.add_argument("--operator-key", required=True)
    proof = commands.add_parser("verify-proof", help="verify an inclusion proof")
    proof.add_argument("proof")
    proof.add_argument("--operator-key", required=True)
    args = parser.parse_args(argv)
    key = read_key(args.operator_key)
    found = 0
    if args.command == "verify":
        previous = None
        for folder in args.folders:
            result = verify_export(folder, key)
            problems = list(result.problems)
            if previous is not None:
                problems += chain_problems(previous, result)
            for problem in problems:
                print(f"{folder}: {problem}")
            if not problems:
                print(f"{folder}: period {result.manifest['period']} verified "
                      f"({result.manifest['entries']} entries, settlement recomputed)")
            found += len(problems)
            previous = result
    else:
        with open(args.proof) as file:
            document = json.load(file)
        problems = verify_proof(document, key)
        for problem in problems:
            print(f"{args.proof}: {problem}")
        if not problems:
            print(f"{args.proof}: {len(document['entries'])} entries proved")
        found = len(problems)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
