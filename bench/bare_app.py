"""The baseline for the webhook ack benchmark: aiohttp with nothing but a POST handler that answers 200.

Run: python bench/bare_app.py --port 8099 [--max-seconds 3600]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from aiohttp import web


async def receive(request: web.Request) -> web.Response:
    # Read the body and answer JSON like the bot does, so the difference measured is the bot's own work
    # (signature, parsing, the inbox insert) and not the HTTP plumbing both share.
    await request.read()
    return web.json_response({"status": "queued"})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def serve(port: int, max_seconds: float) -> None:
    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_post("/webhooks/webex", receive)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), timeout=max_seconds)
    except TimeoutError:
        print("bare_app: --max-seconds reached, exiting", file=sys.stderr)
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.max_seconds))


if __name__ == "__main__":
    main()
