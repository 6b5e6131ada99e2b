"""Logging for every process: JSON lines for log collectors, plain text in a terminal.

VOTELEDGER_LOG_FORMAT=json|text|auto (auto: text when stderr is a terminal, JSON otherwise, as
in a container). Each request gets an id (the client's X-Request-ID when it is a sane token, a
new one otherwise) that every line logged while serving it carries; handlers add what they know
(`note(agent_id=..., position=...)`), and the access line (VOTELEDGER_ACCESS_LOG) reports it with
the status and duration. Credentials are never logged: an agent is named by its id, not its key.
"""

from __future__ import annotations

import contextvars
import json
import logging
import logging.config
import sys
import time
from typing import Any

# The fields of the request being served by this task (None outside a request).
_REQUEST: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "voteledger_request", default=None
)
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def begin_request(request_id: str) -> dict[str, Any]:
    """Start the fields of a request served by the current task; returns them."""
    fields: dict[str, Any] = {"request_id": request_id}
    _REQUEST.set(fields)
    return fields


def note(**fields: Any) -> None:
    """Add fields (agent_id, position, ...) to the request being served, for its log lines."""
    current = _REQUEST.get()
    if current is not None:
        current.update(fields)


class _RequestFields(logging.Filter):
    """Copies the current request's fields onto every record logged while serving it."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = _REQUEST.get()
        if current:
            for name, value in current.items():
                if not hasattr(record, name):
                    setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and every extra field."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD and not name.startswith("_") and name != "color_message":
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """A terminal line, with the request id when there is one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id = getattr(record, "request_id", None)
        return f"{text} [{request_id}]" if request_id else text


def resolve(fmt: str) -> str:
    """json or text: `auto` looks at whether stderr is a terminal."""
    if fmt == "auto":
        return "text" if sys.stderr.isatty() else "json"
    return fmt


def config(fmt: str, level: str = "INFO") -> dict[str, Any]:
    """A logging.config dictionary for this format: root and uvicorn's loggers alike."""
    formatter = "infra.logs.JsonFormatter" if resolve(fmt) == "json" else "infra.logs.TextFormatter"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request": {"()": "infra.logs._RequestFields"}},
        "formatters": {"line": {"()": formatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "line",
                "filters": ["request"],
            }
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            name: {"handlers": [], "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def configure(fmt: str, level: str = "INFO") -> None:
    logging.config.dictConfig(config(fmt, level))
