"""The client: connection, submissions with retries, the streaming submitter, signed queries
and the entry subscription."""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from concurrent.futures import Future
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, TypeVar

import grpc

from coalition_client._entries import ReceivedEntry
from coalition_client._outcome import (
    Outcome,
    ProtocolError,
    Refused,
    RetriesExhausted,
    outcome_from_wire,
)
from coalition_client._pb.coalition.v1 import (
    query_pb2,
    query_pb2_grpc,
    submission_pb2,
    submission_pb2_grpc,
)
from coalition_client._retry import RetryPolicy, is_retryable
from coalition_client._signing import QUERY_DOMAIN, Signed, Signer, Transaction, now_ms

#: The server's default limit on envelopes per SubmitBatch call (batch_request_len_max).
BATCH_LEN_MAX_DEFAULT = 10_000

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Balance:
    points: int
    as_of_entry_sequence: int


@dataclasses.dataclass(frozen=True)
class HistoryPage:
    entries: List[query_pb2.JournalEntry]
    next_before_sequence: Optional[int]
    member_points_balance: int


class Client:
    """A merchant's connection to Coalition. Use it as a context manager, or call close().

    Every submission is signed once and sent as the same bytes on each attempt, so a retry
    can never book twice."""

    def __init__(
        self,
        address: str,
        signer: Signer,
        *,
        store_id: str = "",
        terminal_id: str = "",
        retry: RetryPolicy = RetryPolicy(),
        batch_len_max: int = BATCH_LEN_MAX_DEFAULT,
        timeout_s: Optional[float] = None,
        admin_token: Optional[str] = None,
    ):
        self.signer = signer
        self.store_id = store_id
        self.terminal_id = terminal_id
        self.retry = retry
        self.batch_len_max = max(batch_len_max, 1)
        self.timeout_s = timeout_s
        self._admin_metadata = (
            (("authorization", f"Bearer {admin_token}"),) if admin_token is not None else None
        )
        self._channel = grpc.insecure_channel(address)
        self._submissions = submission_pb2_grpc.SubmissionServiceStub(self._channel)
        self._queries = query_pb2_grpc.QueryServiceStub(self._channel)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    # Submissions.

    def sign(self, transaction: Transaction) -> Signed:
        """Signs a transaction as this client would send it; submit_signed sends it."""
        return transaction.sign(self.signer, self.store_id, self.terminal_id)

    def submit(self, transaction: Transaction) -> Outcome:
        """Signs and submits one transaction; returns once it is committed or refused."""
        return self.submit_signed(self.sign(transaction))

    def submit_signed(self, signed: Signed) -> Outcome:
        """Submits a signed transaction (again): the same bytes on every attempt."""
        request = submission_pb2.SubmitRequest(envelope=signed.envelope)
        response = self._with_retries(
            lambda: self._submissions.Submit(request, timeout=self.timeout_s)
        )
        return outcome_from_wire(response.result)

    def submit_batch(self, transactions: Iterable[Transaction]) -> List[Outcome]:
        """Signs and submits many: one outcome each, in order, in calls of at most
        batch_len_max; a refused item never affects the others."""
        return self.submit_batch_signed([self.sign(t) for t in transactions])

    def submit_batch_signed(self, signed: Sequence[Signed]) -> List[Outcome]:
        outcomes: List[Outcome] = []
        for start in range(0, len(signed), self.batch_len_max):
            chunk = signed[start:start + self.batch_len_max]
            request = submission_pb2.SubmitBatchRequest(envelopes=[s.envelope for s in chunk])
            response = self._with_retries(
                lambda: self._submissions.SubmitBatch(request, timeout=self.timeout_s)
            )
            if len(response.results) != len(chunk):
                raise ProtocolError(f"{len(response.results)} results for {len(chunk)} envelopes")
            outcomes.extend(outcome_from_wire(result) for result in response.results)
        return outcomes

    def stream(self, in_flight_max: int = 64) -> "StreamSubmitter":
        """A submitter over one long-lived SubmitStream with at most `in_flight_max`
        transactions awaiting their answers."""
        return StreamSubmitter(self, in_flight_max)

    # Queries.

    def balance(self, member_id: str) -> Balance:
        """A member's points (any merchant may ask)."""
        response = self._query(
            query_pb2.BalanceQuery(
                merchant_id=self._reader(),
                account_kind=query_pb2.ACCOUNT_KIND_MEMBER_WALLET,
                owner_id=member_id,
                asset="PTS",
            ),
            lambda data, signature: self._queries.GetBalance(
                query_pb2.GetBalanceRequest(query=data, signature=signature),
                timeout=self.timeout_s, metadata=self._admin_metadata,
            ),
        )
        return Balance(response.points, response.as_of_entry_sequence)

    def history(self, member_id: str, before_sequence: Optional[int] = None,
                page_len: int = 0) -> HistoryPage:
        """A page of the member's entries made at this merchant, newest first."""
        query = query_pb2.MemberHistoryQuery(
            merchant_id=self._reader(), member_id=member_id, page_len=page_len
        )
        if before_sequence is not None:
            query.before_sequence = before_sequence
        response = self._query(
            query,
            lambda data, signature: self._queries.GetMemberHistory(
                query_pb2.GetMemberHistoryRequest(query=data, signature=signature),
                timeout=self.timeout_s, metadata=self._admin_metadata,
            ),
        )
        next_before = (
            response.next_before_sequence if response.HasField("next_before_sequence") else None
        )
        return HistoryPage(list(response.entries), next_before, response.member_points_balance)

    def transaction(self, merchant_transaction_id: str) -> Optional[query_pb2.JournalEntry]:
        """The entry this merchant's transaction made, or None if none was booked."""
        try:
            response = self._query(
                query_pb2.TransactionQuery(
                    merchant_id=self._reader(),
                    transaction_merchant_id=self.signer.merchant_id,
                    merchant_transaction_id=merchant_transaction_id,
                ),
                lambda data, signature: self._queries.GetTransaction(
                    query_pb2.GetTransactionRequest(query=data, signature=signature),
                    timeout=self.timeout_s, metadata=self._admin_metadata,
                ),
            )
        except Refused as refused:
            if refused.code == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return response.entry

    def subscribe(self, after_sequence: int = 0) -> "EntrySubscription":
        """Committed entries after `after_sequence`, then live: for a merchant those that
        concern it, with the admin token all. Iterate it; it resumes by itself."""
        return EntrySubscription(self, after_sequence)

    # Internals.

    def _reader(self) -> str:
        return "" if self._admin_metadata else self.signer.merchant_id

    def _signature(self, data: bytes) -> Optional[query_pb2.QuerySignature]:
        """The merchant's signature over query bytes; none when the admin token reads."""
        if self._admin_metadata:
            return None
        return query_pb2.QuerySignature(
            merchant_id=self.signer.merchant_id,
            key_id=self.signer.key_id,
            signature=self.signer.sign_bytes(QUERY_DOMAIN, data),
        )

    def _query(self, query, call: Callable[[bytes, Optional[query_pb2.QuerySignature]], T]) -> T:
        """Stamps, signs (afresh on each attempt: a query changes nothing and its stamp must
        be recent) and sends a query with retries."""

        def attempt() -> T:
            query.issued_at_unix_ms = now_ms()
            data = query.SerializeToString(deterministic=True)
            return call(data, self._signature(data))

        return self._with_retries(attempt)

    def _with_retries(self, attempt: Callable[[], T]) -> T:
        failures = 0
        while True:
            try:
                return attempt()
            except grpc.RpcError as error:
                if not is_retryable(error):
                    raise Refused(error.code(), error.details()) from None
                failures += 1
                if failures >= self.retry.attempts_max:
                    raise RetriesExhausted(failures, error.code(), error.details()) from None
                time.sleep(self.retry.backoff(failures))


