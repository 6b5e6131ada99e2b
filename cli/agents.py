"""`voteledger agents`: register agents, revoke their keys, list them (never their keys)."""

from __future__ import annotations

import json
import uuid

import typer
from rich.table import Table
from rich.text import Text

from cli.common import JsonOpt, console, err, with_command_pool
from commands.agents import Listed, NotFound, list_agents, register_agent, revoke_agent

app = typer.Typer(help="Agents and their API keys.", no_args_is_help=True)


@app.command("create")
def agents_create(name: str = "", as_json: JsonOpt = False) -> None:
    """Register an agent and print its API key (shown only once)."""
    agent = with_command_pool(lambda pool: register_agent(pool, name))
    if as_json:
        print(json.dumps({"agent_id": str(agent.agent_id), "api_key": agent.api_key}))
    else:
        console.print(f"agent_id: {agent.agent_id}\napi_key:  {agent.api_key}  (shown only once)")


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
    table = Table("agent_id", "name", "created", "revoked")
    for a in agents:
        revoked = f"{a.revoked_at or ''}"
        # A name is whatever its registrant chose: as Text it is shown as is, never read as
        # markup (`[/bold]` would raise, `[red]` would colour the rest of the row).
        table.add_row(str(a.agent_id), Text(a.name), f"{a.created_at:%Y-%m-%d %H:%M}", revoked)
    console.print(table)


def _agent_json(a: Listed) -> dict[str, object]:
    return {
        "agent_id": str(a.agent_id),
        "name": a.name,
        "created_at": a.created_at.isoformat(),
        "revoked_at": a.revoked_at.isoformat() if a.revoked_at else None,
    }
