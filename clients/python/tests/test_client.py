"""The Python client against a real server: the README's worked examples byte for byte,
every kind of transaction, a batch with bad items, a duplicate, a conflict, a retry after a
dropped connection, the streaming submitter, signed queries and the entry subscription."""

import pathlib
import socket
import threading
import time

import pytest

from coalition_client import (
    QUERY_DOMAIN,
    Accepted,
    Client,
    Duplicate,
    Refused,
    Rejected,
    RejectionReason,
    RetriesExhausted,
    RetryPolicy,
    Signer,
    Transaction,
    entry_hash,
)
from coalition_client._pb.coalition.v1 import query_pb2

README = pathlib.Path(__file__).resolve().parents[3] / "README.md"
FAST = RetryPolicy(attempts_max=8, backoff_initial_s=0.02, backoff_max_s=0.2)


def readme_value(label: str) -> str:
    for line in README.read_text().splitlines():
        if line.startswith(label):
            return line[len(label):].strip()
    raise AssertionError(f"the README has no line {label!r}")


def client(server, signer, **options) -> Client:
    return Client(server.address, signer, store_id="store-1", terminal_id="pos-1",
                  retry=options.pop("retry", FAST), **options)


def test_the_readme_examples_byte_for_byte():
    seed = bytes(range(32))
    signer = Signer.from_seed("tenant-001", "key-1", seed)
    signed = Transaction.earn("pos-7-000123", "member-000042", 180, spend_minor=18000,
                              occurred_at_ms=1767225600000).sign(signer, "store-12", "pos-7")
    assert signer.public_key.hex() == readme_value("public key (hex):")
    assert signed.envelope.body.hex() == readme_value("body (hex):")
    assert signed.envelope.signature.hex() == readme_value("signature (hex):")
    query = query_pb2.BalanceQuery(merchant_id="tenant-001", issued_at_unix_ms=1767225600000,
                                   account_kind=query_pb2.ACCOUNT_KIND_MEMBER_WALLET,
                                   owner_id="member-000042")
    data = query.SerializeToString(deterministic=True)
    assert data.hex() == readme_value("query (hex):")
    assert signer.sign_bytes(QUERY_DOMAIN, data).hex() == readme_value("query signature (hex):")


def test_every_kind_of_transaction(server):
    full = dict(earn_points_per_minor="0.01", cross_merchant_reversals=True)
    tenant = client(server, server.merchant("tenant-1", legacy_unit="MALLSTAR",
                                            points_per_legacy_unit="0.5", **full))
    desk = client(server, server.merchant("tenant-2", **full))
    cinema = client(server, server.merchant("cinema-1"))
    server.enroll("m-1")
    with tenant, desk, cinema:
        earned = tenant.submit(Transaction.earn("sale-1", "m-1", 500))
        assert isinstance(earned, Accepted) and not isinstance(earned, Duplicate)
        assert (earned.points, earned.member_points_balance) == (500, 500)
        assert tenant.submit(Transaction.earn_by_spend("sale-2", "m-1", 18000)).points == 180
        assert cinema.submit(Transaction.burn("ticket-1", "m-1", 80)).member_points_balance == 600
        assert cinema.submit(Transaction.hold("gate-in-1", "m-1", 100)).member_points_balance == 500
        captured = cinema.submit(Transaction.capture("gate-out-1", "gate-in-1", "m-1", 60))
        assert (captured.points, captured.member_points_balance) == (60, 540)
        cinema.submit(Transaction.hold("gate-in-2", "m-1", 40))
        assert cinema.submit(Transaction.void("void-2", "gate-in-2", "m-1")).member_points_balance == 540
        assert tenant.submit(Transaction.reverse("refund-1", "sale-1", "m-1", 100)).member_points_balance == 440
        returned = desk.submit(Transaction.reverse("return-1", "sale-2", "m-1", 80, of_merchant="tenant-1"))
        assert returned.member_points_balance == 360
        exchanged = tenant.submit(Transaction.exchange_in("miles-in-1", "m-1", 101))
        assert (exchanged.points, exchanged.member_points_balance) == (50, 410)
        assert tenant.submit(Transaction.exchange_out("miles-out-1", "m-1", 10)).member_points_balance == 400
        assert tenant.balance("m-1").points == 400


