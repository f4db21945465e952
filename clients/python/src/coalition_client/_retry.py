"""When a call is sent again, and how long the client waits before it does."""

from __future__ import annotations

import dataclasses
import random

import grpc

#: Failures that may pass: the server starting, stopping or its database not answering
#: (UNAVAILABLE, also what gRPC reports for a refused, reset or dropped connection) and a
#: deadline that ran out. Nothing else is retried.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failed call is sent again (the same bytes)."""

    attempts_max: int = 8
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 2.0

    @classmethod
    def never(cls) -> "RetryPolicy":
        return cls(attempts_max=1)

    def backoff(self, failures: int) -> float:
        """The wait after the `failures`-th failure: doubling from `backoff_initial_s`, capped
        at `backoff_max_s`, less up to a quarter at random."""
        wait = min(self.backoff_initial_s * 2 ** min(max(failures - 1, 0), 20), self.backoff_max_s)
        return wait - random.uniform(0, wait / 4)


def is_retryable(error: grpc.RpcError) -> bool:
    return error.code() in RETRYABLE
