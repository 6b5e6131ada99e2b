"""Every request the client makes, as a `Call`: URL, headers, body, parser and what may be
retried. Pure: the shells in `sync.py` and `aio.py` send them."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from datetime import date
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import msgspec

from voteledger_client.core import OPERATOR, OWN_READ, READ, VOTE, Call, parse_as
from voteledger_client.models import (
    Agent,
    ChartDigest,
    DailySeries,
    Detail,
    Direction,
    ExplainSort,
    Explanation,
    Item,
    ItemHistory,
    ItemType,
    Page,
    Sort,
    VoteResult,
)

T = TypeVar("T")
_JSON = {"Content-Type": "application/json", "Accept": "application/json"}
_ACCEPT = {"Accept": "application/json"}
_vote, _detail, _page = parse_as(VoteResult), parse_as(Detail), parse_as(Page)
_agent, _item = parse_as(Agent), parse_as(Item)
_history, _digest = parse_as(ItemHistory), parse_as(ChartDigest)
_explanation, _series = parse_as(Explanation), parse_as(DailySeries)


class Calls:
    """Builds the calls of one client: its two base URLs and credentials."""

    def __init__(
        self, command_url: str, query_url: str, api_key: str | None, operator_token: str | None
    ) -> None:
        self.command_url = command_url.rstrip("/")
        self.query_url = query_url.rstrip("/")
        self._agent = _bearer(api_key)
        self._operator = _bearer(operator_token)

    # --- the command API --------------------------------------------------------------------

    def vote(self, item_id: str, vote: Direction, idempotency_key: str | None) -> Call[VoteResult]:
        """A vote with an Idempotency-Key (a fresh one unless given): every retry of this call
        sends the same key, so the server records the vote at most once."""
        key = idempotency_key if idempotency_key is not None else str(uuid.uuid4())
        return Call(
            "POST",
            f"{self.command_url}/api/v1/vote",
            _vote,
            VOTE,
            headers={**_JSON, **self._agent, "Idempotency-Key": key},
            body=msgspec.json.encode({"item_id": item_id, "vote": vote}),
        )

    def create_agent(self, name: str, owner: str | None = None) -> Call[Agent]:
        body = {"name": name} if owner is None else {"name": name, "owner": owner}
        return self._operator_post("/api/v1/agents", body, _agent)

    def add_item(self, item_id: str, item_type: ItemType, title: str) -> Call[Item]:
        body = {"item_id": item_id, "item_type": item_type, "title": title}
        return self._operator_post("/api/v1/items", body, _item)

    def _operator_post(
        self, path: str, body: dict[str, str], parse: Callable[[httpx.Response], T]
    ) -> Call[T]:
        headers = {**_JSON, **self._operator}
        encoded = msgspec.json.encode(body)
        return Call("POST", self.command_url + path, parse, OPERATOR, headers, body=encoded)

    # --- the query API ----------------------------------------------------------------------

    def top(
        self,
        item_type: ItemType,
        sort: Sort,
        limit: int | None,
        min_votes: int | None,
        cursor: str | None,
        at: At,
        as_of: date | None = None,
    ) -> Call[Page]:
        """The live ranking, or with `as_of` the ranking as that UTC day closed."""
        params = {"sort": sort, "limit": limit, "min_votes": min_votes, "cursor": cursor}
        return self._list("/api/v1/top", item_type, {**params, **_as_of(as_of)}, at)

    def daily(
        self, item_type: ItemType, day: date | None, limit: int | None, cursor: str | None, at: At
    ) -> Call[Page]:
        params = {"date": _day(day), "limit": limit, "cursor": cursor}
        return self._list("/api/v1/top/daily", item_type, params, at)

    def trending(
        self,
        item_type: ItemType,
        limit: int | None,
        cursor: str | None,
        at: At,
        as_of: date | None = None,
    ) -> Call[Page]:
        params = {"limit": limit, "cursor": cursor, **_as_of(as_of)}
        return self._list("/api/v1/trending", item_type, params, at)

    def item(self, item_id: str, at: At, *, own_position: bool = False) -> Call[Detail]:
        """One item; `own_position`: the position is one this client was given by a vote."""
        call = self._get(_item_path(item_id), _detail, at.params())
        return dataclasses.replace(call, retry_on=OWN_READ) if own_position else call

    def history(self, item_id: str, start: date | None, end: date | None) -> Call[ItemHistory]:
        """An item's places on each chart from the daily snapshots (server defaults: the 30
        days up to yesterday)."""
        params = {"from": _day(start), "to": _day(end)}
        return self._get(_item_path(item_id, "/history"), _history, params)

    def digest(self, day: date) -> Call[ChartDigest]:
        return self._get(f"/api/v1/charts/{day.isoformat()}/digest", _digest, {})

    def explain(
        self, item_id: str, sort: ExplainSort, limit: int | None, at: At
    ) -> Call[Explanation]:
        params = {"sort": sort, "limit": limit, **at.params()}
        return self._get(_item_path(item_id, "/explain"), _explanation, params)

    def daily_series(self, item_id: str, days: int | None, at: At) -> Call[DailySeries]:
        params = {"days": days, **at.params()}
        return self._get(_item_path(item_id, "/daily"), _series, params)

    def _get(
        self, path: str, parse: Callable[[httpx.Response], T], params: dict[str, Any]
    ) -> Call[T]:
        query = _present(params)
        return Call("GET", self.query_url + path, parse, READ, headers=_ACCEPT, params=query)

    def _list(self, path: str, item_type: ItemType, params: dict[str, Any], at: At) -> Call[Page]:
        query = _present({"item_type": item_type, **params, **at.params()})
        return Call("GET", self.query_url + path, _page, READ, headers=_ACCEPT, params=query)


class At(msgspec.Struct, frozen=True):
    """Read-your-writes: answer only once the data reflects `min_position`, waiting up to
    `wait_ms` on the server (it answers 425 Too Early after that, which is retried)."""

    min_position: int | None = None
    wait_ms: int | None = None

    def params(self) -> dict[str, int | None]:
        return {"min_position": self.min_position, "wait_ms": self.wait_ms}


def _item_path(item_id: str, tail: str = "") -> str:
    return f"/api/v1/items/{quote(item_id, safe='')}{tail}"


def _day(day: date | None) -> str | None:
    return day.isoformat() if day is not None else None


def _as_of(day: date | None) -> dict[str, str | None]:
    return {"as_of": _day(day)}


def _present(params: dict[str, Any]) -> dict[str, str | int]:
    """The parameters that have a value: the server's defaults stand for the others."""
    return {key: value for key, value in params.items() if value is not None}


def _bearer(token: str | None) -> dict[str, str]:
    # Without a token no Authorization is sent: the server answers 401, as a problem.
    return {"Authorization": f"Bearer {token}"} if token else {}
