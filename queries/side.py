"""The read side: where each read goes, and how it is answered.

`ReadSide` reads Redis while it answers and its generation is live (caught up at least once), and
the PostgreSQL read models otherwise. It follows the projector's change notices to know the
position Redis reflects, which is when cached pages go stale and what `min_position` waits for.
`respond` turns a read into an HTTP answer: from the page cache or afresh (identical reads in
flight share one), never below a position this server has already answered with, waiting for
`min_position` (woken by the store's progress, never per request) or refusing it, with an ETag.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

from starlette.responses import Response

from infra import redis_client
from infra.db import pool_for
from infra.problems import Problem
from infra.settings import Settings
from projections import generations
from projections.redis_store import changes_key
from queries.answers import not_issued, not_yet, response
from queries.cache import Cached, PageCache, Url
from queries.postgres_reader import PostgresReader
from queries.progress import Progress, Watched
from queries.redis_reader import RedisReader
from queries.shapes import (
    Detail,
    ItemDaily,
    ListQuery,
    Page,
    is_unavailable,
    raise_unless_unavailable,
)

log = logging.getLogger("voteledger.queries")

_REDIS_RETRY_AFTER = 1.0
_REDIS_CONNECTIONS = 32  # request-path reads of Redis at once, per process
_REDIS_POOL_WAIT = 5.0  # seconds a read may wait for its turn
_REFRESH_EVERY = 1.0
_FLOOR_WAIT = 1.0  # how long an answer may wait to not go back behind an earlier one
# A min_position beyond the ledger head the projector last reported is refused after this long:
# a vote's position can be ahead of the head for the moment the projector takes to read it.
_HEAD_GRACE = 1.0
_REDIS_WAIT = 0.5  # a waiter on Redis reads it again at least this often (a notice may be lost)
_POSTGRES_POLL = 0.1  # how often one task per process reads PostgreSQL's position for waiters

# What `produce` gives for "no such thing as of this position": it honours min_position like any
# answer (whoever just created it waits for the read model), then `respond` returns None (404).
NOTHING = b"\x00nothing"
Produced = tuple[str, bytes, int]  # the source that answered, the body, the position it reflects
Produce = Callable[[], Awaitable[Produced]]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Ask:
    """What a request asks of an answer besides its data."""

    min_position: int | None = None
    wait_ms: int = 1000
    if_none_match: str | None = None
    url: Url | None = None  # so that CachedPages can answer this URL next time


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
        # blocking reads (pub/sub, the change stream) get a client of their own. Named, so that
        # an operator can tell this API's connections apart in CLIENT LIST.
        name = f"{settings.redis_prefix}:query"
        # A bounded pool: requests wait their turn for a connection. Unbounded, a burst of a
        # thousand reads opened a thousand connections, whose connects timed out on a busy
        # machine and sent every read to the slower fallback, which made the machine busier.
        short = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5, "client_name": name}
        # (+4: the follower's refreshes)
        self.client = redis_client.connect(
            settings, max_connections=_REDIS_CONNECTIONS + 4, timeout=_REDIS_POOL_WAIT, **short
        )
        self.blocking = redis_client.connect(
            settings, socket_timeout=30, socket_connect_timeout=0.5, client_name=name
        )
        half_life = settings.trending_half_life_seconds
        self.redis = RedisReader(self.client, settings.redis_prefix, half_life)
        self.postgres = PostgresReader(self.pool, half_life)
        self.redis_generation = 1
        self.redis_progress = Progress()
        self.postgres_progress = Watched(self.postgres.position, _POSTGRES_POLL)
        self.redis_live = False
        self.served = 0  # the highest position this server has answered with
        self.cache = PageCache(settings.query_cache_bytes)
        self._redis_down_until = 0.0
        self._redis_turns = asyncio.Semaphore(_REDIS_CONNECTIONS)
        self._flights: dict[Hashable, asyncio.Future[tuple[str, Cached]]] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def redis_position(self) -> int:
        """The position Redis reflects, as its notices and reads have told."""
        return self.redis_progress.position

    @property
    def head(self) -> int:
        """The ledger head as the projector last reported it (0: unknown)."""
        return max(self.redis.head, self.postgres.head)

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
        await self.postgres_progress.stop()
        await self.client.aclose()
        await self.blocking.aclose()
        await self.pool.close()

    async def readiness(self) -> dict[str, Any]:
        """Ready while a read model can answer: Redis, or else PostgreSQL (the fallback)."""
        if not self.redis_usable():
            async with self.pool.connection(timeout=2.0) as conn:
                await conn.execute("SELECT 1")
        return {
            "status": "ready",
            "read_model": "redis" if self.redis_usable() else "postgres",
            "redis_generation": self.redis_generation,
        }

    # --- following the projector ------------------------------------------------------------

    def moved(self, position: int) -> None:
        """Redis reflects `position` (a notice, or a read): waiters for it wake."""
        self.redis_progress.moved(position)

    async def _refresh(self) -> None:
        prefix = self.settings.redis_prefix
        generation = await generations.redis(self.client, prefix, self.postgres.generation)
        if generation != self.redis_generation:
            log.info("read-model generation %d -> %d", self.redis_generation, generation)
            self.redis_generation = generation
            self.redis_progress.restart()
            self.cache.clear()
        position, self.redis_live = await self.redis.position(generation)
        self.moved(position)

    async def _follow(self) -> None:
        """Keep redis_position current: pub/sub for speed, a periodic refresh for safety."""
        while True:
            try:
                await self._refresh()
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_unavailable(exc):
                    log.exception("following the projector failed")
                self._redis_down(exc)
                await asyncio.sleep(_REDIS_RETRY_AFTER)

    async def _listen(self) -> None:
        """Follow the notices of the current generation until it changes."""
        async with self.blocking.pubsub() as pubsub:
            generation = self.redis_generation
            await pubsub.subscribe(changes_key(self.settings.redis_prefix, generation))
            next_refresh = time.monotonic() + _REFRESH_EVERY
            while generation == self.redis_generation:
                message = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=_REFRESH_EVERY
                )
                if message is not None:
                    self.moved(int(message["data"]))
                if time.monotonic() >= next_refresh:
                    await self._refresh()
                    next_refresh = time.monotonic() + _REFRESH_EVERY
                    if await redis_client.moved_away(self.blocking, pubsub.connection):
                        return  # subscribe again, at the new primary (Sentinel failover)

    def _redis_down(self, exc: BaseException) -> None:
        self._redis_down_until = time.monotonic() + _REDIS_RETRY_AFTER
        self.redis_live = False
        self.cache.clear()
        log.warning("serving from PostgreSQL: %s", exc)

    def redis_usable(self) -> bool:
        return self.redis_live and time.monotonic() >= self._redis_down_until

    # --- reads --------------------------------------------------------------------------------

    def cached(self, key: Hashable) -> Cached | None:
        """The cached answer of `key` while it is current."""
        if not self.redis_usable():
            return None
        return self.cache.get(key, self.redis_generation, self.redis_position)

    def current_page(self, url: Url) -> Cached | None:
        """The cached answer of a URL answered before, unless it is behind an answer given since."""
        key = self.cache.key_for(url)
        entry = self.cached(key) if key is not None else None
        return entry if entry is not None and entry.position >= self.served else None

    async def read(
        self,
        from_redis: Callable[[int], Awaitable[tuple[T, int]]],
        from_postgres: Callable[[], Awaitable[tuple[T, int]]],
        oldest: date | None = None,
    ) -> tuple[str, T, int]:
        """A read of Redis (given the generation) while it is usable and still keeps the day
        `oldest`, else of PostgreSQL: the source, the value and the position it reflects."""
        if self.redis_usable() and not self._too_old_for_redis(oldest):
            try:
                async with self._redis_turn():
                    value, position = await from_redis(self.redis_generation)
                self.moved(position)  # older cached pages must not answer after this one
                return "redis", value, position
            except Exception as exc:
                self._fall_back(exc)  # a BadCursor or a script error is raised, not fallen back
        value, position = await from_postgres()
        self.postgres_progress.moved(position)
        return "postgres", value, position

    async def page(self, query: ListQuery) -> tuple[str, Page]:
        now = time.time()
        source, page, _ = await self.read(
            lambda generation: _positioned(self.redis.page(generation, query, now)),
            lambda: _positioned(self.postgres.page(query, now)),
            query.day,
        )
        return source, page

    async def detail(self, item_id: str, today: date) -> tuple[str, Detail | None, int]:
        now = time.time()
        return await self.read(
            lambda generation: self.redis.detail(generation, item_id, today, now),
            lambda: self.postgres.detail(item_id, today, now),
        )

    async def daily(self, item_id: str, days: list[date]) -> tuple[str, ItemDaily | None, int]:
        """An item's net votes on each of `days` (oldest first): from Redis while it keeps the
        oldest of them, else from PostgreSQL, which keeps every day."""
        return await self.read(
            lambda generation: self.redis.daily(generation, item_id, days),
            lambda: self.postgres.daily(item_id, days),
            days[0],
        )

    @contextlib.asynccontextmanager
    async def _redis_turn(self) -> AsyncIterator[None]:
        """A turn at the request path's Redis connections. Waiting too long for one means this
        process is overloaded, not that Redis is down: the request is refused (503), and Redis
        stays in use. Falling back would clear the cache and move the load to PostgreSQL."""
        try:
            async with asyncio.timeout(_REDIS_POOL_WAIT):
                await self._redis_turns.acquire()
        except TimeoutError:
            raise Problem(
                503,
                "the query API is busy; retry shortly",
                slug="busy",
                headers={"Retry-After": "1"},
            ) from None
        try:
            yield
        finally:
            self._redis_turns.release()

    def _fall_back(self, exc: Exception) -> None:
        """Redis could not be reached: PostgreSQL answers, for a while. Anything else (bad input,
        a script error) is raised and answers this request alone."""
        raise_unless_unavailable(exc)
        self._redis_down(exc)

    def _too_old_for_redis(self, day: date | None) -> bool:
        """Redis keeps only the recent days of the daily lists; PostgreSQL keeps them all."""
        if day is None:
            return False
        oldest = datetime.now(UTC).date() - timedelta(days=self.settings.daily_retention_days)
        return day < oldest

    # --- answers ------------------------------------------------------------------------------

    async def respond(self, key: Hashable, produce: Produce, ask: Ask) -> Response | None:
        """Serve from cache or produce the body; honour min_position; add validators (None for
        NOTHING, never cached).

        Never answers with a position below one this server has already answered with (which
        could happen when falling back to PostgreSQL, a little behind Redis): such an answer
        waits, briefly, for its source to catch up.
        """
        started = time.monotonic()
        wanted = ask.min_position
        if wanted is not None and self.redis_usable():
            # Read your writes: Redis is known not to reflect it yet, so a read now would only
            # be read again. Wait for the notice first; the loop below still bounds the whole
            # wait (this one is shorter than its grace for a position beyond the head).
            wait = min(ask.wait_ms / 1000, _REDIS_WAIT, _HEAD_GRACE)
            await self.redis_progress.wait_for(wanted, wait)
        source, entry = await self._entry(key, produce)
        while (shortfall := self._shortfall(entry.position, ask, started)) is not None:
            await self._wait(source, *shortfall)
            source, entry = await self._entry(key, produce)
        self.served = max(self.served, entry.position)
        if entry.body == NOTHING:
            return None
        if source == "redis" and ask.min_position is None and ask.url is not None:
            self.cache.remember_url(ask.url, key)
        return response(entry, source, ask.if_none_match)

    async def _entry(self, key: Hashable, produce: Produce) -> tuple[str, Cached]:
        """The cached answer, or a fresh one; identical reads in flight share one (single-flight),
        so a crowd asking for one page costs one read, also of the PostgreSQL fallback."""
        entry = self.cached(key)
        if entry is not None:
            return "redis", entry
        flight = self._flights.get(key)
        # A landed flight may still be listed (its callback removing it has not run yet): its
        # answer is the one just found short. Awaiting it again returns at once, without
        # yielding, so a waiter whose position Redis already reached would spin on it,
        # holding the event loop until its wait ran out.
        if flight is None or flight.done():
            flight = asyncio.ensure_future(self._produce(key, produce))
            self._flights[key] = flight
            flight.add_done_callback(lambda done: self._landed(key, done))
        # Shielded: a client that goes away does not cancel the read for the others.
        return await asyncio.shield(flight)

    def _landed(self, key: Hashable, flight: asyncio.Future[tuple[str, Cached]]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled():
            flight.exception()  # retrieved, even when every asker has gone

    async def _produce(self, key: Hashable, produce: Produce) -> tuple[str, Cached]:
        source, body, position = await produce()
        if source == "redis" and body != NOTHING:
            return source, self.cache.put(key, body, position, self.redis_generation)
        return source, Cached.of(body, position, self.redis_generation)

    def _shortfall(self, position: int, ask: Ask, started: float) -> tuple[int, float] | None:
        """The position an answer at `position` must wait for and for how long, or None when it
        may be given now; a Problem when min_position is not reached in time, or is beyond the
        ledger head (after a grace: the projector may not have read a fresh vote yet)."""
        elapsed = time.monotonic() - started
        wanted = ask.min_position
        if wanted is not None and position < wanted:
            wait = ask.wait_ms / 1000
            head = self.head
            if head and wanted > head:
                wait = min(wait, _HEAD_GRACE)
                if elapsed >= wait:
                    raise not_issued(wanted, head)
            if elapsed >= wait:
                raise not_yet(position, wanted)
            return wanted, wait - elapsed
        if position < self.served and elapsed < _FLOOR_WAIT:
            return self.served, _FLOOR_WAIT - elapsed
        return None

    async def _wait(self, source: str, position: int, seconds: float) -> None:
        """Woken by the store's progress: Redis's notices, or the one task per process that
        reads PostgreSQL's position while anyone waits. Redis is read again at least every
        half second, in case a notice was lost."""
        if source == "redis":
            await self.redis_progress.wait_for(position, min(seconds, _REDIS_WAIT))
        else:
            await self.postgres_progress.wait_for(position, seconds)


async def _positioned(read: Awaitable[Page]) -> tuple[Page, int]:
    page = await read
    return page, page.position
