"""The query API (port 8001): rankings, item detail and a live stream, from projections only.

Run with `uvicorn --factory queries.app:create_app`. It connects to PostgreSQL as the role that
can read only the read models, never the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
import redis.asyncio as aioredis
from fastapi import FastAPI, Header, Path, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from events.types import ITEM_ID_MAX_LENGTH, ITEM_ID_PATTERN, ItemType
from infra import heap, problems
from infra.db import pool_for
from infra.http import NO_TELEMETRY, EdgeMiddleware
from infra.metrics import metrics_response
from infra.openapi import json_response
from infra.problems import Problem
from infra.redis_keys import generation_key, namespace
from infra.settings import Settings, get_settings
from projections.model import decayed
from projections.redis_store import decode_changes
from queries.read import (
    BadCursor,
    Detail,
    DetailAt,
    ListName,
    ListQuery,
    Page,
    PostgresReader,
    RedisReader,
    is_unavailable,
)

log = logging.getLogger("voteledger.queries")

_CACHE_MAX_AGE = 1.0  # trending scores decay with time even when nothing changes
_CACHE_ENTRIES = 10_000
_REDIS_RETRY_AFTER = 1.0
_REFRESH_EVERY = 1.0
_MAX_WAIT_MS = 5000
_FLOOR_WAIT = 1.0  # how long an answer may wait to not go back behind an earlier one


@dataclass(slots=True)
class Cached:
    body: bytes
    etag: str
    position: int
    generation: int
    at: float


class ReadSide:
    """Where reads go: Redis while it is reachable and caught up, PostgreSQL otherwise.

    A background task follows the projector's change notices (pub/sub) to know the position Redis
    reflects; rendered pages are cached until that position moves, so a popular page costs one
    dictionary lookup, not a Redis round trip.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pool = pool_for(settings, "query", name="query")
        # Short timeouts for reads on the request path (a slow Redis means: use PostgreSQL);
        # blocking reads (pub/sub, the change stream) get a client of their own.
        self.client = aioredis.Redis.from_url(
            settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5
        )
        self.blocking = aioredis.Redis.from_url(
            settings.redis_url, socket_timeout=30, socket_connect_timeout=0.5
        )
        half_life = settings.trending_half_life_seconds
        self.redis = RedisReader(self.client, settings.redis_prefix, half_life)
        self.postgres = PostgresReader(self.pool, half_life)
        self.redis_generation = 1
        self.redis_position = 0
        self.redis_live = False
        self.served = 0  # the highest position this server has answered with
        self._redis_down_until = 0.0
        self._changed = asyncio.Event()
        self._cache: OrderedDict[tuple[Any, ...], Cached] = OrderedDict()
        # (path, raw query string) -> cache key, for CachedPages to answer before any routing.
        self.raw_keys: OrderedDict[tuple[str, bytes], tuple[Any, ...]] = OrderedDict()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.pool.open()
        with contextlib.suppress(Exception):
            self.redis_generation = await self.postgres.generation()
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.client.aclose()
        await self.blocking.aclose()
        await self.pool.close()

    # --- following the projector ------------------------------------------------------------

    def _moved(self, position: int) -> None:
        if position > self.redis_position:
            self.redis_position = position
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    async def _refresh(self) -> None:
        raw = await self.client.get(generation_key(self.settings.redis_prefix))
        generation = int(raw) if raw else await self.postgres.generation()
        if generation != self.redis_generation:
            log.info("read-model generation %d -> %d", self.redis_generation, generation)
            self.redis_generation, self.redis_position = generation, 0
            self._cache.clear()
        position, self.redis_live = await self.redis.position(generation)
        self._moved(position)

    async def _follow(self) -> None:
        """Keep redis_position current: pub/sub for speed, a periodic refresh for safety."""
        while True:
            try:
                await self._refresh()
                async with self.blocking.pubsub() as pubsub:
                    channel = (
                        f"{namespace(self.settings.redis_prefix, self.redis_generation)}:changes"
                    )
                    await pubsub.subscribe(channel)
                    generation = self.redis_generation
                    next_refresh = time.monotonic() + _REFRESH_EVERY
                    while generation == self.redis_generation:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=_REFRESH_EVERY
                        )
                        if message is not None:
                            self._moved(int(message["data"]))
                        if time.monotonic() >= next_refresh:
                            await self._refresh()
                            next_refresh = time.monotonic() + _REFRESH_EVERY
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_unavailable(exc):
                    log.exception("following the projector failed")
                self._redis_down(exc)
                await asyncio.sleep(_REDIS_RETRY_AFTER)

    def _redis_down(self, exc: BaseException) -> None:
        self._redis_down_until = time.monotonic() + _REDIS_RETRY_AFTER
        self.redis_live = False
        self._cache.clear()
        log.warning("serving from PostgreSQL: %s", exc)

    def redis_usable(self) -> bool:
        return self.redis_live and time.monotonic() >= self._redis_down_until

    async def wait_for_position(self, position: int, seconds: float) -> None:
        """Until the projector's notices report `position` in Redis, or `seconds` have passed.

        Waiters read Redis again only then, not at every notice: with many requests waiting, a
        read each per notice saturated the process (1,000 reads/s waiting at 1,000 votes/s)."""
        deadline = time.monotonic() + seconds
        while self.redis_position < position:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    # --- reads --------------------------------------------------------------------------------

    def cached(self, key: tuple[Any, ...]) -> Cached | None:
        entry = self._cache.get(key)
        if (
            entry is not None
            and entry.generation == self.redis_generation
            and entry.position >= self.redis_position
            and time.monotonic() - entry.at < _CACHE_MAX_AGE
            and self.redis_usable()
        ):
            return entry
        return None

    def remember_raw(self, raw: tuple[str, bytes], key: tuple[Any, ...]) -> None:
        self.raw_keys[raw] = key
        self.raw_keys.move_to_end(raw)
        while len(self.raw_keys) > _CACHE_ENTRIES:
            self.raw_keys.popitem(last=False)

    def remember(self, key: tuple[Any, ...], body: bytes, position: int) -> Cached:
        entry = Cached(body, _etag(body), position, self.redis_generation, time.monotonic())
        self._cache[key] = entry
        self._cache.move_to_end(key)
        while len(self._cache) > _CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return entry

    async def page(self, query: ListQuery) -> tuple[str, Page]:
        now = time.time()
        if self.redis_usable() and not self._too_old_for_redis(query.day):
            try:
                page = await self.redis.page(self.redis_generation, query, now)
                self._moved(page.position)  # older cached pages must not answer after this one
                return "redis", page
            except BadCursor:
                raise
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                self._redis_down(exc)
        return "postgres", await self.postgres.page(query, now)

    async def detail(self, item_id: str, today: date) -> tuple[str, Detail | None, int]:
        now = time.time()
        if self.redis_usable():
            try:
                found, position = await self.redis.detail(
                    self.redis_generation, item_id, today, now
                )
                self._moved(position)
                return "redis", found, position
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                self._redis_down(exc)
        found, position = await self.postgres.detail(item_id, today, now)
        return "postgres", found, position

    def _too_old_for_redis(self, day: date | None) -> bool:
        """Redis keeps only the recent days of the daily lists; PostgreSQL keeps them all."""
        if day is None:
            return False
        oldest = datetime.now(UTC).date() - timedelta(days=self.settings.daily_retention_days)
        return day < oldest


