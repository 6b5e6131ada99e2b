"""The errors the client raises: a refusal the server explained (`ProblemError`, RFC 9457), or
an answer it cannot read (`UnexpectedResponse`). Transport failures that outlast the retries
leave as httpx's own exceptions (`httpx.TransportError`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from voteledger_client.models import RateLimit


class VoteledgerError(Exception):
    """Base of the client's own errors."""


class ProblemError(VoteledgerError):
    """An error answer: the problem document's members and the response's headers.

    `type` is a problem type such as `/problems/unknown-item` ("about:blank" when the answer was
    not a problem document), `extra` holds the extension members (e.g. `errors` of a 422),
    `headers` the response's headers (names in lower case)."""

    def __init__(
        self,
        *,
        status: int,
        type: str = "about:blank",
        title: str = "",
        detail: str = "",
        instance: str | None = None,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        rate_limit: RateLimit | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {title}: {detail}" if detail else f"{status} {title}")
        self.status = status
        self.type = type
        self.title = title
        self.detail = detail
        self.instance = instance
        self.extra: dict[str, Any] = dict(extra or {})
        self.headers: dict[str, str] = dict(headers or {})
        self.rate_limit = rate_limit
        # Seconds the server asked to wait before retrying (`Retry-After`, as of the answer).
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"ProblemError(status={self.status}, type={self.type!r}, detail={self.detail!r})"


class UnexpectedResponse(VoteledgerError):
    """A success status whose body is not the shape the API documents."""

    def __init__(self, status: int, reason: str, body: bytes) -> None:
        super().__init__(f"unexpected {status} answer: {reason}")
        self.status = status
        self.body = body
