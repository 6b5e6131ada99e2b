"""Open-loop vote load with read-your-write lag, for `bench.run` (the "live lag" scenario).

Sends votes at a fixed rate (paced by a schedule, not by responses, so a slow server cannot slow
the load down) over a pool of keep-alive HTTP/1.1 connections. For every vote that recorded an
event (201) it measures the time from the vote's response until

  * the query API answers `GET /api/v1/items/{id}?min_position=P&wait_ms=5000` with 200, and
  * the projector publishes a watermark >= P on its Redis pub/sub channel.

Prints one JSON object. Raw HTTP over asyncio streams keeps the client's own cost low: it shares
the machine with the servers it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import random
import resource
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import redis.asyncio as aioredis


class HttpError(Exception):
    pass


class Closed(HttpError):
    """The server closed an idle keep-alive connection before answering."""


class Connection:
    """One keep-alive HTTP/1.1 connection; responses must carry Content-Length."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def request(self, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise Closed("connection closed")
        status = int(status_line.split(b" ", 2)[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
            elif name.lower() == b"transfer-encoding":
                raise HttpError("chunked responses are not supported")
        return status, await self.reader.readexactly(length) if length else b""

    def close(self) -> None:
        self.writer.close()


class Pool:
    """At most `size` connections to one host; a failed connection is dropped, not reused."""

    def __init__(self, url: str, size: int) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.size, self.opened, self.peak, self.waited = size, 0, 0, 0
        self.idle: asyncio.LifoQueue[Connection] = asyncio.LifoQueue()

    async def _connect(self) -> Connection:
        self.opened += 1
        self.peak = max(self.peak, self.opened)
        try:
            return Connection(*await asyncio.open_connection(self.host, self.port))
        except BaseException:
            self.opened -= 1
            raise

    async def request(self, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
        reused = not (self.idle.empty() and self.opened < self.size)
        if reused:
            self.waited += self.idle.empty()  # every connection busy: queued here, in the client
            conn = await self.idle.get()
        else:
            conn = await self._connect()
        while True:
            try:
                reply = await conn.request(head, body)
                self.idle.put_nowait(conn)
                return reply
            except BaseException as exc:
                conn.close()
                self.opened -= 1
                # A reused connection the server had closed (idle keep-alive timeout): the request
                # never reached it, so send it once more on a fresh one.
                stale = (Closed, ConnectionResetError, BrokenPipeError)
                if not (reused and isinstance(exc, stale)):
                    raise
                reused = False
                conn = await self._connect()

    def close(self) -> None:
        while not self.idle.empty():
            self.idle.get_nowait().close()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))], 3)


