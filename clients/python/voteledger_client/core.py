"""The client's core, shared by `Client` and `AsyncClient`: what each call sends (`Call`) and how
its answer is read, with no I/O. The two shells only send a `Call` with retries and hand the
response to `Call.parse`."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Generic, TypeVar

import httpx
import msgspec

from voteledger_client.errors import ProblemError, UnexpectedResponse
from voteledger_client.models import Problem, RateLimit
from voteledger_client.retry import RetryOn, RetryPolicy, parse_retry_after, retry_wait

T = TypeVar("T")
S = TypeVar("S", bound=msgspec.Struct)

USER_AGENT = "voteledger-client/0.1"
# Reads may also be told 425 Too Early: the read models do not reflect min_position yet.
READ = RetryOn(statuses=frozenset({425, 429, 503}))
# Reading one's own vote: its position was issued, so "not issued" only means the projector has
# not read it yet (it lags more than the query API's grace), and is worth retrying.
OWN_READ = dataclasses.replace(READ, problem_types=frozenset({"/problems/not-issued"}))
# Idempotent by its Idempotency-Key: a vote that may have been recorded can be sent again.
VOTE = RetryOn()
# Listings and registrations are not idempotent: sent again only when they surely never left.
OPERATOR = RetryOn(resend=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request and how to read its answer: `parse` returns the result or raises
    ProblemError; `retry_on` says which failures may be retried."""

    method: str
    url: str
    parse: Callable[[httpx.Response], T]
    retry_on: RetryOn
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    params: Mapping[str, str | int] = dataclasses.field(default_factory=dict)
    body: bytes | None = None

    def with_cursor(self, cursor: str) -> Call[T]:
        """The same read for the page after `cursor`."""
        return dataclasses.replace(self, params={**self.params, "cursor": cursor})


def stamina_arguments(policy: RetryPolicy) -> dict[str, Any]:
    """`stamina.retry_context`'s bounds from a policy."""
    return {
        "attempts": policy.attempts,
        "timeout": policy.timeout,
        "wait_initial": policy.wait_initial,
        "wait_max": policy.wait_max,
        "wait_jitter": policy.wait_jitter,
    }


def retry_hook(
    call: Call[Any], policy: RetryPolicy, clock: Callable[[], float] = time.monotonic
) -> Callable[[Exception], bool | float]:
    """stamina's backoff hook for one call; the time budget runs from this moment."""
    started = clock()
    return lambda exc: retry_wait(exc, call.retry_on, policy, clock() - started)


# --- reading answers ---------------------------------------------------------------------------

# The fields of models that come from headers (each model lists its own in FROM_HEADERS).
_FROM_HEADERS: dict[str, Callable[[Mapping[str, str]], Any]] = {
    "replayed": lambda headers: headers.get("idempotent-replayed", "").lower() == "true",
    "rate_limit": lambda headers: parse_rate_limit(headers),
    "read_model": lambda headers: headers.get("x-read-model"),
}


def parse_as(model: type[S]) -> Callable[[httpx.Response], S]:
    """A parser for answers whose body is `model`: errors raise ProblemError."""
    decoder = msgspec.json.Decoder(model)

    def parse(response: httpx.Response) -> S:
        if not response.is_success:
            raise problem_error(response)
        try:
            found: S = decoder.decode(response.content)
        except msgspec.DecodeError as exc:  # ValidationError included
            raise UnexpectedResponse(response.status_code, str(exc), response.content) from None
        named: frozenset[str] = getattr(model, "FROM_HEADERS", frozenset())
        if not named:
            return found
        headers = response.headers
        return msgspec.structs.replace(
            found, **{name: _FROM_HEADERS[name](headers) for name in named}
        )

    return parse


_PROBLEM_MEMBERS = frozenset(Problem.__struct_fields__)


def problem_error(response: httpx.Response) -> ProblemError:
    """The error an answer carries: its problem document, else its status and a bit of text."""
    problem, extra = _problem_document(response)
    headers = dict(response.headers)
    return ProblemError(
        status=response.status_code,
        type=problem.type,
        title=problem.title or response.reason_phrase,
        detail=problem.detail,
        instance=problem.instance,
        extra=extra,
        headers=headers,
        rate_limit=parse_rate_limit(headers),
        retry_after=parse_retry_after_header(headers.get("retry-after"), headers.get("date")),
    )


def _problem_document(response: httpx.Response) -> tuple[Problem, dict[str, Any]]:
    """The problem's members and its extension members. An answer that is not a problem
    document (a proxy's error page) becomes one of type about:blank with the start of its text."""
    try:
        members = msgspec.json.decode(response.content)
        problem = msgspec.convert(members, Problem)
    except (msgspec.DecodeError, msgspec.ValidationError):
        detail = response.content[:500].decode("utf-8", "replace")
        return Problem(status=response.status_code, detail=detail), {}
    return problem, {key: value for key, value in members.items() if key not in _PROBLEM_MEMBERS}


def parse_retry_after_header(value: str | None, server_date: str | None) -> float | None:
    """Retry-After in seconds; an HTTP date is measured from the answer's own Date header when it
    has one, so a skewed local clock does not stretch or cut the wait."""
    now = datetime.now(UTC)
    if server_date:
        with contextlib.suppress(TypeError, ValueError, IndexError):
            now = parsedate_to_datetime(server_date).astimezone(UTC)
    return parse_retry_after(value, now)


def parse_rate_limit(headers: Mapping[str, str]) -> RateLimit | None:
    """`RateLimit: "votes";r=5;t=1` and `RateLimit-Policy: "votes";q=40;w=2`, or None when the
    answer has neither. Parameters that are not whole numbers are left out."""
    limit, policy = headers.get("ratelimit"), headers.get("ratelimit-policy")
    if limit is None and policy is None:
        return None
    name, current = _structured_item(limit or "")
    policy_name, quota = _structured_item(policy or "")
    return RateLimit(
        policy=name or policy_name,
        remaining=current.get("r"),
        reset=current.get("t"),
        quota=quota.get("q"),
        window=quota.get("w"),
    )


def _structured_item(value: str) -> tuple[str | None, dict[str, int]]:
    """The first member of a structured-field list: its (unquoted) name and integer params."""
    name, *parameters = value.split(",", 1)[0].split(";")
    numbers = {}
    for parameter in parameters:
        key, _, number = parameter.strip().partition("=")
        if number.isascii() and number.isdigit():
            numbers[key] = int(number)
    return name.strip().strip('"') or None, numbers
