"""The watermark: the highest position P such that every event at or below P has been applied.

Read order is transaction order, not position order, so the last applied position promises
nothing about lower ones. Each batch tells what was drawn before it was read (`allocated`) and
that all of those belong to transactions with ids below its `bound`; once the reader has consumed
every event with a transaction id below that bound, every position up to `allocated` is applied
or was rolled back. Pure; see docs/architecture.md.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from events.store import Batch


@dataclass(slots=True)
class Watermark:
    value: int = 0
    _pending: deque[tuple[int, int]] = field(default_factory=deque)

    def observe(self, batch: Batch) -> int:
        """Take note of a batch about to be applied; returns the watermark after applying it."""
        if batch.complete:
            consumed_below = batch.snapshot_xmin
        elif batch.events:
            consumed_below = batch.events[-1].tx_id  # its own transaction may continue
        else:
            consumed_below = 0
        if not self._pending or self._pending[-1][1] < batch.allocated:
            self._pending.append((batch.bound, batch.allocated))
        while self._pending and self._pending[0][0] <= consumed_below:
            _, allocated = self._pending.popleft()
            self.value = max(self.value, allocated)
        return self.value
