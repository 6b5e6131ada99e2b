"""Typed client for the voteledger APIs: `Client` (blocking) and `AsyncClient` (asyncio).

Both send the same calls (`voteledger_client.calls`) and read the same answers
(`voteledger_client.core`); they differ only in how they wait.
"""

from voteledger_client.aio import AsyncClient
from voteledger_client.errors import ProblemError, UnexpectedResponse, VoteledgerError
from voteledger_client.models import (
    Agent,
    ChartDigest,
    Component,
    DailySeries,
    DayNet,
    Detail,
    Direction,
    Entry,
    ExplainSort,
    Explanation,
    HistoryDay,
    Item,
    ItemHistory,
    ItemType,
    Page,
    Placing,
    Problem,
    RateLimit,
    Sort,
    VoteAndRead,
    VoteResult,
)
from voteledger_client.retry import RetryOn, RetryPolicy
from voteledger_client.sync import Client

__all__ = [
    "Agent",
    "AsyncClient",
    "ChartDigest",
    "Client",
    "Component",
    "DailySeries",
    "DayNet",
    "Detail",
    "Direction",
    "Entry",
    "ExplainSort",
    "Explanation",
    "HistoryDay",
    "Item",
    "ItemHistory",
    "ItemType",
    "Page",
    "Placing",
    "Problem",
    "ProblemError",
    "RateLimit",
    "RetryOn",
    "RetryPolicy",
    "Sort",
    "UnexpectedResponse",
    "VoteAndRead",
    "VoteResult",
    "VoteledgerError",
]
