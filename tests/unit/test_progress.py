"""Waiting for a read model's position (queries.progress.Progress)."""

from __future__ import annotations

import asyncio

from queries.progress import Progress


async def test_a_move_wakes_only_the_waiters_it_satisfies() -> None:
    progress = Progress()
    woken: list[int] = []

    async def wait(position: int) -> None:
        await progress.wait_for(position, 5)
        woken.append(position)

    tasks = [asyncio.create_task(wait(p)) for p in (30, 10, 20, 10)]
    await asyncio.sleep(0)
    progress.moved(15)
    await asyncio.sleep(0)
    assert sorted(woken) == [10, 10]
    progress.moved(25)
    await asyncio.sleep(0)
    assert sorted(woken) == [10, 10, 20]
    progress.moved(30)
    await asyncio.gather(*tasks)
    assert sorted(woken) == [10, 10, 20, 30]


async def test_a_position_reached_or_no_time_returns_at_once() -> None:
    progress = Progress()
    progress.moved(7)
    await asyncio.wait_for(progress.wait_for(7, 60), 0.5)
    await asyncio.wait_for(progress.wait_for(8, 0), 0.5)


async def test_waiters_that_time_out_do_not_pile_up() -> None:
    """A thousand waiters for a position never reached leave nothing much behind."""
    progress = Progress()
    await asyncio.gather(*(progress.wait_for(10**9, 0.01) for _ in range(1000)))
    assert progress.position == 0
    assert len(progress._heap) <= 200


async def test_a_cancelled_waiter_is_not_woken_later() -> None:
    progress = Progress()
    task = asyncio.create_task(progress.wait_for(5, 60))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    progress.moved(5)  # pops the cancelled entry without error
    assert progress._heap == []