class StreamSubmitter:
    """Submits over one SubmitStream, at most `in_flight_max` awaiting answers. `submit`
    returns a Future resolving to the outcome. When the stream fails with a retryable
    failure, a new one is opened and every unanswered transaction is sent again (the same
    bytes). Use it as a context manager, or call close() to end the stream once the answers
    are in."""

    _END = object()

    def __init__(self, client: Client, in_flight_max: int):
        self._client = client
        self._room = threading.BoundedSemaphore(max(in_flight_max, 1))
        self._lock = threading.Lock()
        # What is sent and not answered yet, by reference: the one source of truth. A new
        # stream resends all of it.
        self._pending: dict = {}
        self._incoming: "queue.Queue" = queue.Queue()
        self._closing = threading.Event()
        self._next_reference = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def __enter__(self) -> "StreamSubmitter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def submit(self, transaction: Transaction) -> "Future[Outcome]":
        return self.submit_signed(self._client.sign(transaction))

    def submit_signed(self, signed: Signed) -> "Future[Outcome]":
        self._room.acquire()
        future: "Future[Outcome]" = Future()
        future.add_done_callback(lambda _: self._room.release())
        with self._lock:
            reference = self._next_reference
            self._next_reference += 1
            self._pending[reference] = (signed, future)
        self._incoming.put(reference)
        return future

    def close(self) -> None:
        """Waits for every answer, then ends the stream."""
        self._closing.set()
        self._incoming.put(self._END)
        self._thread.join()

    def _requests(self, stop: threading.Event) -> Iterator:
        with self._lock:
            resend = sorted(self._pending.items())
        sent = set()
        for reference, (signed, _) in resend:
            sent.add(reference)
            yield submission_pb2.SubmitStreamRequest(client_reference=str(reference),
                                                     envelope=signed.envelope)
        while not stop.is_set():
            try:
                item = self._incoming.get(timeout=0.05)
            except queue.Empty:
                with self._lock:
                    drained = not self._pending
                if self._closing.is_set() and drained:
                    return
                continue
            if item is self._END or item in sent:
                continue
            with self._lock:
                entry = self._pending.get(item)
            if entry is not None:
                sent.add(item)
                yield submission_pb2.SubmitStreamRequest(client_reference=str(item),
                                                         envelope=entry[0].envelope)

    def _run(self) -> None:
        failures = 0
        while True:
            with self._lock:
                idle = not self._pending
            if idle:
                if self._closing.is_set():
                    return
                try:
                    self._incoming.get(timeout=0.05)  # a reference already pending, or END
                except queue.Empty:
                    pass
                continue
            stop = threading.Event()
            try:
                for response in self._client._submissions.SubmitStream(self._requests(stop)):
                    failures = 0
                    with self._lock:
                        entry = self._pending.pop(int(response.client_reference), None)
                    if entry is not None:
                        try:
                            entry[1].set_result(outcome_from_wire(response.result))
                        except ProtocolError as error:
                            entry[1].set_exception(error)
                stop.set()
            except grpc.RpcError as error:
                stop.set()
                failures += 1
                retryable = is_retryable(error)
                if not retryable or failures >= self._client.retry.attempts_max:
                    failure = (RetriesExhausted(failures, error.code(), error.details())
                               if retryable else Refused(error.code(), error.details()))
                    with self._lock:
                        failed, self._pending = self._pending, {}
                    for _, future in failed.values():
                        future.set_exception(failure)
                    failures = 0
                    continue
                time.sleep(self._client.retry.backoff(failures))


