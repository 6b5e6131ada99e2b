from __future__ import annotations

import uuid
from typing import Any

import psycopg

from events import store
from events.store import Checkpoint
from events.types import AgentRegistered, AgentRevoked, Event, ItemListed, VoteCast
from infra.settings import Settings


def _item() -> ItemListed:
    return ItemListed(item_id=f"song-{uuid.uuid4().hex[:8]}", item_type="song", title="t")


async def _head(conn: psycopg.AsyncConnection) -> Checkpoint:
    """Read to the current end of the ledger; returns the checkpoint there."""
    checkpoint = Checkpoint()
    while True:
        batch = await store.read_batch(conn, checkpoint, 1000)
        checkpoint = batch.checkpoint or checkpoint
        if batch.complete:
            return checkpoint


async def test_appended_events_read_back_in_order(database_url: str) -> None:
    """Events appended in one transaction read back decoded, in position order."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as reader:
        start = await _head(reader)
        events = [_item() for _ in range(5)]
        async with await psycopg.AsyncConnection.connect(database_url) as writer:
            positions = [(await store.append(writer, e))[0] for e in events]
            await writer.commit()
        batch = await store.read_batch(reader, start, 100)
    assert [r.event for r in batch.events] == events
    assert [r.position for r in batch.events] == positions
    assert batch.complete and batch.allocated >= positions[-1]


async def test_events_appended_in_one_statement_keep_their_order_and_keys(
    database_url: str,
) -> None:
    """`append_all_later` gives each event, of any type, its position in the order given, and
    the same key columns as a single append."""
    agent = uuid.uuid4()
    item = _item()
    events: list[Event] = [
        AgentRegistered(agent_id=agent, name="a"),
        item,
        *(
            VoteCast(agent, item.item_id, "song", direction=d, previous=p)
            for d, p in [("up", "none"), ("down", "up"), ("none", "down")]
        ),
        AgentRevoked(agent_id=agent),
    ]
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as reader:
        start = await _head(reader)
        async with await psycopg.AsyncConnection.connect(database_url) as writer:
            positions = await store.positions(await store.append_all_later(writer, events))
            await writer.commit()
        batch = await store.read_batch(reader, start, 100)
        keys = await (
            await reader.execute(
                "SELECT event_type, agent_id, item_id FROM events WHERE position = ANY(%s)"
                " ORDER BY position",
                (positions,),
            )
        ).fetchall()
    assert [r.event for r in batch.events] == events
    assert [r.position for r in batch.events] == positions
    assert keys == [
        ("AgentRegistered", agent, None),
        ("ItemListed", None, item.item_id),
        *[("VoteCast", agent, item.item_id)] * 3,
        ("AgentRevoked", agent, None),
    ]


def _plan_nodes(plan: dict[str, Any]) -> list[str]:
    return [plan["Node Type"]] + [n for p in plan.get("Plans", []) for n in _plan_nodes(p)]


async def test_reader_reads_in_index_order_after_a_bulk_load(isolated: Settings) -> None:
    """After a bulk load in one transaction and an ANALYZE, the planner expects the batch query
    to match almost nothing and would sort the rest of the ledger for every batch; a configured
    reader gets the ordered index scans instead, and still the right batch."""
    url = isolated.database_url
    events = [(_item(), None) for _ in range(20_000)]
    async with await psycopg.AsyncConnection.connect(url) as writer:
        await store.append_many(writer, events)
        await writer.commit()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("ANALYZE events")
        row = await (
            await conn.execute(
                "SELECT tx_id::text, position FROM events ORDER BY position LIMIT 1 OFFSET 9999"
            )
        ).fetchone()
        assert row is not None
        middle = Checkpoint(int(row[0]), row[1])
        params = {"tx_id": str(middle.tx_id), "position": middle.position, "limit": 1000}
        explain = "EXPLAIN (FORMAT JSON) " + store._READ_BATCH
        plain = await (await conn.execute(explain, params)).fetchone()
        await store.configure_reader(conn)
        configured = await (await conn.execute(explain, params)).fetchone()
        batch = await store.read_batch(conn, middle, 1000)
        held = await (await conn.execute("EXPLAIN (FORMAT JSON) " + store._HELD_BACK)).fetchone()
    assert held is not None and "Seq Scan" not in _plan_nodes(held[0][0]["Plan"])
    assert plain is not None and configured is not None
    assert "Sort" in _plan_nodes(plain[0][0]["Plan"])  # the trap this guards against
    assert "Sort" not in _plan_nodes(configured[0][0]["Plan"])
    assert [r.position for r in batch.events] == list(
        range(middle.position + 1, middle.position + 1001)
    )


async def test_held_back_sees_a_later_commit_behind_an_open_transaction(
    database_url: str,
) -> None:
    """While an older transaction stays open, events committed after it are held back from
    readers, and held_back says so; once it ends, nothing is."""
    async with (
        await psycopg.AsyncConnection.connect(database_url, autocommit=True) as reader,
        await psycopg.AsyncConnection.connect(database_url) as slow,
        await psycopg.AsyncConnection.connect(database_url) as fast,
    ):
        await store.configure_reader(reader)
        await store.append(slow, _item())  # takes a transaction id and stays open
        await store.append(fast, _item())
        await fast.commit()
        assert await store.held_back(reader)
        await slow.commit()
        assert not await store.held_back(reader)


async def test_reader_never_passes_an_open_transaction(database_url: str) -> None:
    """A later commit is held back until an earlier-started open transaction finishes."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as reader:
        start = await _head(reader)
        async with (
            await psycopg.AsyncConnection.connect(database_url) as slow,
            await psycopg.AsyncConnection.connect(database_url) as fast,
        ):
            slow_event, fast_event = _item(), _item()
            await slow.execute("SELECT pg_current_xact_id()")  # slow's transaction starts first
            await fast.execute("SELECT pg_current_xact_id()")
            fast_position, _ = await store.append(fast, fast_event)
            slow_position, _ = await store.append(slow, slow_event)  # drawn later, lower xid
            await fast.commit()

            held = await store.read_batch(reader, start, 100)
            assert held.events == []  # fast committed, but slow (lower xid) is still open
            assert held.snapshot_xmin <= held.bound

            await slow.commit()
            batch = await store.read_batch(reader, start, 100)
    # Read order is transaction order: slow's event first although its position is higher.
    assert [r.event for r in batch.events] == [slow_event, fast_event]
    assert slow_position > fast_position


