"""The names of the Redis read models' keys, and the SCAN patterns that find them.

Every key under a prefix shares ONE hash tag, `{<prefix>}`, so any script may take any of them
as its KEYS and Redis Cluster keeps them all in one slot:

  {p}:generation          the pointer: the generation readers use (projections.generations)
  {p}:ledger              the id of the ledger these read models are of
  {p}:g<N>                one generation's namespace; its keys are `{p}:g<N>:<name>`
                          (projections.redis_store lists them)

Before, the pointer was `<p>:generation`, the owner `<p>:ledger` and each generation had a tag
of its own, `{<p>:g<N>}`: `legacy_*` name those keys, so that they can be deleted once.
"""

from __future__ import annotations

import re

# The kinds of key a generation holds, under the old names (`{<p>:g<N>}:<kind>...`), nothing else.
_LEGACY_KINDS: tuple[str, ...] = ("meta", "item:", "top:", "conf:", "trend:", "daily:", "changes")
_LEGACY_KINDS += ("pending", "indep:", "own:")  # the last two: projections.independent_redis
_GLOB_SPECIAL = re.compile(r"([\\*?\[\]])")


def tag(prefix: str) -> str:
    """The hash tag every key under `prefix` starts with."""
    if "{" in prefix or "}" in prefix:
        raise ValueError(f"a Redis key prefix may not contain braces: {prefix!r}")
    return f"{{{prefix}}}"


def pointer(prefix: str) -> str:
    return f"{tag(prefix)}:generation"


def owner(prefix: str) -> str:
    return f"{tag(prefix)}:ledger"


def namespace(prefix: str, generation: int) -> str:
    """What every key of one generation starts with (after the tag, so in the same slot)."""
    return f"{tag(prefix)}:g{generation}"


def glob(text: str) -> str:
    """`text` as a SCAN MATCH pattern matching only itself (`{` `}` are literal there)."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def generation_keys(prefix: str, generation: int) -> str:
    """The pattern of every key of one generation (`g1:` matches no key of g10)."""
    return f"{glob(namespace(prefix, generation))}:*"


def all_generation_keys(prefix: str) -> tuple[str, re.Pattern[str]]:
    """The pattern of every key of every generation, and the exact form to keep what it finds
    (a SCAN pattern cannot say "digits only")."""
    exact = re.compile(rf"{re.escape(tag(prefix))}:g[0-9]+:.*", re.DOTALL)
    return f"{glob(tag(prefix))}:g[0-9]*", exact


def metas(prefix: str) -> tuple[str, re.Pattern[str]]:
    """The pattern of every generation's meta hash, and its exact form (the generation its
    group); the pattern alone would also match an item whose id ends in `:meta`."""
    exact = re.compile(rf"{re.escape(tag(prefix))}:g([0-9]+):meta")
    return f"{glob(tag(prefix))}:g[0-9]*:meta", exact


# --- the names before every key shared one tag ---------------------------------------------------


def legacy_singles(prefix: str) -> list[str]:
    """The old pointer and owner keys."""
    return [f"{prefix}:generation", f"{prefix}:ledger"]


def legacy_generation_keys(prefix: str) -> tuple[str, re.Pattern[str]]:
    """The pattern of every key of every old generation, and their exact form. Only the kinds
    of key a generation held match, so no key of the current names (`{<q>}:g<N>:...`,
    `{<q>}:generation`...) does, whatever prefix `q` another deployment uses."""
    pattern = f"{glob('{' + prefix)}:g[0-9]*}}:*"
    kinds = "|".join(re.escape(kind) for kind in _LEGACY_KINDS)
    return pattern, re.compile(rf"\{{{re.escape(prefix)}:g[0-9]+\}}:(?:{kinds}).*", re.DOTALL)