class _CachedRoute:
    path = "(cached page)"  # the metrics label of answers CachedPages gives


class CachedPages:
    """Answers a GET whose exact URL was answered from Redis before, while that answer is still
    current, without routing, validation or dependency injection: the hot path of popular pages.
    Anything else (a first request, min_position, If-None-Match, a stale entry) takes the normal
    route, which fills the cache."""

    def __init__(self, app: ASGIApp, side: ReadSide) -> None:
        self.app = app
        self.side = side

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            key = self.side.raw_keys.get((scope["path"], scope["query_string"]))
            entry = self.side.cached(key) if key is not None else None
            if (
                entry is not None
                and entry.position >= self.side.served
                and not any(name == b"if-none-match" for name, _ in scope["headers"])
            ):
                scope["route"] = _CachedRoute
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(entry.body)).encode()),
                            (b"etag", entry.etag.encode()),
                            (b"x-ledger-position", str(entry.position).encode()),
                            (b"x-read-model", b"redis"),
                            (b"cache-control", b"public, no-cache"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": entry.body})
                return
        await self.app(scope, receive, send)


def _etag(body: bytes) -> str:
    return f'W/"{hashlib.blake2b(body, digest_size=10).hexdigest()}"'


_LIST_HEADERS = {
    "X-Ledger-Position": {"description": "The ledger position the data reflects"},
    "X-Read-Model": {"description": "redis, or postgres when answering from the fallback"},
    "ETag": {"description": "Revalidate with If-None-Match"},
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"content": {"application/problem+json": {}}} for status in (404, 410, 422, 503)
}

