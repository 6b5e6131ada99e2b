"""The per-process cache of facts that never change once written: which agent an API key digest
belongs to, and each item's type. Bounded; only what the database confirmed is kept."""

from __future__ import annotations

import uuid
from collections import OrderedDict
from typing import TypeVar

from events.types import ItemType

K = TypeVar("K")
V = TypeVar("V")


class Known:
    def __init__(self, size: int = 100_000) -> None:
        self.size = size
        self.agents: OrderedDict[bytes, uuid.UUID] = OrderedDict()
        self.item_types: OrderedDict[str, ItemType] = OrderedDict()

    def add_agent(self, digest: bytes, agent_id: uuid.UUID) -> None:
        self._put(self.agents, digest, agent_id)

    def add_item_type(self, item_id: str, item_type: ItemType) -> None:
        self._put(self.item_types, item_id, item_type)

    def _put(self, cache: OrderedDict[K, V], key: K, value: V) -> None:
        cache[key] = value
        cache.move_to_end(key)
        if len(cache) > self.size:
            cache.popitem(last=False)
