"""The settings that say how processes run and report: workers, logs, Sentry, Redis Sentinel."""

from __future__ import annotations

import contextvars
import json
import logging

import pytest

from infra import logs
from infra.settings import Settings, SettingsError

BASE = {"DATABASE_URL": "postgresql://u@h/db", "VOTELEDGER_ENV": "test"}


def test_defaults_run_one_worker_with_terminal_logs_and_no_reporting() -> None:
    settings = Settings.from_env(BASE)
    assert settings.workers == 1
    assert settings.log_format == "auto" and settings.access_log is False
    assert settings.sentry_dsn == "" and settings.sentry_environment == "test"
    assert settings.redis_sentinels == ()


def test_sentinels_are_host_port_pairs() -> None:
    settings = Settings.from_env(
        BASE
        | {
            "VOTELEDGER_REDIS_SENTINELS": "s1:26379, [::1]:26380,",
            "VOTELEDGER_REDIS_SENTINEL_MASTER": "primary",
            "VOTELEDGER_WORKERS": "4",
            "VOTELEDGER_LOG_FORMAT": "JSON",
            "VOTELEDGER_ACCESS_LOG": "yes",
        }
    )
    assert settings.redis_sentinels == (("s1", 26379), ("::1", 26380))
    assert settings.redis_sentinel_master == "primary"
    assert (settings.workers, settings.log_format, settings.access_log) == (4, "json", True)


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("VOTELEDGER_REDIS_SENTINELS", "s1", "not host:port"),
        ("VOTELEDGER_REDIS_SENTINELS", "s1:port", "not host:port"),
        ("VOTELEDGER_WORKERS", "0", "at least 1"),
        ("VOTELEDGER_LOG_FORMAT", "xml", "one of auto, json, text"),
        ("VOTELEDGER_ACCESS_LOG", "maybe", "true or false"),
    ],
)
def test_bad_values_are_refused_with_the_variable_named(name: str, value: str, says: str) -> None:
    with pytest.raises(SettingsError, match=says) as refused:
        Settings.from_env(BASE | {name: value})
    assert name in str(refused.value)


def test_a_json_line_carries_the_request_fields_and_extras() -> None:
    record = logging.LogRecord("voteledger.x", logging.INFO, "f", 1, "cast %s", ("up",), None)

    def serve() -> bool:
        logs.begin_request("r1")
        logs.note(agent_id="a1")
        return logs._RequestFields().filter(record)

    assert contextvars.copy_context().run(serve)  # as a request's task would
    record.position = 7
    line = json.loads(logs.JsonFormatter().format(record))
    assert line["message"] == "cast up" and line["level"] == "info"
    assert (line["request_id"], line["agent_id"], line["position"]) == ("r1", "a1", 7)


def test_auto_is_text_on_a_terminal_and_json_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    assert logs.resolve("auto") == "text"
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    assert logs.resolve("auto") == "json"
    assert logs.resolve("text") == "text"
