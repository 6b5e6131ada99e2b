"""Names of the Redis keys shared by the projector (writer) and the query API (reader).

Every key of one read-model generation shares one hash tag, `{<prefix>:g<N>}`, so a Lua call may
touch them all and Redis Cluster keeps them in one slot:

  {p:gN}:meta                  hash: checkpoint, watermark, fence, trending epoch, live
  {p:gN}:item:<item_id>        hash: item_type, title, up, down, net
  {p:gN}:top:<type>            zset: net score
  {p:gN}:conf:<type>           zset: Wilson lower bound
  {p:gN}:trend:<type>          zset: trending sum relative to the epoch
  {p:gN}:daily:<type>:<date>   zset: net gained that UTC day (expires after the kept days)
  {p:gN}:changes               stream (capped) and pub/sub channel of change notices
  <p>:generation               string: the generation readers use
"""

from __future__ import annotations


def generation_key(prefix: str) -> str:
    return f"{prefix}:generation"


def namespace(prefix: str, generation: int) -> str:
    return f"{{{prefix}:g{generation}}}"
