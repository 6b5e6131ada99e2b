"""A worker's own health report: what it says while it runs a projection, and after it hands the
projection to another worker."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from projections.health import Health, Reporter, Stall


def test_a_worker_that_steps_down_reports_nothing_it_saw_as_the_holder() -> None:
    health = Health()
    reporter = Reporter("redis", health)
    progress = reporter.progress
    progress.head, progress.watermark, progress.moved_at = 500, 100, time.time() - 3600
    assert "no progress" in health.problems()["redis"]
    progress.stall = Stall(101, "cannot fold", datetime.now(UTC))
    assert "stalled at position 101" in health.problems()["redis"]

    reporter.stepped_down()
    assert health.problems() == {}
    # As a standby it sees no head move, so it does not turn unhealthy later either.
    assert health.problems(now=time.time() + 3600) == {}