class EntrySubscription:
    """Iterates committed entries in sequence order; after a failure that may pass it
    subscribes again after the last sequence it returned, so nothing is lost or repeated.
    `last_sequence` is what to keep to resume after your own restart."""

    def __init__(self, client: Client, after_sequence: int):
        self._client = client
        self.last_sequence = after_sequence
        self._stream = None
        self._received: list = []  # entries of the last message not returned yet

    def __iter__(self) -> "EntrySubscription":
        return self

    def close(self) -> None:
        if self._stream is not None:
            self._stream.cancel()
            self._stream = None

    def __next__(self) -> ReceivedEntry:
        failures = 0
        while True:
            if self._received:
                subscribed = self._received.pop(0)
                entry = subscribed.entry
                if entry.sequence <= self.last_sequence:
                    raise ProtocolError(f"entry {entry.sequence} came after {self.last_sequence}")
                self.last_sequence = entry.sequence
                return ReceivedEntry(entry, subscribed.postings_withheld)
            try:
                if self._stream is None:
                    self._stream = self._open()
                response = next(self._stream)
            except StopIteration:
                self._stream = None
                error_code, details = grpc.StatusCode.UNAVAILABLE, "the server ended the subscription"
            except grpc.RpcError as error:
                self._stream = None
                if not is_retryable(error):
                    raise Refused(error.code(), error.details()) from None
                error_code, details = error.code(), error.details()
            else:
                self._received.extend(response.entries)
                continue
            failures += 1
            if failures >= self._client.retry.attempts_max:
                raise RetriesExhausted(failures, error_code, details)
            time.sleep(self._client.retry.backoff(failures))

    def _open(self):
        client = self._client
        subscription = query_pb2.EntriesSubscription(
            merchant_id=client._reader(),
            issued_at_unix_ms=now_ms(),
            after_sequence=self.last_sequence,
        )
        data = subscription.SerializeToString(deterministic=True)
        return client._queries.SubscribeEntries(
            query_pb2.SubscribeEntriesRequest(query=data, signature=client._signature(data)),
            metadata=client._admin_metadata,
        )
