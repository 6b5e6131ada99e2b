"""Redis Lua scripts shipped as package data: each package keeps its scripts beside its code."""

from __future__ import annotations

from importlib import resources

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript


def load(client: aioredis.Redis, package: str, name: str) -> AsyncScript:
    """The script `name` of `package`. redis-py's Script runs EVALSHA and loads the script again
    when Redis answers NOSCRIPT (after a restart or SCRIPT FLUSH)."""
    return client.register_script(resources.files(package).joinpath(name).read_text())