def test_a_batch_with_bad_items_a_duplicate_and_a_conflict(server):
    tenant = client(server, server.merchant("tenant-1"), batch_len_max=3)
    server.enroll("m-1", "m-2")
    with tenant:
        batch = [
            Transaction.earn("b-1", "m-1", 10),
            Transaction.earn("b-2", "m-1", 0),
            Transaction.earn("b-3", "m-2", 20),
            Transaction.earn("b-4", "nobody", 5),
            Transaction.burn("b-5", "m-2", 500),
            Transaction.earn("b-6", "m-1", 30),
        ]
        signed = [tenant.sign(t) for t in batch]
        outcomes = tenant.submit_batch_signed(signed)
        assert [o.merchant_transaction_id for o in outcomes] == [t.id for t in batch]
        assert [o.reason for o in outcomes if isinstance(o, Rejected)] == [
            RejectionReason.POINTS_INVALID,
            RejectionReason.MEMBER_UNKNOWN,
            RejectionReason.POINTS_INSUFFICIENT,
        ]
        assert outcomes[5].member_points_balance == 40
        again = tenant.submit_signed(signed[0])
        assert isinstance(again, Duplicate)
        assert again.entry_sequence == outcomes[0].entry_sequence
        conflict = tenant.submit(Transaction.earn("b-1", "m-1", 11))
        assert isinstance(conflict, Rejected)
        assert conflict.reason == RejectionReason.TRANSACTION_ID_CONFLICT
        assert tenant.balance("m-1").points == 40


class LossyProxy:
    """Forwards to the server. On the first connection it passes the HTTP/2 handshake both
    ways, then, from the client's first HEADERS frame (the call) on, carries the client's
    bytes but none of the server's, and cuts the connection half a second later: the server
    books the call and the client never hears of it. Later connections pass both ways."""

    PREFACE = len(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    HEADERS = 0x1

    def __init__(self, upstream: str):
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                inbound, _ = self.listener.accept()
            except OSError:
                return
            outbound = socket.create_connection(self.upstream)
            if self.connections == 0:
                called = threading.Event()
                threading.Thread(target=self._watch_calls, args=(inbound, outbound, called),
                                 daemon=True).start()
                threading.Thread(target=self._until, args=(outbound, inbound, called),
                                 daemon=True).start()
            else:
                threading.Thread(target=self._pipe, args=(inbound, outbound), daemon=True).start()
                threading.Thread(target=self._pipe, args=(outbound, inbound), daemon=True).start()
            self.connections += 1

    def _watch_calls(self, source, target, called):
        """Client to server, parsing frame headers to see the first HEADERS frame."""
        buffer = b""
        offset = self.PREFACE
        try:
            while data := source.recv(65536):
                target.sendall(data)
                buffer += data
                while len(buffer) >= offset + 9:
                    length = int.from_bytes(buffer[offset:offset + 3], "big")
                    if buffer[offset + 3] == self.HEADERS and not called.is_set():
                        called.set()
                        threading.Timer(0.5, self._cut, args=(source, target)).start()
                    offset += 9 + length
        except OSError:
            pass

    @staticmethod
    def _until(source, target, called):
        """Server to client, until the call: then nothing more reaches the client."""
        try:
            while data := source.recv(65536):
                if not called.is_set():
                    target.sendall(data)
        except OSError:
            pass

    @staticmethod
    def _pipe(source, target):
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass

    @staticmethod
    def _cut(*sockets):
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self):
        self.listener.close()


