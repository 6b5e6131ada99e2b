"""The page cache: rendered answers from Redis, kept while they are current, and `CachedPages`, the
pre-routing middleware that answers a repeated URL from it, so a popular page costs a dictionary
lookup, not a Redis round trip.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TypeVar

from starlette.types import ASGIApp, Receive, Scope, Send

_MAX_AGE = 1.0  # trending scores decay with time even when nothing changes
_ENTRIES = 10_000

Url = tuple[str, bytes]  # (path, raw query string)
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(slots=True)
class Cached:
    """A rendered answer: its body, validator, the position it reflects and when it was made."""

    body: bytes
    etag: str
    position: int
    generation: int
    at: float

    @classmethod
    def of(cls, body: bytes, position: int, generation: int) -> Cached:
        return cls(body, etag(body), position, generation, time.monotonic())


def etag(body: bytes) -> str:
    return f'W/"{hashlib.blake2b(body, digest_size=10).hexdigest()}"'


def _put(entries: OrderedDict[K, V], key: K, value: V) -> None:
    """Insert as the newest entry, evicting the oldest beyond the limit."""
    entries[key] = value
    entries.move_to_end(key)
    while len(entries) > _ENTRIES:
        entries.popitem(last=False)


class PageCache:
    """Answers by key, each valid for one generation until the position it reflects moves (and
    at most a second, for trending's decay); and the keys of URLs answered before."""

    def __init__(self) -> None:
        self._entries: OrderedDict[Hashable, Cached] = OrderedDict()
        self._keys: OrderedDict[Url, Hashable] = OrderedDict()

    def get(self, key: Hashable, generation: int, position: int) -> Cached | None:
        """The entry of `key` if it is of `generation`, reflects `position` and is fresh."""
        entry = self._entries.get(key)
        if (
            entry is not None
            and entry.generation == generation
            and entry.position >= position
            and time.monotonic() - entry.at < _MAX_AGE
        ):
            return entry
        return None

    def put(self, key: Hashable, body: bytes, position: int, generation: int) -> Cached:
        entry = Cached.of(body, position, generation)
        _put(self._entries, key, entry)
        return entry

    def clear(self) -> None:
        self._entries.clear()

    def remember_url(self, url: Url, key: Hashable) -> None:
        _put(self._keys, url, key)

    def key_for(self, url: Url) -> Hashable | None:
        return self._keys.get(url)


class _CachedRoute:
    path = "(cached page)"  # the metrics label of answers CachedPages gives


class CachedPages:
    """Answers a GET whose exact URL was answered from Redis before, while that answer is still
    current, without routing, validation or dependency injection: the hot path of popular pages.
    Anything else (a first request, min_position, If-None-Match, a stale entry) takes the normal
    route, which fills the cache.

    `current` gives the entry a URL may be answered with now, or None.
    """

    def __init__(self, app: ASGIApp, current: Callable[[Url], Cached | None]) -> None:
        self.app = app
        self.current = current

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            entry = self.current((scope["path"], scope["query_string"]))
            if entry is not None and not _revalidating(scope):
                scope["route"] = _CachedRoute
                await _send(send, entry)
                return
        await self.app(scope, receive, send)


def _revalidating(scope: Scope) -> bool:
    return any(name == b"if-none-match" for name, _ in scope["headers"])


async def _send(send: Send, entry: Cached) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(entry.body)).encode()),
        (b"etag", entry.etag.encode()),
        (b"x-ledger-position", str(entry.position).encode()),
        (b"x-read-model", b"redis"),
        (b"cache-control", b"public, no-cache"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": entry.body})
