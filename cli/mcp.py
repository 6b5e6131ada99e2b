"""`voteledger mcp`: the agents' MCP tools over stdio, for MCP clients that start their servers
as commands (desktop assistants, IDEs).

The tools reach the APIs over HTTP: VOTELEDGER_COMMAND_URL (default http://127.0.0.1:8000) and
VOTELEDGER_QUERY_URL (default http://127.0.0.1:8001), as the agent whose key is
VOTELEDGER_API_KEY or the content of --api-key-file. It needs no database and reads none of the
services' other settings. stdout carries the protocol alone: logs go to stderr.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from cli.common import err
from infra.settings import SettingsError, api_url

_KEY_FILE_MAX_BYTES = 4096

ApiKeyFile = Annotated[
    Path | None,
    typer.Option(
        "--api-key-file",
        help="A file holding the agent's API key (instead of VOTELEDGER_API_KEY).",
        exists=True,
        dir_okay=False,
        readable=True,
    ),
]


def mcp_command(api_key_file: ApiKeyFile = None) -> None:
    """Serve the agents' MCP tools over stdio: votes, charts and items, as one agent."""
    api_key = _api_key(api_key_file)
    try:
        command_url = api_url(os.environ, "VOTELEDGER_COMMAND_URL", "VOTELEDGER_COMMAND_PORT", 8000)
        query_url = api_url(os.environ, "VOTELEDGER_QUERY_URL", "VOTELEDGER_QUERY_PORT", 8001)
    except SettingsError as exc:
        err.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(2)
    # Before the SDK's own logging setup, which then leaves the root logger alone.
    logging.basicConfig(
        stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    # Imported here: the SDK takes a while to import, and no other command needs it.
    import anyio

    from mcp_tools.stdio import serve_stdio

    anyio.run(serve_stdio, command_url, query_url, api_key)


def _api_key(path: Path | None) -> str:
    """The key from the file or the environment, or exit 2 saying what is missing."""
    if path is not None:
        raw = path.read_bytes()[: _KEY_FILE_MAX_BYTES + 1].decode("utf-8", "replace")
        source = str(path)
    else:
        raw, source = os.environ.get("VOTELEDGER_API_KEY", ""), "VOTELEDGER_API_KEY"
    key = raw.strip()
    if not key:
        err.print("[red]no API key:[/] set VOTELEDGER_API_KEY or pass --api-key-file")
        raise typer.Exit(2)
    if len(key) > _KEY_FILE_MAX_BYTES or not key.isprintable() or not key.isascii() or " " in key:
        err.print(f"[red]{source} does not hold an API key[/] (one line of printable ASCII)")
        raise typer.Exit(2)
    return key