def test_a_retry_after_a_dropped_connection_books_once(server):
    signer = server.merchant("tenant-1")
    server.enroll("m-1")
    proxy = LossyProxy(server.address)
    with Client(proxy.address, signer, store_id="s", terminal_id="t", retry=FAST) as lossy:
        outcome = lossy.submit(Transaction.earn("lost-answer-1", "m-1", 70))
    proxy.close()
    assert isinstance(outcome, Duplicate), outcome
    assert (outcome.entry_sequence, outcome.member_points_balance) == (1, 70)
    with client(server, signer) as direct:
        assert direct.balance("m-1").points == 70


def test_retries_end_after_the_policy_s_attempts():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        address = f"127.0.0.1:{taken.getsockname()[1]}"
    signer = Signer.from_seed("tenant-1", "key-1", bytes(32))
    policy = RetryPolicy(attempts_max=3, backoff_initial_s=0.01, backoff_max_s=0.02)
    with Client(address, signer, retry=policy) as nowhere:
        with pytest.raises(RetriesExhausted) as failure:
            nowhere.submit(Transaction.earn("e-1", "m-1", 1))
    assert failure.value.attempts == 3


def test_the_streaming_submitter_answers_each_once(server):
    tenant = client(server, server.merchant("tenant-1"))
    server.enroll("m-1")
    with tenant, tenant.stream(in_flight_max=8) as submitter:
        futures = [submitter.submit(Transaction.earn(f"s-{i}", "m-1", 1)) for i in range(50)]
        outcomes = [f.result(timeout=20) for f in futures]
        assert all(isinstance(o, Accepted) for o in outcomes)
        assert sorted(o.entry_sequence for o in outcomes) == list(range(1, 51))
        bad = submitter.submit(Transaction.burn("s-bad", "m-1", 1000)).result(timeout=20)
        assert bad.reason == RejectionReason.POINTS_INSUFFICIENT
        assert tenant.balance("m-1").points == 50


def test_signed_queries(server):
    tenant = client(server, server.merchant("tenant-1"))
    cinema = client(server, server.merchant("cinema-1"))
    server.enroll("m-1")
    with tenant, cinema:
        for i in range(5):
            tenant.submit(Transaction.earn(f"e-{i}", "m-1", 10))
        cinema.submit(Transaction.burn("c-1", "m-1", 15))
        balance = tenant.balance("m-1")
        assert (balance.points, balance.as_of_entry_sequence) == (35, 6)
        page = tenant.history("m-1", page_len=3)
        assert [e.sequence for e in page.entries] == [5, 4, 3]
        rest = tenant.history("m-1", before_sequence=page.next_before_sequence, page_len=3)
        assert [e.sequence for e in rest.entries] == [2, 1]
        assert tenant.transaction("e-3").sequence == 4
        assert tenant.transaction("never-sent") is None
        with pytest.raises(Refused) as refused:
            tenant.balance("not-a-member")
        assert refused.value.code.name == "NOT_FOUND"


def test_the_entry_subscription_gives_each_merchant_its_entries_with_hashes(server):
    tenant = client(server, server.merchant("tenant-1"))
    cinema = client(server, server.merchant("cinema-1"))
    server.enroll("m-1")
    with tenant, cinema:
        tenant.submit(Transaction.earn("e-1", "m-1", 100))
        cinema.submit(Transaction.burn("b-1", "m-1", 30))
        tenant.submit(Transaction.earn("e-2", "m-1", 50))
        everything = Client(server.address, tenant.signer, admin_token="python-tests-admin-token-0123456789",
                            retry=FAST).subscribe(0)
        entries = [next(everything) for _ in range(3)]
        assert [r.entry.sequence for r in entries] == [1, 2, 3]
        previous = bytes(32)
        for received in entries:
            assert received.hash_checks() is True
            assert entry_hash(received.entry) == received.entry.hash
            assert received.entry.previous_hash == previous
            previous = received.entry.hash
        mine = tenant.subscribe(0)
        assert [next(mine).entry.sequence for _ in range(2)] == [1, 3]
        # Live: an entry booked now arrives.
        tenant.submit(Transaction.earn("e-3", "m-1", 5))
        assert next(mine).entry.merchant_transaction_id == "e-3"
        assert mine.last_sequence == 4
        mine.close()
        everything.close()
