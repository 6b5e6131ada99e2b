"""`voteledger`, the operator CLI: every command, and the module that holds it."""

from __future__ import annotations

import sys

import typer

from cli import agents, audit, demo, items, ledger, mcp, readmodels, seed
from cli.common import err

app = typer.Typer(help="Operate the vote ledger.", no_args_is_help=True)
app.command("migrate")(ledger.migrate_command)
app.command("project")(readmodels.project_command)
app.command("rebuild")(readmodels.rebuild_command)
app.command("verify")(readmodels.verify_command)
app.command("status")(readmodels.status_command)
app.add_typer(ledger.partitions_app, name="partitions")
app.add_typer(agents.app, name="agents")
app.add_typer(items.app, name="items")
app.command("seed")(seed.seed_command)
app.command("demo")(demo.demo_command)
app.command("mcp")(mcp.mcp_command)
app.command("audit")(audit.audit_command)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
