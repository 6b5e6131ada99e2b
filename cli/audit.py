"""`voteledger audit ITEM`: who votes an item up or down right now, agent by agent, and where each
owner stands (its agents, their ups and downs, and its sign), largest owners first."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from cli.common import JsonOpt, console, err, with_command_pool
from commands.audit import AuditedVote, OwnerSummary, UnknownItem, all_item_votes, summarize


def audit_command(
    item_id: Annotated[str, typer.Argument(help="The item's catalogue id")],
    as_json: JsonOpt = False,
) -> None:
    """Audit an item's current votes: each agent's vote with its owner, then a summary per owner."""
    try:
        votes = with_command_pool(lambda pool: all_item_votes(pool, item_id))
    except UnknownItem:
        err.print(Text(f"no item {item_id!r} in the catalogue", style="red"))
        raise typer.Exit(1)
    owners = summarize(votes)
    if as_json:
        body = {
            "item_id": item_id,
            "votes": [_vote_json(v) for v in votes],
            "owners": [_owner_json(o) for o in owners],
        }
        print(json.dumps(body))
        return
    console.print(_votes_table(votes))
    console.print(_owners_table(owners))
    up = sum(o.up for o in owners)
    down = sum(o.down for o in owners)
    console.print(
        f"{len(votes)} votes ({up} up, {down} down) from {len(owners)} owners; "
        f"owners' signs sum to {sum(o.sign for o in owners):+d}"
    )


def _votes_table(votes: list[AuditedVote]) -> Table:
    table = Table("agent_id", "owner", "vote", "cast at", "revoked", title="votes")
    for v in votes:
        cast_at = f"{v.cast_at:%Y-%m-%d %H:%M:%S}" if v.cast_at else ""
        revoked = "revoked" if v.revoked else ""
        table.add_row(str(v.agent_id), Text(v.owner), v.vote, cast_at, revoked)
    return table


def _owners_table(owners: list[OwnerSummary]) -> Table:
    table = Table("owner", "agents", "up", "down", "sign", title="owners")
    for o in owners:
        table.add_row(Text(o.owner), str(o.agents), str(o.up), str(o.down), f"{o.sign:+d}")
    return table


def _vote_json(v: AuditedVote) -> dict[str, object]:
    return {
        "agent_id": str(v.agent_id),
        "owner": v.owner,
        "vote": v.vote,
        "cast_at": v.cast_at.isoformat() if v.cast_at else None,
        "revoked": v.revoked,
    }


def _owner_json(o: OwnerSummary) -> dict[str, object]:
    return {"owner": o.owner, "agents": o.agents, "up": o.up, "down": o.down, "sign": o.sign}
