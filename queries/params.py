"""What the query API's routes (queries.routes, queries.history, queries.explain) take alike: the
read side, and an item id in the path."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path
from starlette.requests import HTTPConnection

from events.types import ITEM_ID_MAX_LENGTH, ITEM_ID_PATTERN
from queries.side import ReadSide


async def _read_side(connection: HTTPConnection) -> ReadSide:
    side: ReadSide = connection.app.state.side
    return side


Side = Annotated[ReadSide, Depends(_read_side)]
ItemId = Annotated[str, Path(min_length=1, max_length=ITEM_ID_MAX_LENGTH, pattern=ITEM_ID_PATTERN)]