ItemTypeParam = Annotated[ItemType, Query(description="song or tool")]
LimitParam = Annotated[int, Query(ge=1, le=200)]
CursorParam = Annotated[str | None, Query(max_length=512, description="next_cursor of a page")]
MinPosition = Annotated[
    int | None,
    Query(ge=0, le=2**62, description="Answer only once the data reflects this ledger position"),
]
WaitMs = Annotated[
    int, Query(ge=0, le=_MAX_WAIT_MS, description="How long to wait for min_position (ms)")
]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    side = ReadSide(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await side.start()
        heap.settle()
        try:
            yield
        finally:
            await side.stop()

    app = FastAPI(
        title="voteledger query API",
        version="1.0.0",
        description="Rankings of songs and tools, read from projections of the vote ledger.",
        lifespan=lifespan,
        responses=_ERRORS,
        telemetry=NO_TELEMETRY,
    )
    app.state.side = side
    # Added first, so it runs inside EdgeMiddleware and its answers are counted in the metrics.
    app.add_middleware(CachedPages, side=side)
    app.add_middleware(EdgeMiddleware, name="query", max_body_bytes=settings.max_body_bytes)
    problems.install(app)

    async def respond(
        request: Request,
        key: tuple[Any, ...],
        produce: Any,
        min_position: int | None,
        wait_ms: int,
    ) -> Response:
        """Serve from cache or produce the body; honour min_position; add validators.

        Never answers with a position below one this server has already answered with (which
        could happen when falling back to PostgreSQL, a little behind Redis): such an answer
        waits, briefly, for its source to catch up.
        """
        started = time.monotonic()
        deadline = started + wait_ms / 1000
        while True:
            entry = side.cached(key)
            source = "redis"
            if entry is None:
                source, body, position = await produce()
                entry = (
                    side.remember(key, body, position)
                    if source == "redis"
                    else Cached(
                        body, _etag(body), position, side.redis_generation, time.monotonic()
                    )
                )
            now = time.monotonic()
            if min_position is not None and entry.position < min_position:
                if now >= deadline:
                    raise Problem(
                        503,
                        f"the read models reflect position {entry.position}, "
                        f"not yet {min_position}",
                        slug="not-yet",
                        headers={"Retry-After": "1", "X-Ledger-Position": str(entry.position)},
                    )
                remaining, wanted = deadline - now, min_position
            elif entry.position < side.served and now - started < _FLOOR_WAIT:
                remaining, wanted = _FLOOR_WAIT - (now - started), side.served
            else:
                break
            if source == "redis":
                await side.wait_for_position(wanted, min(remaining, 0.5))
            else:
                await asyncio.sleep(min(remaining, 0.025))
        side.served = max(side.served, entry.position)
        if source == "redis" and min_position is None:
            side.remember_raw((request.url.path, request.scope["query_string"]), key)
        headers = {
            "ETag": entry.etag,
            "X-Ledger-Position": str(entry.position),
            "X-Read-Model": source,
            "Cache-Control": "public, no-cache",
        }
        if request.headers.get("if-none-match") == entry.etag:
            return Response(status_code=304, headers=headers)
        return Response(entry.body, headers=headers, media_type="application/json")

    async def list_response(
        request: Request, query: ListQuery, min_position: int | None, wait_ms: int
    ) -> Response:
        async def produce() -> tuple[str, bytes, int]:
            try:
                source, page = await side.page(query)
            except BadCursor as exc:
                gone = "rebuilt" in str(exc)
                raise Problem(410 if gone else 422, str(exc), slug="bad-cursor")
            body = _ENCODER.encode(page)
            return source, body, page.position

        key = (query.name, query.item_type, query.limit, query.cursor, query.min_votes, query.day)
        return await respond(request, key, produce, min_position, wait_ms)

    list_doc: dict[str, Any] = {
        "response_class": Response,
        "responses": {
            200: json_response(Page, "A page of the ranking", headers=_LIST_HEADERS),
            304: {"description": "Not modified (If-None-Match)"},
        },
    }

    @app.get("/api/v1/top", summary="All-time rankings", **list_doc)
    async def top(
        request: Request,
        item_type: ItemTypeParam,
        sort: Annotated[Literal["net", "confidence"], Query()] = "net",
        limit: LimitParam = 50,
        cursor: CursorParam = None,
        min_votes: Annotated[int, Query(ge=0, le=10**9)] = 0,
        min_position: MinPosition = None,
        wait_ms: WaitMs = 1000,
    ) -> Response:
        name: ListName = "top" if sort == "net" else "confidence"
        query = ListQuery(name, item_type, limit, cursor, min_votes)
        return await list_response(request, query, min_position, wait_ms)

    @app.get("/api/v1/top/daily", summary="Net votes gained on one UTC day", **list_doc)
    async def daily(
        request: Request,
        item_type: ItemTypeParam,
        day: Annotated[date | None, Query(alias="date", description="YYYY-MM-DD, UTC")] = None,
        limit: LimitParam = 50,
        cursor: CursorParam = None,
        min_position: MinPosition = None,
        wait_ms: WaitMs = 1000,
    ) -> Response:
        query = ListQuery("daily", item_type, limit, cursor, 0, day or datetime.now(UTC).date())
        return await list_response(request, query, min_position, wait_ms)

    @app.get("/api/v1/trending", summary="Time-decayed net votes", **list_doc)
    async def trending(
        request: Request,
        item_type: ItemTypeParam,
        limit: LimitParam = 50,
        cursor: CursorParam = None,
        min_position: MinPosition = None,
        wait_ms: WaitMs = 1000,
    ) -> Response:
        query = ListQuery("trending", item_type, limit, cursor)
        return await list_response(request, query, min_position, wait_ms)

    @app.get(
        "/api/v1/items/{item_id}",
        summary="One item: counts, scores and ranks",
        response_class=Response,
        responses={
            200: json_response(DetailAt, "The item", headers=_LIST_HEADERS),
            304: {"description": "Not modified (If-None-Match)"},
        },
    )
    async def item(
        request: Request,
        item_id: Annotated[
            str, Path(min_length=1, max_length=ITEM_ID_MAX_LENGTH, pattern=ITEM_ID_PATTERN)
        ],
        min_position: MinPosition = None,
        wait_ms: WaitMs = 1000,
    ) -> Response:
        today = datetime.now(UTC).date()

        async def produce() -> tuple[str, bytes, int]:
            source, found, position = await side.detail(item_id, today)
            if found is None:
                raise Problem(404, f"no item {item_id!r}", slug="unknown-item")
            body = _ENCODER.encode(DetailAt(**msgspec.structs.asdict(found), position=position))
            return source, body, position

        return await respond(request, ("item", item_id, today), produce, min_position, wait_ms)

    @app.get(
        "/api/v1/stream",
        response_class=EventSourceResponse,
        summary="Server-Sent Events of score changes; `id` is the ledger position",
    )
    async def stream(
        item_type: Annotated[ItemType | None, Query()] = None,
        last_event_id: Annotated[int | None, Header(alias="Last-Event-ID", ge=0, le=2**62)] = None,
    ) -> AsyncIterator[ServerSentEvent]:
        async for kind, position, data in change_events(side, item_type, last_event_id):
            yield ServerSentEvent(event=kind, id=str(position), data=data, retry=2000)

    @app.websocket("/api/v1/ws")
    async def ws(
        websocket: WebSocket,
        item_type: Annotated[ItemType | None, Query()] = None,
        last_event_id: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    ) -> None:
        await websocket.accept()
        try:
            async for kind, position, data in change_events(side, item_type, last_event_id):
                await websocket.send_text(
                    _ENCODER.encode({"event": kind, "id": position, "data": data}).decode()
                )
        except WebSocketDisconnect:
            pass

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> dict[str, Any]:
        async with side.pool.connection(timeout=2.0) as conn:
            await conn.execute("SELECT 1")
        return {
            "status": "ready",
            "read_model": "redis" if side.redis_usable() else "postgres",
            "redis_generation": side.redis_generation,
        }

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return metrics_response()

    return app


_ENCODER = msgspec.json.Encoder()


# --- live changes -------------------------------------------------------------------------------


async def change_events(
    side: ReadSide, item_type: str | None, last_event_id: int | None
) -> AsyncIterator[tuple[str, int, Any]]:
    """("scores" | "reset", position, data) from the projector's capped change stream.

    A client that resumes from a position the stream no longer covers (trimmed, another
    generation, Redis emptied) gets a "reset": reload, then carry on from its id. Each notice has
    its own position (the projector coalesces changes until the watermark moves) and carries
    absolute values; one missed never goes unannounced.
    """
    client = side.blocking
    generation = side.redis_generation
    key = f"{namespace(side.settings.redis_prefix, generation)}:changes"
    try:
        start = await _resume_from(client, key, last_event_id)
    except Exception as exc:
        if not is_unavailable(exc):
            raise
        yield "reset", side.redis_position, {"reason": "live changes are unavailable"}
        return
    if start is None:
        yield "reset", side.redis_position, {"reason": "missed changes; reload"}
        start = "$"
    half_life = side.settings.trending_half_life_seconds
    while True:
        if side.redis_generation != generation:
            yield "reset", side.redis_position, {"reason": "the rankings were rebuilt; reload"}
            generation = side.redis_generation
            key = f"{namespace(side.settings.redis_prefix, generation)}:changes"
            start = "$"
        try:
            replies: Any = await client.xread({key: start}, count=100, block=5000)
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            yield "reset", side.redis_position, {"reason": "live changes are unavailable"}
            return
        for _, entries in replies:
            for entry_id, fields in entries:
                start = entry_id
                position = int(fields[b"position"])
                epoch = float(fields[b"epoch"]) if fields.get(b"epoch") else None
                now = time.time()
                items = [
                    {"item_id": c.item_id, "item_type": c.item_type, "up": c.up, "down": c.down,
                     "net": c.net, "trending": decayed(float(c.trend), epoch or now, now, half_life)}
                    for c in decode_changes(fields[b"items"])
                    if item_type is None or c.item_type == item_type
                ]  # fmt: skip
                if items:
                    yield "scores", position, {"position": position, "items": items}


async def _resume_from(client: aioredis.Redis, key: str, last_event_id: int | None) -> str | None:
    """The stream id to read after, or None when the client has missed trimmed notices."""
    if last_event_id is None:
        return "$"
    after = f"{last_event_id}-0"  # one notice per position: carry on right after it
    try:
        info = await client.xinfo_stream(key)
    except aioredis.ResponseError:
        return None if last_event_id > 0 else after  # no stream (yet), or Redis was emptied
    if info["entries-added"] > info["length"]:  # the capped stream has dropped notices
        first = info.get("first-entry")
        oldest = _stream_id(first[0]) if first else _stream_id(info["last-generated-id"])
        # Everything after the client's position must still be there: (W, 0) onwards.
        if oldest > (last_event_id, 0):
            return None
    return after


def _stream_id(raw: bytes | str) -> tuple[int, int]:
    ms, _, seq = (raw.decode() if isinstance(raw, bytes) else raw).partition("-")
    return int(ms), int(seq or 0)
