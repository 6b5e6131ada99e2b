"""RFC 9457 problem details, shared by both APIs.

Every error a client can cause leaves as `application/problem+json` with the right status; the
handlers here are the only place that shapes them.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import msgspec
import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("voteledger")


class Problem(Exception):
    """An error to report to the client as problem details."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.slug = slug
        self.headers = headers or {}
        self.extensions = extensions


def problem_response(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    headers: dict[str, str] | None = None,
    instance: str | None = None,
    **extensions: Any,
) -> Response:
    body: dict[str, Any] = {
        "type": f"/problems/{slug}" if slug else "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extensions)
    return Response(
        msgspec.json.encode(body), status_code=status, media_type=PROBLEM_JSON, headers=headers
    )


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [
        {"location": [str(p) for p in error.get("loc", ())], "message": error.get("msg", "")}
        for error in exc.errors()
    ]


def response_for(exc: Exception, instance: str) -> Response:
    """The problem details for an exception raised while answering a request at `instance`."""
    match exc:
        case Problem():
            return problem_response(
                exc.status,
                exc.detail,
                slug=exc.slug,
                headers=exc.headers,
                instance=instance,
                **exc.extensions,
            )
        case RequestValidationError():
            return problem_response(
                422,
                "the request is not valid",
                slug="validation",
                instance=instance,
                errors=_validation_errors(exc),
            )
        case StarletteHTTPException():
            return problem_response(
                exc.status_code,
                str(exc.detail),
                headers=dict(exc.headers or {}),
                instance=instance,
            )
        case psycopg.OperationalError():
            log.warning("database unavailable: %s", exc)
            return problem_response(
                503,
                "the database is unavailable; retry later",
                slug="unavailable",
                headers={"Retry-After": "1"},
                instance=instance,
            )
    log.error("unhandled error on %s", instance, exc_info=exc)
    return problem_response(500, "internal error", instance=instance)


def install(app: FastAPI) -> None:
    """Route every error through problem details."""

    async def handler(request: Request, exc: Exception) -> Response:
        return response_for(exc, request.url.path)

    for kind in (
        Problem,
        RequestValidationError,
        StarletteHTTPException,
        psycopg.OperationalError,
        Exception,
    ):
        app.add_exception_handler(kind, handler)
