"""The Redis read models: their keys, their scripts, and every operation on them.

Every key of one generation shares one hash tag, `{<prefix>:g<N>}`, so one script may touch them
all and Redis Cluster keeps them in one slot:

  {p:gN}:meta                  hash: checkpoint, watermark, fence, trending epoch, live
  {p:gN}:item:<item_id>        hash: item_type, title, up, down, net
  {p:gN}:top:<type>            zset: net score
  {p:gN}:conf:<type>           zset: Wilson lower bound
  {p:gN}:trend:<type>          zset: trending sum relative to the epoch
  {p:gN}:daily:<type>:<date>   zset: net gained that UTC day (expires after the kept days)
  {p:gN}:changes               stream (capped) and pub/sub channel of change notices
  {p:gN}:pending               hash: changed items waiting for the watermark to move

The pointer `<prefix>:generation` belongs to projections.generations.
"""

from __future__ import annotations

import msgspec


def namespace(prefix: str, generation: int) -> str:
    """The hash tag every key of one generation starts with."""
    return f"{{{prefix}:g{generation}}}"


def meta_key(prefix: str, generation: int) -> str:
    return f"{namespace(prefix, generation)}:meta"


def changes_key(prefix: str, generation: int) -> str:
    """The capped stream of change notices, and the pub/sub channel of the watermark."""
    return f"{namespace(prefix, generation)}:changes"


class ChangedItem(msgspec.Struct, frozen=True):
    """One item in a change notice: its absolute values after the change."""

    item_id: str
    item_type: str
    up: int
    down: int
    net: int
    trend: str  # the stored trending sum, relative to the notice's epoch


_changes_decoder = msgspec.json.Decoder(list[ChangedItem])


def decode_changes(raw: bytes) -> list[ChangedItem]:
    """The `items` field of a change notice."""
    return _changes_decoder.decode(raw)
