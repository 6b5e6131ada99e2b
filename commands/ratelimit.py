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
    """ratelimit.lua's input: the emission interval and the burst tolerance; with `peek`, the
    state is read and nothing is charged."""

    interval_ms: float
    tolerance_ms: float
    peek: bool = False


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


def gcra_peek(tat: float, now: float, interval: float, tolerance: float) -> Decision:
    """The state GCRA is in, pure and charging nothing: `remaining` is how many requests would
    be allowed right now, `retry_after` how long until the next one would be."""
    tat = max(tat, now)
    remaining = max(0, math.floor((now + tolerance - tat) / interval + 1e-9))
    retry_after = 0.0 if remaining else tat + interval - tolerance - now
    return Decision(remaining > 0, remaining, retry_after, tat - now)


class RateLimiter:
    def __init__(self, client: aioredis.Redis, prefix: str, rate: float, burst: int) -> None:
        self.client = client
        self.prefix = prefix
        self.rate = rate
        self.burst = burst
        self.interval = 1.0 / rate
        self.tolerance = self.interval * burst
        self._script = scripts.load(client, "commands", "ratelimit.lua")
        self._args = msgspec.json.encode(GcraArgs(self.interval * 1000, self.tolerance * 1000))
        self._peek_args = msgspec.json.encode(
            GcraArgs(self.interval * 1000, self.tolerance * 1000, peek=True)
        )
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
        decisions = await self._in_redis(agents, self._args, now)
        if decisions is not None:
            return decisions
        RATE_LIMIT_FALLBACK.inc(len(agents))
        return [self._check_local(agent, now) for agent in agents]

    async def peek(self, agent: str) -> Decision:
        """The agent's state (what check_many would allow now), charging nothing."""
        now = time.monotonic()
        decisions = await self._in_redis([agent], self._peek_args, now)
        if decisions is not None:
            return decisions[0]
        return gcra_peek(self._local.get(agent, now), now, self.interval, self.tolerance)

    async def _in_redis(self, agents: list[str], args: bytes, now: float) -> list[Decision] | None:
        """ratelimit.lua's decisions, or None while Redis is failing (then the caller decides
        in-process)."""
        if not agents or now < self._redis_down_until:
            return None
        try:
            # One hash tag: a batch's keys are one script's keys, so one slot in a cluster.
            raw = await self._script(
                keys=[f"{{{self.prefix}:ratelimit}}:{agent}" for agent in agents], args=[args]
            )
        except (RedisError, OSError):
            self._redis_down_until = now + _RETRY_REDIS_AFTER
            RATE_LIMIT_REDIS_UP.set(0)
            return None
        RATE_LIMIT_REDIS_UP.set(1)
        return [
            Decision(d.allowed, d.remaining, d.retry_ms / 1000, d.reset_ms / 1000)
            for d in _decisions.decode(raw)
        ]

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
