"""Settings, read once from the environment and validated.

Every process (command API, query API, projector, CLI) reads the same variables; compose.yaml and
the Makefile set the same names.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from psycopg.conninfo import conninfo_to_dict, make_conninfo

Role = Literal["command", "projector", "query"]


class SettingsError(RuntimeError):
    """The environment does not describe a runnable configuration."""


N = TypeVar("N", int, float)


def _number(env: dict[str, str], name: str, default: N, minimum: N) -> N:
    """The variable `name` as a number of the default's type, at least `minimum`."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    kind = type(default)
    try:
        value = kind(raw)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise SettingsError(f"{name} must be {what}, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def _int(env: dict[str, str], name: str, default: int, minimum: int = 0) -> int:
    return _number(env, name, default, minimum)


def _float(env: dict[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    return _number(env, name, float(default), float(minimum))


@dataclass(frozen=True, slots=True)
class Settings:
    env: str
    database_url: str
    redis_url: str
    operator_token: str
    redis_prefix: str
    db_password: str | None
    role_urls: dict[str, str]
    command_port: int
    query_port: int
    metrics_port: int
    rate_limit_per_second: float
    rate_limit_burst: int
    idempotency_ttl_seconds: int
    max_body_bytes: int
    pool_min_size: int
    pool_max_size: int
    pool_timeout: float
    metrics_addr: str
    trending_half_life_seconds: float
    daily_retention_days: int
    batch_min: int
    batch_max: int
    poll_interval: float
    changes_stream_max: int
    query_cache_bytes: int = 64 * 2**20
    stream_clients_max: int = 1000
    # The least time between two live batches of a projection: events that arrive meanwhile
    # are applied together, so the fixed costs of a batch are shared (lag: at most this more).
    batch_interval: float = 0.025
    cors_origins: tuple[str, ...] = ("*",)
    command_cors_origins: tuple[str, ...] = ()
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    max_connections: int = 2000
    # Worker processes per API server (uvicorn's workers; metrics are merged across them).
    workers: int = 1
    log_format: Literal["auto", "json", "text"] = "auto"
    access_log: bool = False
    sentry_dsn: str = ""
    sentry_environment: str = ""
    sentry_traces_sample_rate: float = 0.0
    # Redis through Sentinel: host:port of each sentinel and the monitored primary's name.
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_sentinel_master: str = "voteledger"
    redis_sentinel_password: str = ""
    # The query API as the command API's MCP tools reach it for reads (mcp_tools/).
    query_url: str = "http://127.0.0.1:8001"
    # The most agents (not revoked) one owner may register; None: no cap.
    max_agents_per_owner: int | None = None

    @property
    def development(self) -> bool:
        return self.env in ("development", "test")

    def url_for(self, role: Role) -> str:
        """The connection string of one application role (never the owner's)."""
        return self.role_urls[role]

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        mode = env.get("VOTELEDGER_ENV", "production")
        database_url = env.get("DATABASE_URL", "")
        if not database_url:
            raise SettingsError("DATABASE_URL is not set (make run sets one up for development)")
        token = env.get("VOTELEDGER_OPERATOR_TOKEN", "")
        if not token and mode not in ("development", "test"):
            raise SettingsError("VOTELEDGER_OPERATOR_TOKEN is required outside development")
        if token and len(token) < 16:
            raise SettingsError("VOTELEDGER_OPERATOR_TOKEN must be at least 16 characters")
        password = env.get("VOTELEDGER_DB_PASSWORD") or None
        role_urls = {
            role: env.get(f"VOTELEDGER_{role.upper()}_DATABASE_URL")
            or _role_url(database_url, f"voteledger_{role}", password)
            for role in ("command", "projector", "query")
        }
        return cls(
            env=mode,
            database_url=database_url,
            redis_url=env.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
            operator_token=token,
            redis_prefix=env.get("VOTELEDGER_REDIS_PREFIX", "vl"),
            db_password=password,
            role_urls=role_urls,
            command_port=_int(env, "VOTELEDGER_COMMAND_PORT", 8000, 1),
            query_port=_int(env, "VOTELEDGER_QUERY_PORT", 8001, 1),
            metrics_port=_int(env, "VOTELEDGER_METRICS_PORT", 9100, 0),
            rate_limit_per_second=_float(env, "VOTELEDGER_RATE_LIMIT_PER_SECOND", 20.0, 0.001),
            rate_limit_burst=_int(env, "VOTELEDGER_RATE_LIMIT_BURST", 40, 1),
            idempotency_ttl_seconds=_int(env, "VOTELEDGER_IDEMPOTENCY_TTL_SECONDS", 86400, 60),
            max_body_bytes=_int(env, "VOTELEDGER_MAX_BODY_BYTES", 16384, 256),
            pool_min_size=_int(env, "VOTELEDGER_POOL_MIN_SIZE", 2, 0),
            pool_max_size=_int(env, "VOTELEDGER_POOL_MAX_SIZE", 20, 1),
            pool_timeout=_float(env, "VOTELEDGER_POOL_TIMEOUT", 5.0, 0.1),
            metrics_addr=env.get("VOTELEDGER_METRICS_ADDR", "127.0.0.1"),
            trending_half_life_seconds=3600
            * _float(env, "VOTELEDGER_TRENDING_HALF_LIFE_HOURS", 6.0, 0.01),
            daily_retention_days=_int(env, "VOTELEDGER_DAILY_RETENTION_DAYS", 30, 1),
            batch_min=_int(env, "VOTELEDGER_BATCH_MIN", 200, 1),
            batch_max=_int(env, "VOTELEDGER_BATCH_MAX", 20000, 1),
            poll_interval=_float(env, "VOTELEDGER_POLL_INTERVAL", 1.0, 0.01),
            changes_stream_max=_int(env, "VOTELEDGER_CHANGES_STREAM_MAX", 10000, 10),
            query_cache_bytes=_int(env, "VOTELEDGER_QUERY_CACHE_BYTES", 64 * 2**20, 2**16),
            stream_clients_max=_int(env, "VOTELEDGER_STREAM_CLIENTS_MAX", 1000, 1),
            batch_interval=_float(env, "VOTELEDGER_BATCH_INTERVAL", 0.025, 0.0),
            cors_origins=_origins(env, "VOTELEDGER_CORS_ORIGINS", "*"),
            command_cors_origins=_origins(env, "VOTELEDGER_COMMAND_CORS_ORIGINS", ""),
            header_timeout_seconds=_float(env, "VOTELEDGER_HEADER_TIMEOUT_SECONDS", 10.0, 0.1),
            body_timeout_seconds=_float(env, "VOTELEDGER_BODY_TIMEOUT_SECONDS", 30.0, 0.1),
            max_connections=_int(env, "VOTELEDGER_MAX_CONNECTIONS", 2000, 1),
            query_url=api_url(env, "VOTELEDGER_QUERY_URL", "VOTELEDGER_QUERY_PORT", 8001),
            max_agents_per_owner=_int(env, "VOTELEDGER_MAX_AGENTS_PER_OWNER", 0, 1) or None,
            **_operations(env, mode),
        )


def _operations(env: dict[str, str], mode: str) -> dict[str, Any]:
    """How the processes run and report: workers, logs, error tracking, Redis Sentinel."""
    return {
        "workers": _int(env, "VOTELEDGER_WORKERS", 1, 1),
        "log_format": _choice(env, "VOTELEDGER_LOG_FORMAT", ("auto", "json", "text")),
        "access_log": _flag(env, "VOTELEDGER_ACCESS_LOG"),
        "sentry_dsn": env.get("SENTRY_DSN", ""),
        "sentry_environment": env.get("SENTRY_ENVIRONMENT", "") or mode,
        "sentry_traces_sample_rate": _float(env, "SENTRY_TRACES_SAMPLE_RATE", 0.0, 0.0),
        "redis_sentinels": _sentinels(env, "VOTELEDGER_REDIS_SENTINELS"),
        "redis_sentinel_master": env.get("VOTELEDGER_REDIS_SENTINEL_MASTER", "") or "voteledger",
        "redis_sentinel_password": env.get("VOTELEDGER_REDIS_SENTINEL_PASSWORD", ""),
    }


def _choice(env: dict[str, str], name: str, allowed: tuple[Any, ...]) -> Any:
    """One of `allowed` (the first is the default)."""
    raw = env.get(name, "").strip().lower() or allowed[0]
    if raw not in allowed:
        raise SettingsError(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
    return raw


def _flag(env: dict[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _sentinels(env: dict[str, str], name: str) -> tuple[tuple[str, int], ...]:
    """host:port,host:port (IPv6 hosts in brackets)."""
    found = []
    for entry in (e.strip() for e in env.get(name, "").split(",")):
        if not entry:
            continue
        host, _, port = entry.rpartition(":")
        if not host or not port.isdigit():
            raise SettingsError(f"{name}: {entry!r} is not host:port")
        found.append((host.strip("[]"), int(port)))
    return tuple(found)


def api_url(env: Mapping[str, str], name: str, port_name: str, port: int) -> str:
    """The base URL of one of the APIs (no trailing slash); by default on this host, at the port
    the variable `port_name` gives. Also read by `voteledger mcp`, which has no other settings."""
    default = f"http://127.0.0.1:{_int(dict(env), port_name, port, 1)}"
    url = (env.get(name) or default).strip().rstrip("/")
    split = urlsplit(url)
    if split.scheme not in ("http", "https") or not split.hostname or split.query:
        raise SettingsError(f"{name}: {url!r} is not an http(s) URL such as http://host:8001")
    return url


def _origins(env: dict[str, str], name: str, default: str) -> tuple[str, ...]:
    """A comma-separated list of browser origins (`*` for any); empty allows none."""
    raw = env.get(name)
    origins = tuple(o.strip() for o in (default if raw is None else raw).split(",") if o.strip())
    for origin in origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise SettingsError(f"{name}: {origin!r} is not an origin such as https://example.com")
    return origins


def _role_url(database_url: str, role: str, password: str | None) -> str:
    """DATABASE_URL with the user (and password) of an application role."""
    params = conninfo_to_dict(database_url)
    params["user"] = role
    params.pop("password", None)
    if password:
        params["password"] = password
    return make_conninfo(**params)  # type: ignore[arg-type]


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read on first use (never at import)."""
    return Settings.from_env()
