"""Webhook load generator for e2e.py and memory.py: pre-signed bodies, open loop at a fixed rate or closed loop.

Run: python bench/loadgen.py --url URL --bodies FILE --out FILE (--rate R | --concurrency C) [--max-seconds T]
The bodies file holds `id<TAB>signature<TAB>body` lines (see _harness.write_bodies). The output is JSON with
one row per request: [event id, scheduled, sent, answered (CLOCK_MONOTONIC seconds), HTTP status or -1].

Open loop (--rate) sends request i at start + i/rate whether or not earlier ones were answered, as Webex does,
so a slow server shows up as latency instead of quietly lowering the offered rate. wrk is used instead where
only the ack rate matters: this generator tops out at a few thousand requests/s, far below bare aiohttp.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import aiohttp

Row = tuple[str, float, float, float, int]


def read_bodies(path: Path) -> list[tuple[str, str, bytes]]:
    out = []
    for line in path.read_text().splitlines():
        event_id, signature, body = line.split("\t", 2)
        out.append((event_id, signature, body.encode()))
    return out


async def post(
    session: aiohttp.ClientSession, url: str, item: tuple[str, str, bytes], scheduled: float
) -> Row:
    event_id, signature, body = item
    sent = time.monotonic()
    try:
        async with session.post(
            url, data=body, headers={"Content-Type": "application/json", "X-Spark-Signature": signature}
        ) as response:
            await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError):
        status = -1
    return (event_id, scheduled, sent, time.monotonic(), status)


async def open_loop(
    url: str, items: list[tuple[str, str, bytes]], rate: float, max_seconds: float
) -> list[Row]:
    # limit bounds the sockets, not the offered rate: requests beyond it wait for a connection (and that
    # wait is counted, because latency is measured from the scheduled time too).
    connector = aiohttp.TCPConnector(limit=512)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.monotonic()
        tasks = []
        for i, item in enumerate(items):
            scheduled = start + i / rate
            if scheduled - start > max_seconds:
                break
            delay = scheduled - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(post(session, url, item, scheduled)))
        return list(await asyncio.gather(*tasks))


async def closed_loop(
    url: str, items: list[tuple[str, str, bytes]], concurrency: int, max_seconds: float
) -> list[Row]:
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    queue = iter(items)
    rows: list[Row] = []
    deadline = time.monotonic() + max_seconds

    async def client(session: aiohttp.ClientSession) -> None:
        for item in queue:
            if time.monotonic() > deadline:
                return
            rows.append(await post(session, url, item, time.monotonic()))

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--bodies", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--rate", type=float, help="open loop: requests per second")
    mode.add_argument("--concurrency", type=int, help="closed loop: requests in flight")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="stop sending after this long")
    args = parser.parse_args()
    if not args.url.startswith(("http://127.0.0.1", "http://localhost")):
        parser.error("benchmark traffic goes to loopback only")
    items = read_bodies(args.bodies)
    if args.rate:
        rows = asyncio.run(open_loop(args.url, items, args.rate, args.max_seconds))
    else:
        rows = asyncio.run(closed_loop(args.url, items, args.concurrency, args.max_seconds))
    args.out.write_text(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
