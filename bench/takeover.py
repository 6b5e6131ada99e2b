"""How long a hot-standby projector takes to take over when the active one receives SIGTERM
(as a Kubernetes pod does when it is deleted or rolled).

    python -m devtools.devstack exec -- python -m bench.takeover [--rounds 5]

Two `voteledger project` workers run against the database; each round sends SIGTERM to the one
that holds the leases and measures, per projection, the time from the signal to the moment the
other one has taken the lease (a new fencing token in projection_leases); then it starts a fresh
standby and waits until it queues for the leases. The workers are idle (the ledger is empty), so
this is the path where a worker waits for events.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

VOTELEDGER = str(Path(sys.executable).with_name("voteledger"))
_LEASES = "SELECT projection, fence, holder FROM projection_leases ORDER BY projection"


@dataclass(frozen=True, slots=True)
class Round:
    released_ms: dict[str, float]  # SIGTERM -> the new holder's fence is taken


_LEASE_SESSIONS = "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'lease:%'"


def _standby_ready(conn: psycopg.Connection, projections: int) -> bool:
    """Both workers have a lease session per projection: one holds it, one waits for it."""
    row = conn.execute(_LEASE_SESSIONS).fetchone()
    return bool(row and row[0] == 2 * projections)


def _leases(conn: psycopg.Connection) -> dict[str, tuple[int, str]]:
    return {name: (fence, holder) for name, fence, holder in conn.execute(_LEASES)}


def _start_worker() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [VOTELEDGER, "project", "--metrics-port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_for(check: object, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.005)


def _one_round(conn: psycopg.Connection, workers: list[subprocess.Popen[bytes]]) -> Round:
    before = _leases(conn)
    holders = {holder.rsplit(":", 1)[1] for _, holder in before.values()}
    assert len(holders) == 1, f"the leases are split between workers: {before}"
    active = next(w for w in workers if str(w.pid) in holders)
    signalled = time.monotonic()
    active.send_signal(signal.SIGTERM)
    released: dict[str, float] = {}

    def taken() -> bool:
        for name, (fence, _) in _leases(conn).items():
            if name not in released and fence > before[name][0]:
                released[name] = (time.monotonic() - signalled) * 1000
        return len(released) == len(before)

    _wait_for(taken, 30)
    active.wait(timeout=30)
    workers.remove(active)
    workers.append(_start_worker())
    _wait_for(lambda: _standby_ready(conn, len(before)), 60)
    return Round(released)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.takeover", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    subprocess.run([VOTELEDGER, "migrate"], check=True, capture_output=True)
    workers = [_start_worker()]
    try:
        with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
            _wait_for(lambda: len(_leases(conn)) >= 2, 30)
            workers.append(_start_worker())
            _wait_for(lambda: _standby_ready(conn, len(_leases(conn))), 60)
            rounds = []
            for n in range(args.rounds):
                rounds.append(_one_round(conn, workers))
                print(
                    f"round {n + 1}: "
                    + ", ".join(
                        f"{name} {ms:.0f} ms" for name, ms in sorted(rounds[-1].released_ms.items())
                    )
                )
        every = [ms for r in rounds for ms in r.released_ms.values()]
        print(
            f"takeover after SIGTERM: median {statistics.median(every):.0f} ms, "
            f"max {max(every):.0f} ms over {len(every)} lease changes"
        )
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()


if __name__ == "__main__":
    main()