async def test_rolled_back_events_are_never_read(database_url: str) -> None:
    """An event whose transaction rolled back leaves a hole in positions, not a read."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as reader:
        start = await _head(reader)
        async with await psycopg.AsyncConnection.connect(database_url) as writer:
            await store.append(writer, _item())
            await writer.rollback()
            kept = _item()
            await store.append(writer, kept)
            await writer.commit()
        batch = await store.read_batch(reader, start, 100)
    assert [r.event for r in batch.events] == [kept]


async def test_batches_resume_from_their_checkpoint(database_url: str) -> None:
    """Reading in small batches returns every event exactly once."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as reader:
        start = await _head(reader)
        events = [_item() for _ in range(7)]
        async with await psycopg.AsyncConnection.connect(database_url) as writer:
            count = await store.append_many(writer, ((e, None) for e in events))
            await writer.commit()
        assert count == 7
        seen, checkpoint = [], start
        while True:
            batch = await store.read_batch(reader, checkpoint, 3)
            seen.extend(r.event for r in batch.events)
            checkpoint = batch.checkpoint or checkpoint
            if batch.complete:
                break
    assert seen == events


async def test_watermark_never_covers_a_running_writer(database_url: str) -> None:
    """A position drawn by a transaction still open is not released, even when nothing else runs
    (PostgreSQL's snapshot xmax would release it; the reader's own bound does not)."""
    from projections.watermark import Watermark

    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as reader:
        start = await _head(reader)
        tracker = Watermark()
        tracker.observe(await store.read_batch(reader, start, 100))
        async with await psycopg.AsyncConnection.connect(database_url) as open_writer:
            position, _ = await store.append(open_writer, _item())
            for _ in range(3):
                assert tracker.observe(await store.read_batch(reader, start, 100)) < position
            await open_writer.commit()
        batch = await store.read_batch(reader, start, 100)
        tracker.observe(batch)
        assert (
            tracker.observe(await store.read_batch(reader, batch.checkpoint or start, 100))
            >= position
        )
