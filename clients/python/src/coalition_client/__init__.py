"""A partner's client for Coalition, the clearing engine of a coalition loyalty programme.

    from coalition_client import Client, Signer, Transaction, Accepted, Rejected

    signer = Signer.from_seed("tenant-001", "key-1", bytes.fromhex(open("tenant.key").read()))
    with Client("127.0.0.1:50051", signer, store_id="store-12", terminal_id="pos-7") as client:
        outcome = client.submit(Transaction.earn("pos-7-000123", "member-000042", 180))
        if isinstance(outcome, Accepted):        # Duplicate is an Accepted too
            print(outcome.entry_sequence, outcome.member_points_balance)
        elif isinstance(outcome, Rejected):
            print(outcome.reason.name, outcome.message)

What is retried, and why it is safe: the server books a transaction once per merchant and
transaction id and answers the same body sent again with its original result (Duplicate).
So the client signs a transaction once and sends those very bytes on every attempt, and
retries only failures that may pass (UNAVAILABLE, which includes a refused or dropped
connection, and DEADLINE_EXCEEDED) with a doubling backoff (RetryPolicy: eight attempts over
about five seconds). Resend the same Signed (client.sign, then client.submit_signed), never a
transaction built again: a new build has a new time, a different body, and is refused as
TRANSACTION_ID_CONFLICT. After RetriesExhausted the transaction may or may not be booked;
send the same Signed later and the answer tells which.
"""

from coalition_client._client import (
    BATCH_LEN_MAX_DEFAULT,
    Balance,
    Client,
    EntrySubscription,
    HistoryPage,
    StreamSubmitter,
)
from coalition_client._entries import ReceivedEntry, entry_hash
from coalition_client._outcome import (
    Accepted,
    CoalitionError,
    Duplicate,
    Outcome,
    ProtocolError,
    Refused,
    Rejected,
    RejectionReason,
    RetriesExhausted,
)
from coalition_client._retry import RETRYABLE, RetryPolicy, is_retryable
from coalition_client._signing import QUERY_DOMAIN, SUBMISSION_DOMAIN, Signed, Signer, Transaction

__all__ = [
    "BATCH_LEN_MAX_DEFAULT", "Balance", "Client", "EntrySubscription", "HistoryPage",
    "StreamSubmitter", "ReceivedEntry", "entry_hash", "Accepted", "CoalitionError", "Duplicate",
    "Outcome", "ProtocolError", "Refused", "Rejected", "RejectionReason", "RetriesExhausted",
    "RETRYABLE", "RetryPolicy", "is_retryable", "QUERY_DOMAIN", "SUBMISSION_DOMAIN", "Signed",
    "Signer", "Transaction",
]
