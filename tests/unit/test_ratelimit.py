from __future__ import annotations

from commands.ratelimit import gcra


def test_burst_then_refusal_then_refill() -> None:
    """GCRA lets a burst through, refuses the next request, and refills at the rate."""
    interval, burst = 0.1, 5
    tat, now = 0.0, 100.0
    allowed = 0
    for _ in range(burst + 3):
        decision, tat = gcra(tat, now, interval, interval * burst)
        allowed += decision.allowed
    assert allowed == burst
    refused, _ = gcra(tat, now, interval, interval * burst)
    assert not refused.allowed and 0 < refused.retry_after <= interval + 1e-9
    later, _ = gcra(tat, now + interval, interval, interval * burst)
    assert later.allowed


def test_remaining_counts_down() -> None:
    """The remaining quota falls by one per allowed request."""
    tat, now = 0.0, 50.0
    seen = []
    for _ in range(3):
        decision, tat = gcra(tat, now, 1.0, 3.0)
        seen.append(decision.remaining)
    assert seen == [2, 1, 0]
