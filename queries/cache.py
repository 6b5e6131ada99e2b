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

from starlette.types import ASGIApp, Receive, Scope, Send

from infra.metrics import QUERY_READS

_MAX_AGE = 1.0  # trending scores decay with time even when nothing changes

Url = tuple[str, bytes]  # (path, raw query string)


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


# What an entry costs besides its body and key: the dict slot, the tuple, the Cached object.
_OVERHEAD = 200


def _size(value: object) -> int:
    """Bytes a key or body holds, roughly: clients choose keys (cursors, junk query strings), so
    they count as much as bodies."""
    if isinstance(value, bytes | str):
        return len(value)
    if isinstance(value, tuple):
        return sum(_size(v) for v in value) + 8 * len(value)
    return 16


class PageCache:
    """Answers by key, each valid for one generation until the position it reflects moves (and
    at most a second, for trending's decay); and the keys of URLs answered before.

    Both live in one LRU bounded by total bytes (bodies, keys and raw URLs), since clients
    choose the keys: thousands of junk URLs only evict each other. An entry larger than an
    eighth of the bound is not kept, so one cannot flush the rest.
    """

    def __init__(self, max_bytes: int = 64 * 2**20) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._lru: OrderedDict[tuple[str, Hashable], tuple[Cached | Hashable, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._lru)

    def get(self, key: Hashable, generation: int, position: int) -> Cached | None:
        """The entry of `key` if it is of `generation`, reflects `position` and is fresh."""
        found = self._lru.get(("page", key))
        entry = found[0] if found is not None else None
        if (
            isinstance(entry, Cached)
            and entry.generation == generation
            and entry.position >= position
            and time.monotonic() - entry.at < _MAX_AGE
        ):
            self._lru.move_to_end(("page", key))
            return entry
        return None

    def put(self, key: Hashable, body: bytes, position: int, generation: int) -> Cached:
        entry = Cached.of(body, position, generation)
        self._put(("page", key), entry, _size(key) + len(body) + len(entry.etag))
        return entry

    def clear(self) -> None:
        """Forget the answers; the URL keys stay (they point at nothing until answered again)."""
        for slot in [slot for slot in self._lru if slot[0] == "page"]:
            self.bytes -= self._lru.pop(slot)[1]

    def remember_url(self, url: Url, key: Hashable) -> None:
        self._put(("url", url), key, _size(url) + _size(key))

    def key_for(self, url: Url) -> Hashable | None:
        found = self._lru.get(("url", url))
        if found is None:
            return None
        self._lru.move_to_end(("url", url))
        return found[0]

    def _put(self, slot: tuple[str, Hashable], value: Cached | Hashable, size: int) -> None:
        """Insert as the newest, evicting the least recently used beyond the byte bound."""
        size += _OVERHEAD
        old = self._lru.pop(slot, None)
        if old is not None:
            self.bytes -= old[1]
        if size > self.max_bytes // 8:
            return
        self._lru[slot] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self.bytes -= self._lru.popitem(last=False)[1][1]


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


_REDIS_READS = QUERY_READS.labels("redis")


def _revalidating(scope: Scope) -> bool:
    return any(name == b"if-none-match" for name, _ in scope["headers"])


async def _send(send: Send, entry: Cached) -> None:
    _REDIS_READS.inc()  # a cached page is one Redis read-model answer, served again
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
