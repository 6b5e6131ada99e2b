"""`AsyncClient`: the asyncio (or trio) shell around the calls of `calls.py`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date
from types import TracebackType
from typing import TypeVar

import httpx
import stamina

from voteledger_client.calls import At, Calls
from voteledger_client.core import USER_AGENT, Call, retry_hook, stamina_arguments
from voteledger_client.models import (
    Agent,
    ChartDigest,
    DailySeries,
    Detail,
    Direction,
    Entry,
    ExplainSort,
    Explanation,
    Item,
    ItemHistory,
    ItemType,
    Page,
    Sort,
    VoteAndRead,
    VoteResult,
)
from voteledger_client.retry import RetryPolicy

T = TypeVar("T")


class AsyncClient:
    """Votes (command API) and rankings (query API), asynchronous. Use as an async context
    manager, or await `aclose()`.

    `api_key` is an agent's key (for votes), `operator_token` the operator's (for `create_agent`
    and `add_item`); reads need neither. `transport` replaces httpx's own (tests, proxies)."""

    def __init__(
        self,
        command_url: str = "http://127.0.0.1:8000",
        query_url: str = "http://127.0.0.1:8001",
        api_key: str | None = None,
        *,
        operator_token: str | None = None,
        timeout: float | httpx.Timeout = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._calls = Calls(command_url, query_url, api_key, operator_token)
        self._policy = retry or RetryPolicy()
        self._http = httpx.AsyncClient(
            transport=transport, timeout=timeout, headers={"User-Agent": USER_AGENT}
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(self, call: Call[T]) -> T:
        """Send a call, retrying what its `retry_on` allows within the retry policy."""
        hook = retry_hook(call, self._policy)
        async for attempt in stamina.retry_context(on=hook, **stamina_arguments(self._policy)):
            with attempt:
                response = await self._http.request(
                    call.method,
                    call.url,
                    params=call.params,
                    headers=call.headers,
                    content=call.body,
                )
                return call.parse(response)
        raise AssertionError("unreachable: stamina raises the last failure")

    # --- votes and the catalogue -------------------------------------------------------------

    async def vote(
        self, item_id: str, vote: Direction, *, idempotency_key: str | None = None
    ) -> VoteResult:
        """Cast (`up`, `down`) or retract (`none`) the agent's vote; recorded at most once."""
        return await self.send(self._calls.vote(item_id, vote, idempotency_key))

    async def vote_and_read(
        self,
        item_id: str,
        vote: Direction,
        *,
        idempotency_key: str | None = None,
        wait_ms: int = 2000,
    ) -> VoteAndRead:
        """Vote, then read the item as of the vote's position: the read reflects the vote."""
        voted = await self.vote(item_id, vote, idempotency_key=idempotency_key)
        at = At(voted.position, wait_ms)
        return VoteAndRead(voted, await self.send(self._calls.item(item_id, at, own_position=True)))

    async def create_agent(self, name: str = "", owner: str | None = None) -> Agent:
        """Register an agent (operator) for `owner` (default: its own owner): its id, owner and
        API key, shown only this once."""
        return await self.send(self._calls.create_agent(name, owner))

    async def add_item(self, item_id: str, item_type: ItemType, title: str) -> Item:
        """List a song or tool in the catalogue (operator)."""
        return await self.send(self._calls.add_item(item_id, item_type, title))

    # --- reads --------------------------------------------------------------------------------

    async def top(
        self,
        item_type: ItemType,
        *,
        sort: Sort = "net",
        limit: int | None = None,
        min_votes: int | None = None,
        cursor: str | None = None,
        as_of: date | None = None,
        min_position: int | None = None,
        wait_ms: int | None = None,
    ) -> Page:
        """One page of the all-time ranking (by net votes, confidence or independent votes);
        with `as_of`, the ranking as that UTC day closed (ProblemError 404
        `/problems/no-snapshot` for a day not closed; `min_votes` does not apply)."""
        at = At(min_position, wait_ms)
        call = self._calls.top(item_type, sort, limit, min_votes, cursor, at, as_of)
        return await self.send(call)

    async def daily(
        self,
        item_type: ItemType,
        *,
        day: date | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        min_position: int | None = None,
        wait_ms: int | None = None,
    ) -> Page:
        """One page of the net votes gained on a UTC day (default today)."""
        at = At(min_position, wait_ms)
        return await self.send(self._calls.daily(item_type, day, limit, cursor, at))

    async def trending(
        self,
        item_type: ItemType,
        *,
        limit: int | None = None,
        cursor: str | None = None,
        as_of: date | None = None,
        min_position: int | None = None,
        wait_ms: int | None = None,
    ) -> Page:
        """One page of the time-decayed net votes; with `as_of`, as that UTC day closed."""
        at = At(min_position, wait_ms)
        return await self.send(self._calls.trending(item_type, limit, cursor, at, as_of))

    async def item(
        self, item_id: str, *, min_position: int | None = None, wait_ms: int | None = None
    ) -> Detail:
        """One item's counts, scores and ranks."""
        return await self.send(self._calls.item(item_id, At(min_position, wait_ms)))

    async def history(
        self, item_id: str, *, start: date | None = None, end: date | None = None
    ) -> ItemHistory:
        """An item's rank and score on each chart as each closed UTC day from `start` to `end`
        closed (default: the 30 days up to yesterday)."""
        return await self.send(self._calls.history(item_id, start, end))

    async def digest(self, day: date) -> ChartDigest:
        """The hash-chain link of a closed UTC day's chart snapshot."""
        return await self.send(self._calls.digest(day))

    async def explain(
        self,
        item_id: str,
        sort: ExplainSort = "net",
        *,
        limit: int | None = None,
        min_position: int | None = None,
        wait_ms: int | None = None,
    ) -> Explanation:
        """The components of an item's score on one chart, adding up to it; `limit`: the most
        owners listed for `independent`."""
        at = At(min_position, wait_ms)
        return await self.send(self._calls.explain(item_id, sort, limit, at))

    async def daily_series(
        self,
        item_id: str,
        days: int = 30,
        *,
        min_position: int | None = None,
        wait_ms: int | None = None,
    ) -> DailySeries:
        """An item's net votes on each of its last `days` UTC days (at most 90), today included."""
        at = At(min_position, wait_ms)
        return await self.send(self._calls.daily_series(item_id, days, at))

    def iter_top(
        self,
        item_type: ItemType,
        *,
        sort: Sort = "net",
        limit: int | None = None,
        min_votes: int | None = None,
        as_of: date | None = None,
        min_position: int | None = None,
    ) -> AsyncIterator[Entry]:
        """Every entry of the all-time ranking, page after page (`limit` per page)."""
        at = At(min_position)
        call = self._calls.top(item_type, sort, limit, min_votes, None, at, as_of)
        return self.iter_entries(call)

    def iter_daily(
        self,
        item_type: ItemType,
        *,
        day: date | None = None,
        limit: int | None = None,
        min_position: int | None = None,
    ) -> AsyncIterator[Entry]:
        """Every entry of a day's list, page after page."""
        return self.iter_entries(self._calls.daily(item_type, day, limit, None, At(min_position)))

    def iter_trending(
        self,
        item_type: ItemType,
        *,
        limit: int | None = None,
        as_of: date | None = None,
        min_position: int | None = None,
    ) -> AsyncIterator[Entry]:
        """Every entry of the trending list, page after page."""
        call = self._calls.trending(item_type, limit, None, At(min_position), as_of)
        return self.iter_entries(call)

    async def iter_entries(self, call: Call[Page]) -> AsyncIterator[Entry]:
        """The entries of a list's pages, from `call`'s page on, following `next_cursor`."""
        while True:
            page = await self.send(call)
            for entry in page.items:
                yield entry
            if page.next_cursor is None:
                return
            call = call.with_cursor(page.next_cursor)
