"""`voteledger demo`: a trickle of live votes through the command API, so the chart page moves.

It behaves like the agents it stands for: it registers a few agents with the operator token,
reads the catalogue from the query API, and votes over HTTP with the typed client (an
Idempotency-Key per vote, retried, rate limited like anyone's). Popular items get more votes, and
every so often another item turns hot, so the trending and today's charts change as you watch.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Literal, TypeVar

import typer

from cli.common import console, err, settings

if TYPE_CHECKING:
    from voteledger_client import Client

_HOT_SHARE = 0.3  # of votes go to the item that is hot at the moment
_HOT_FOR = 60  # votes before another item turns hot
Direction = Literal["up", "down", "none"]
_DIRECTIONS: tuple[Direction, ...] = ("up",) * 15 + ("down",) * 4 + ("none",)
_WAIT_FOR_APIS = 60.0  # seconds; then exit 1, and a supervisor starts it again
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Pick:
    item_id: str
    title: str


@dataclass
class Chooser:
    """Which item gets the next vote and which way: a pure function of its random generator."""

    items: list[Pick]
    rng: random.Random
    hot: Pick | None = None
    cast: int = 0
    weights: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        # The catalogue comes in rank order: item k gets weight 1/(k+2), as popular ones do.
        self.weights = [1.0 / (k + 2) for k in range(len(self.items))]

    def next(self) -> tuple[Pick, Direction]:
        if self.hot is None or self.cast % _HOT_FOR == 0:
            self.hot = self.rng.choice(self.items)
        self.cast += 1
        if self.rng.random() < _HOT_SHARE:
            return self.hot, "up"
        [item] = self.rng.choices(self.items, weights=self.weights)
        return item, self.rng.choice(_DIRECTIONS)


def demo_command(
    rate: Annotated[float, typer.Option(min=0.1, max=100, help="Votes per second")] = 3.0,
    agents: Annotated[int, typer.Option(min=1, max=1000, help="Agents that vote")] = 12,
    votes: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many votes (default: never)")
    ] = None,
    command_url: Annotated[str, typer.Option(help="The command API")] = "http://127.0.0.1:8000",
    query_url: Annotated[str, typer.Option(help="The query API")] = "http://127.0.0.1:8001",
    seed: Annotated[int | None, typer.Option(help="Random seed (default: a new one)")] = None,
) -> None:
    """Keep live votes coming through the command API, so the chart page moves (Ctrl-C stops)."""
    from voteledger_client import Client  # only this command needs the client

    token = settings().operator_token
    with Client(command_url, query_url, operator_token=token) as operator:
        keys = [_until_up(lambda: operator.create_agent("demo").api_key) for _ in range(agents)]
        catalogue = _until_up(lambda: _catalogue(operator))
    console.print(f"demo: {agents} agents voting {rate:g}/s on {len(catalogue)} items")
    chooser = Chooser(catalogue, random.Random(seed))
    voters = [Client(command_url, query_url, key) for key in keys]
    try:
        _trickle(voters, chooser, 1.0 / rate, votes)
    finally:
        for voter in voters:
            voter.close()


def _catalogue(client: Client) -> list[Pick]:
    """Every listed item, songs and tools, in rank order; waits while there is none."""
    items = [
        Pick(entry.item_id, entry.title)
        for item_type in ("song", "tool")
        for entry in client.iter_top(item_type, limit=200)
    ]
    if not items:
        raise LookupError("no items yet: `voteledger seed --demo` lists a catalogue")
    return items


def _until_up(action: Callable[[], T]) -> T:
    """`action`, tried again each second while the stack is starting or has nothing listed yet;
    after a minute the error is raised (exit 1: a supervisor starts the demo again)."""
    import httpx
    from voteledger_client import ProblemError

    deadline = time.monotonic() + _WAIT_FOR_APIS
    said = ""
    while True:
        try:
            return action()
        except (httpx.TransportError, ProblemError, LookupError) as exc:
            if isinstance(exc, ProblemError) and exc.status != 503:
                raise
            if time.monotonic() > deadline:
                raise
            if str(exc) != said:  # once per reason, not every second
                said = str(exc)
                err.print(f"demo: waiting: {said or type(exc).__name__}")
            time.sleep(1.0)


def _trickle(voters: list[Client], chooser: Chooser, every: float, limit: int | None) -> None:
    from voteledger_client import VoteledgerError

    cast = 0
    due = time.monotonic()
    while limit is None or cast < limit:
        due += every
        pick, direction = chooser.next()
        try:
            result = voters[cast % len(voters)].vote(pick.item_id, direction)
        except VoteledgerError as exc:  # a refused vote is reported; the trickle goes on
            err.print(f"demo: vote on {pick.item_id} failed: {exc}")
        else:
            if cast % 20 == 0:
                console.print(
                    f"demo: {cast + 1} votes; last {direction} on “{pick.title}” "
                    f"at position {result.position}"
                )
        cast += 1
        time.sleep(max(0.0, due - time.monotonic()))
