"""The vote audit's per-owner summary (commands/audit.summarize): pure, checked against a plain
count of the same votes."""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from commands.audit import AuditedVote, summarize

_votes = st.lists(
    st.tuples(
        st.sampled_from(["acme", "solo-1", "solo-2", "zeta"]), st.sampled_from(["up", "down"])
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(_votes)
def test_each_owner_is_summed_once_largest_first(pairs: list[tuple[str, str]]) -> None:
    votes = [AuditedVote(uuid.uuid4(), owner, vote, None, False) for owner, vote in pairs]  # type: ignore[arg-type]
    summary = summarize(votes)
    assert [s.owner for s in summary] == sorted(
        {o for o, _ in pairs}, key=lambda o: (-sum(p == o for p, _ in pairs), o)
    )
    for s in summary:
        ups = sum(1 for o, v in pairs if o == s.owner and v == "up")
        downs = sum(1 for o, v in pairs if o == s.owner and v == "down")
        assert (s.agents, s.up, s.down) == (ups + downs, ups, downs)
        assert s.sign == (ups > downs) - (ups < downs)


def test_an_owner_split_evenly_stands_at_zero() -> None:
    votes = [AuditedVote(uuid.uuid4(), "acme", v, None, False) for v in ("up", "down")]  # type: ignore[arg-type]
    [acme] = summarize(votes)
    assert (acme.agents, acme.up, acme.down, acme.sign) == (2, 1, 1, 0)
