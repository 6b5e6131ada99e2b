"""When to retry, and how long to wait first: pure functions over the failure, no I/O.

The client's shells run stamina's retry loop with `retry_wait` as its backoff hook: False gives
up (the failure is raised), True waits stamina's exponential backoff with jitter, a number waits
that many seconds (the server's `Retry-After`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from voteledger_client.errors import ProblemError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounds of the retries of one call.

    `attempts` counts the first; no retry starts once `timeout` seconds have passed since the
    first attempt, nor waits past it. Backoff starts at `wait_initial` and doubles up to
    `wait_max` (plus up to `wait_jitter` at random); a `Retry-After` longer than
    `retry_after_max` is not waited for: the error is raised instead."""

    attempts: int = 10
    timeout: float = 30.0
    wait_initial: float = 0.1
    wait_max: float = 5.0
    wait_jitter: float = 0.5
    retry_after_max: float = 30.0


@dataclass(frozen=True, slots=True)
class RetryOn:
    """What one call may retry: answers with these statuses (or problem types), and transport
    failures. `resend` is whether a failure after the request may have reached the server is
    retried too: only for calls that are safe to repeat (reads, votes with an Idempotency-Key);
    a failure to connect is always retried, as nothing was sent."""

    statuses: frozenset[int] = frozenset({429, 503})
    problem_types: frozenset[str] = field(default_factory=frozenset)
    resend: bool = True


# Nothing reached the server: any request may be sent again.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# The request may have reached the server, and the answer was lost.
MAYBE_SENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from `now` by a `Retry-After` value: delay-seconds or an HTTP date
    (RFC 9110 10.2.3); a date in the past is 0. None when absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(min(int(text), 2**53))  # beyond any wait; a float all the same
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": UTC by RFC 5322, the only zone HTTP dates use
        when = when.replace(tzinfo=UTC)
    seconds = (when - now).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def retry_wait(
    exc: BaseException, on: RetryOn, policy: RetryPolicy, elapsed: float
) -> bool | float:
    """The retry decision for a failed attempt, `elapsed` seconds after the first began."""
    if isinstance(exc, ProblemError):
        if exc.status not in on.statuses and exc.type not in on.problem_types:
            return False
        if exc.retry_after is None:
            return True
        if exc.retry_after > policy.retry_after_max or elapsed + exc.retry_after > policy.timeout:
            return False  # retrying sooner than asked would only be refused again
        return exc.retry_after
    if isinstance(exc, NOT_SENT):
        return True
    return on.resend and isinstance(exc, MAYBE_SENT)
