"""`voteledger agents`: register agents, revoke their keys, list them (never their keys)."""

from __future__ import annotations

import json
import re
import uuid
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from cli.common import JsonOpt, console, err, settings, with_command_pool
from commands.agents import (
    Listed,
    NotFound,
    OwnerLimit,
    list_agents,
    register_agent,
    revoke_agent,
)
from events.types import ITEM_ID_MAX_LENGTH, ITEM_ID_PATTERN

app = typer.Typer(help="Agents and their API keys.", no_args_is_help=True)


OwnerOpt = Annotated[
    str | None,
    typer.Option(help="Whose agent it is (default: the agent is its own owner)"),
]


def _valid_owner(owner: str | None) -> str | None:
    """The owner as the API accepts it (a catalogue-id-like name), or exit 2."""
    if owner is None or (len(owner) <= ITEM_ID_MAX_LENGTH and re.fullmatch(ITEM_ID_PATTERN, owner)):
        return owner
    err.print("[red]--owner must be letters, digits and . _ : ~ - (at most 128)[/]")
    raise typer.Exit(2)


@app.command("create")
def agents_create(name: str = "", owner: OwnerOpt = None, as_json: JsonOpt = False) -> None:
    """Register an agent and print its API key (shown only once)."""
    owner = _valid_owner(owner)
    cap = settings().max_agents_per_owner
    try:
        agent = with_command_pool(lambda pool: register_agent(pool, name, owner, cap))
    except OwnerLimit as exc:
        err.print(Text(str(exc), style="red"))
        raise typer.Exit(1)
    if as_json:
        print(
            json.dumps(
                {"agent_id": str(agent.agent_id), "api_key": agent.api_key, "owner": agent.owner}
            )
        )
    else:
        console.print(
            f"agent_id: {agent.agent_id}\nowner:    {agent.owner}\n"
            f"api_key:  {agent.api_key}  (shown only once)"
        )


@app.command("revoke")
def agents_revoke(agent_id: uuid.UUID) -> None:
    """Revoke an agent's API key. Its votes stand."""
    try:
        position = with_command_pool(lambda pool: revoke_agent(pool, agent_id))
    except NotFound:
        err.print(f"[red]no agent {agent_id}[/]")
        raise typer.Exit(1)
    console.print("revoked" if position is not None else "already revoked")


@app.command("list")
def agents_list(as_json: JsonOpt = False) -> None:
    """List agents (never their keys)."""
    agents = with_command_pool(list_agents)
    if as_json:
        print(json.dumps([_agent_json(a) for a in agents]))
        return
    table = Table("agent_id", "name", "owner", "created", "revoked")
    for a in agents:
        revoked = f"{a.revoked_at or ''}"
        # A name is whatever its registrant chose: as Text it is shown as is, never read as
        # markup (`[/bold]` would raise, `[red]` would colour the rest of the row).
        created = f"{a.created_at:%Y-%m-%d %H:%M}"
        table.add_row(str(a.agent_id), Text(a.name), Text(a.owner), created, revoked)
    console.print(table)


def _agent_json(a: Listed) -> dict[str, object]:
    return {
        "agent_id": str(a.agent_id),
        "name": a.name,
        "owner": a.owner,
        "created_at": a.created_at.isoformat(),
        "revoked_at": a.revoked_at.isoformat() if a.revoked_at else None,
    }
