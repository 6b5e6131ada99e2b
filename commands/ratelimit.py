"""Per-agent rate limit: GCRA, in Redis so that every API replica shares it.

GCRA keeps one number per agent (the theoretical arrival time of the next request) and allows a
burst of `burst` requests refilled at `rate` per second. When Redis cannot be reached, votes are
still accepted: the same algorithm runs in-process (per replica, so looser) until Redis answers
again, and the fallback shows in metrics.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from infra import scripts
from infra.metrics import RATE_LIMIT_FALLBACK, RATE_LIMIT_REDIS_UP


class GcraArgs(msgspec.Struct, frozen=True):
    """ratelimit.lua's input: the emission interval and the burst tolerance."""

    interval_ms: float
    tolerance_ms: float


class GcraDecision(msgspec.Struct, frozen=True):
    """ratelimit.lua's answer for one request."""

    allowed: bool
    remaining: int
    retry_ms: int
    reset_ms: int


_decisions = msgspec.json.Decoder(list[GcraDecision])


# After Redis fails, skip it for this long instead of paying a timeout on every vote.
_RETRY_REDIS_AFTER = 2.0
_MAX_LOCAL_KEYS = 100_000


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    remaining: int
    retry_after: float  # seconds until a request would be allowed (0 when allowed)
    reset: float  # seconds until the full burst is available again


def gcra(tat: float, now: float, interval: float, tolerance: float) -> tuple[Decision, float]:
    """One GCRA step, pure: the decision and the new theoretical arrival time."""
    tat = max(tat, now)
    new_tat = tat + interval
    allow_at = new_tat - tolerance
    if allow_at > now:
        return Decision(False, 0, allow_at - now, tat - now), tat
    return Decision(True, math.floor((now - allow_at) / interval), 0.0, new_tat - now), new_tat


class RateLimiter:
    def __init__(self, client: aioredis.Redis, prefix: str, rate: float, burst: int) -> None:
        self.client = client
        self.prefix = prefix
        self.burst = burst
        self.interval = 1.0 / rate
        self.tolerance = self.interval * burst
        self._script = scripts.load(client, "commands", "ratelimit.lua")
        self._args = msgspec.json.encode(GcraArgs(self.interval * 1000, self.tolerance * 1000))
        self._redis_down_until = 0.0
        self._local: OrderedDict[str, float] = OrderedDict()

    @property
    def policy(self) -> str:
        """The RateLimit-Policy header value: `burst` requests per window of seconds."""
        window = max(1, math.ceil(self.tolerance))
        return f'"votes";q={self.burst};w={window}'

    async def check_many(self, agents: list[str]) -> list[Decision]:
        """One decision per request, in order, in one Redis round trip."""
        now = time.monotonic()
        if agents and now >= self._redis_down_until:
            try:
                # One hash tag: a batch's keys are one script's keys, so one slot in a cluster.
                raw = await self._script(
                    keys=[f"{{{self.prefix}:ratelimit}}:{agent}" for agent in agents],
                    args=[self._args],
                )
                RATE_LIMIT_REDIS_UP.set(1)
                return [
                    Decision(d.allowed, d.remaining, d.retry_ms / 1000, d.reset_ms / 1000)
                    for d in _decisions.decode(raw)
                ]
            except (RedisError, OSError):
                self._redis_down_until = now + _RETRY_REDIS_AFTER
                RATE_LIMIT_REDIS_UP.set(0)
        RATE_LIMIT_FALLBACK.inc(len(agents))
        return [self._check_local(agent, now) for agent in agents]

    def _check_local(self, agent: str, now: float) -> Decision:
        decision, tat = gcra(self._local.pop(agent, now), now, self.interval, self.tolerance)
        self._local[agent] = tat
        while len(self._local) > _MAX_LOCAL_KEYS:
            self._local.popitem(last=False)
        return decision

    def headers(self, decision: Decision) -> dict[str, str]:
        headers = {
            "RateLimit-Policy": self.policy,
            "RateLimit": f'"votes";r={decision.remaining};t={math.ceil(decision.reset)}',
        }
        if not decision.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(decision.retry_after)))
        return headers
