"""Error tracking with Sentry, when SENTRY_DSN is set (nothing is sent otherwise).

Events carry the release (voteledger@<version>), the environment (SENTRY_ENVIRONMENT, else
VOTELEDGER_ENV) and the component (command-api, query-api, projector). Credentials never leave:
no user details or request bodies are collected, and `scrub` removes the headers and values that
carry API keys or the operator token before an event is sent. Performance tracing is off unless
SENTRY_TRACES_SAMPLE_RATE is set.
"""

from __future__ import annotations

import re
from importlib import metadata
from typing import Any

from infra.settings import Settings

_SECRET_HEADERS = {
    "authorization",
    "x-operator-token",
    "cookie",
    "set-cookie",
    "proxy-authorization",
}
# Agents' API keys (commands/agents.py: vlk_...), bearer credentials and connection-string
# passwords, wherever they end up: messages, headers, local variables of a stack frame.
_SECRET_TEXT = re.compile(r"vlk_[\w-]+|(?i:(bearer\s+))[^\s\"',]+|(://[^:/@\s]+:)[^@\s]+(@)")
FILTERED = "[Filtered]"
_literal_secrets: list[str] = []  # the operator token and the database password, when set


def init(settings: Settings, component: str) -> bool:
    """Start reporting errors to Sentry if a DSN is configured; True when it did."""
    if not settings.sentry_dsn:
        return False
    import sentry_sdk  # only a process that reports pays for the import

    _literal_secrets[:] = [s for s in (settings.operator_token, settings.db_password) if s]
    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        release=f"voteledger@{_version()}",
        environment=settings.sentry_environment,
        # No user details, request bodies or cookies; headers and the rest pass `scrub`.
        data_collection={"user_info": False, "http_bodies": []},
        traces_sample_rate=settings.sentry_traces_sample_rate,
        before_send=scrub,  # type: ignore[arg-type]
        before_send_transaction=scrub,  # type: ignore[arg-type]
    )
    sentry_sdk.set_tag("component", component)
    return True


def scrub(event: dict[str, Any], hint: object = None) -> dict[str, Any]:
    """The event without credentials: secret headers filtered, bearer keys and URL passwords
    masked in every string it carries."""
    request = event.get("request")
    if isinstance(request, dict):
        headers = request.get("headers")
        if isinstance(headers, dict):
            for name in headers:
                if name.lower() in _SECRET_HEADERS:
                    headers[name] = FILTERED
        request.pop("cookies", None)
    return _mask(event)  # type: ignore[no-any-return]


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        for secret in _literal_secrets:
            value = value.replace(secret, FILTERED)
        return _SECRET_TEXT.sub(_masked, value)
    if isinstance(value, dict):
        return {key: _mask(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_mask(item) for item in value]
    return value


def _masked(match: re.Match[str]) -> str:
    if match[1]:
        return match[1] + FILTERED
    if match[2]:
        return f"{match[2]}{FILTERED}{match[3]}"
    return FILTERED


def _version() -> str:
    try:
        return metadata.version("voteledger")
    except metadata.PackageNotFoundError:
        return "unknown"