async def main(args: argparse.Namespace, keys: list[str], items: list[str]) -> dict[str, object]:
    rng = random.Random()  # seeded from the OS: each run votes differently
    votes = Pool(args.command_url, args.connections)
    reads = Pool(args.query_url, args.read_connections)
    statuses: Counter[int] = Counter()
    read_statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    vote_ms: list[float] = []  # from the scheduled send time: includes any queueing here
    answers: list[float] = []  # when each vote was answered
    recorded: list[tuple[float, int]] = []  # (answered, position) of votes that made an event
    query_lag: list[float] = []
    watermarks: list[tuple[int, float]] = []  # (watermark, arrival), in arrival order

    subscriber = aioredis.Redis.from_url(args.redis_url)
    pubsub = subscriber.pubsub()
    await pubsub.subscribe(args.channel)

    async def follow() -> None:
        async for message in pubsub.listen():
            if message["type"] == "message":
                watermarks.append((int(message["data"]), time.perf_counter()))

    async def visible(item: str, position: int, answered: float) -> None:
        head = (
            f"GET /api/v1/items/{item}?min_position={position}&wait_ms=5000 HTTP/1.1\r\n"
            f"Host: {reads.host}\r\n\r\n"
        ).encode()
        try:
            status, _ = await reads.request(head)
        except (OSError, HttpError, asyncio.IncompleteReadError) as exc:
            errors[f"query: {type(exc).__name__}: {exc}"[:100]] += 1
            return
        read_statuses[status] += 1
        if status == 200:
            query_lag.append((time.perf_counter() - answered) * 1000)

    async def vote(due: float) -> None:
        item = rng.choice(items)
        body = json.dumps({"item_id": item, "vote": rng.choice(("up", "down", "none"))}).encode()
        head = (
            f"POST /api/v1/vote HTTP/1.1\r\nHost: {votes.host}\r\n"
            f"Authorization: Bearer {rng.choice(keys)}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        try:
            status, reply = await votes.request(head, body)
        except (OSError, HttpError, asyncio.IncompleteReadError) as exc:
            errors[f"vote: {type(exc).__name__}: {exc}"[:100]] += 1
            return
        answered = time.perf_counter()
        statuses[status] += 1
        answers.append(answered)
        vote_ms.append((answered - due) * 1000)
        if status == 201:
            position = int(json.loads(reply)["position"])
            recorded.append((answered, position))
            await visible(item, position, answered)

    follower = asyncio.create_task(follow())
    tasks: set[asyncio.Task[None]] = set()
    total = int(args.rate * args.duration)
    skipped = 0
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    for i in range(total):
        due = started + i / args.rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(tasks) >= args.max_in_flight:  # far behind: skip this one, keep the schedule
            skipped += 1
            continue
        task = asyncio.create_task(vote(due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    window = time.perf_counter() - started
    if tasks:
        _, late = await asyncio.wait(tasks, timeout=args.drain)
        for task in late:
            task.cancel()
        if late:
            errors["unfinished after the drain timeout"] += len(late)
    await asyncio.sleep(0.2)  # the last watermarks
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    elapsed = time.perf_counter() - started
    follower.cancel()
    await pubsub.aclose()
    await subscriber.aclose()
    votes.close()
    reads.close()
    if skipped:
        errors["not sent: over --max-in-flight"] += skipped

    # Redis lag: the first watermark at or above the vote's position.
    marks, highest = [], 0
    for w, _ in watermarks:  # they only grow; keep the list sorted should one ever repeat
        highest = max(highest, w)
        marks.append(highest)
    # Negative when the watermark arrived before the vote's response did (a slow response).
    redis_lag: list[float] = []
    for answered, position in recorded:
        k = bisect.bisect_left(marks, position)
        if k < len(marks):
            redis_lag.append((watermarks[k][1] - answered) * 1000)
    in_window = sum(1 for t in answers if t - started <= window)
    cpu = sum(getattr(cpu_after, f) - getattr(cpu_before, f) for f in ("ru_utime", "ru_stime"))
    return {
        "target_rate": args.rate,
        "scheduled": total,
        "answered": len(answers),
        "answered_in_window": in_window,
        "achieved_rate": round(in_window / window, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "non_2xx": sum(v for k, v in statuses.items() if not 200 <= k < 300),
        "vote_p50_ms": percentile(vote_ms, 50),
        "vote_p99_ms": percentile(vote_ms, 99),
        "events_recorded": len(recorded),
        "query_statuses": {str(k): v for k, v in sorted(read_statuses.items())},
        "query_lag_samples": len(query_lag),
        "query_lag_p50_ms": percentile(query_lag, 50),
        "query_lag_p99_ms": percentile(query_lag, 99),
        "redis_lag_samples": len(redis_lag),
        "redis_lag_p50_ms": percentile(redis_lag, 50),
        "redis_lag_p99_ms": percentile(redis_lag, 99),
        "redis_watermark_before_response": sum(1 for lag in redis_lag if lag < 0),
        "peak_connections": {"command": votes.peak, "query": reads.peak},
        "queued_in_client": {"command": votes.waited, "query": reads.waited},
        "client_cpu_pct": round(100 * cpu / elapsed),
        "errors": dict(errors),
    }


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--command-url", required=True)
    p.add_argument("--query-url", required=True)
    p.add_argument("--redis-url", required=True)
    p.add_argument("--channel", required=True, help="the projector's pub/sub channel")
    p.add_argument("--keys", required=True, help="file of API keys, one a line")
    p.add_argument("--items", required=True, help="file of item ids, one a line")
    p.add_argument("--rate", type=float, default=1000.0, help="votes per second")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    p.add_argument("--connections", type=int, default=64, help="to the command API")
    p.add_argument("--read-connections", type=int, default=2000, help="to the query API")
    p.add_argument("--max-in-flight", type=int, default=1000, help="votes; later ones skipped")
    p.add_argument("--drain", type=float, default=10.0, help="seconds to wait for stragglers")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse(sys.argv[1:])
    for url in (args.command_url, args.query_url, args.redis_url):
        if urlsplit(url).hostname != "127.0.0.1":
            sys.exit(f"refusing to load anything but 127.0.0.1: {url}")
    try:
        from uvloop import run as run_loop
    except ImportError:
        run_loop = asyncio.run  # type: ignore[assignment]
    keys = Path(args.keys).read_text().split()
    items = Path(args.items).read_text().split()
    print(json.dumps(run_loop(main(args, keys, items))), flush=True)
