"""Every Redis script's keys hash to one slot, so the scripts can run on Redis Cluster."""

from __future__ import annotations

from typing import Any

import pytest
from redis.crc import key_slot

from commands.ratelimit import RateLimiter
from projections import generations, redis_keys
from projections.redis_store import changes_key, meta_key, namespace

PREFIXES = ["vl", "vl-test:x"]
GENERATIONS = [1, 2, 17]


def _slot(key: str) -> int:
    return int(key_slot(key.encode()))


@pytest.mark.parametrize("prefix", PREFIXES)
def test_the_pointer_the_owner_and_every_generation_share_one_slot(prefix: str) -> None:
    keys = [generations.redis_key(prefix), generations.ledger_key(prefix)]
    for generation in GENERATIONS:
        keys += [namespace(prefix, generation), meta_key(prefix, generation)]
        keys += [changes_key(prefix, generation), f"{namespace(prefix, generation)}:top:song"]
    assert len(set(keys)) == len(keys)
    assert {_slot(key) for key in keys} == {_slot(redis_keys.tag(prefix))}


def test_prefixes_are_apart() -> None:
    """Another prefix's keys are other keys (a prefix is one hash tag, braces and all)."""
    assert _slot(generations.redis_key("vl")) != _slot(generations.redis_key("vl2"))
    assert generations.redis_key("vl") == "{vl}:generation"
    assert meta_key("vl", 1) == "{vl}:g1:meta"
    with pytest.raises(ValueError):
        redis_keys.tag("v{l}")


class _Recorder:
    """Stands in for a Redis client: its one script records the keys it is called with."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def register_script(self, source: str) -> Any:
        async def script(keys: list[str], args: list[bytes]) -> bytes:
            self.calls.append(keys)
            return b"[]"

        return script


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_the_rate_limit_keys_of_two_agents_share_one_slot(prefix: str) -> None:
    client = _Recorder()
    limiter = RateLimiter(client, prefix, rate=1.0, burst=5)  # type: ignore[arg-type]
    await limiter.check_many(["agent-a", "agent-b"])
    [keys] = client.calls
    assert len(set(keys)) == 2
    assert len({_slot(key) for key in keys}) == 1


def test_scan_patterns_are_escaped_and_exact() -> None:
    """Glob characters of a prefix are escaped; the exact forms reject near misses."""
    assert redis_keys.glob("v*l?[x]\\") == "v\\*l\\?\\[x\\]\\\\"
    assert redis_keys.generation_keys("vl", 1) == "{vl}:g1:*"
    pattern, exact = redis_keys.metas("vl")
    assert pattern == "{vl}:g[0-9]*:meta"
    assert exact.fullmatch("{vl}:g17:meta")[1] == "17"  # type: ignore[index]
    for other in ("{vl}:g1:item:x:meta", "{vl2}:g1:meta", "{vl}:gx:meta", "{vl}:generation"):
        assert not exact.fullmatch(other)
    pattern, exact = redis_keys.all_generation_keys("vl")
    assert pattern == "{vl}:g[0-9]*"
    assert exact.fullmatch("{vl}:g1:item:a\nb") and not exact.fullmatch("{vl}:generation")


def test_the_old_names_match_only_old_keys() -> None:
    """The old names of prefix `vl` match no current key of any prefix, `vl:g1` included."""
    assert redis_keys.legacy_singles("vl") == ["vl:generation", "vl:ledger"]
    pattern, exact = redis_keys.legacy_generation_keys("vl")
    assert pattern == "{vl:g[0-9]*}:*"
    for old in ("{vl:g1}:meta", "{vl:g12}:item:song-1", "{vl:g2}:daily:song:2026-01-01"):
        assert exact.fullmatch(old)
    current = [generations.redis_key("vl:g1"), generations.ledger_key("vl:g1")]
    current += [meta_key("vl:g1", 1), f"{namespace('vl:g1', 2)}:item:x", "{vl2:g1}:meta"]
    current += ["{vl:ratelimit}:agent"]
    assert [key for key in current if exact.fullmatch(key)] == []
