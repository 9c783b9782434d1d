"""The tests' fake Webex API in its own process, plus a loopback control endpoint for the benchmarks.

Run: python bench/fakeserver.py [--refuse-identity] [--max-seconds 3600]
Prints one JSON line {"api": ..., "control": ..., "token": ...} and serves until SIGTERM (or --max-seconds).

Control (JSON): POST /control/messages {count, keep}  -> {"envelopes": [...]}   (messages/created, group space)
                POST /control/delay {method, path, seconds}   stall matching calls (paths relative to /v1)
                POST /control/fail {method, path, status, times}
                POST /control/clear                           drop delays and faults
                GET  /control/replies?after=N                 [[parentId, CLOCK_MONOTONIC seconds], ...]
                GET  /control/stats
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import html
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# E402 below: these imports need the repository put on sys.path first, above.
from tests.fakewebex import FakeWebex, webex_id  # noqa: E402


def sample_texts() -> list[str]:
    """The labelled triage messages: realistic text, and a mix of fixes, clarifications and misses."""
    texts = []
    for name in ("triage_public.jsonl", "triage_holdout.jsonl"):
        path = ROOT / "tests" / "data" / name
        texts += [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
    return texts


class BenchFake(FakeWebex):
    """FakeWebex that forgets what a benchmark no longer needs, so 100k events do not grow the fake itself."""

    def __init__(self) -> None:
        super().__init__()
        # The tests inspect every request; a benchmark only needs the reply times below.
        self.requests = collections.deque(maxlen=64)  # type: ignore[assignment]
        self.replies: list[tuple[str | None, float]] = []
        self.user = self.add_person("alice@example.com", "Alice Doe")
        self.room = self.add_room("group", "Helpdesk bench")
        self.texts = sample_texts()
        self.minted = 0

    async def _post_message(self, request: web.Request) -> web.Response:
        response = await super()._post_message(request)
        if response.status == 200:
            # CLOCK_MONOTONIC is system-wide on Linux, so the load generator's send times compare directly.
            posted_id, posted = next(reversed(self.messages.items()))
            self.replies.append((posted.get("parentId"), time.monotonic()))
            # Neither the reply nor the message it answers is read again.
            del self.messages[posted_id]
            if posted.get("parentId"):
                self.messages.pop(posted["parentId"], None)
        return response

    def mint(self, count: int, keep: bool) -> list[dict[str, Any]]:
        """Messages as an @mention in a group space (the common case); keep=False skips storing them."""
        mention = (
            f'<spark-mention data-object-type="person" data-object-id="{self.bot["id"]}">'
            f"{self.bot['displayName']}</spark-mention>"
        )
        out = []
        for _ in range(count):
            text = self.texts[self.minted % len(self.texts)]
            self.minted += 1
            if keep:
                message = self.add_message(
                    self.room["id"],
                    self.user,
                    f"{self.bot['displayName']} {text}",
                    html=f"<p>{mention} {html.escape(text)}</p>",
                )
            else:
                message = {
                    "id": webex_id("MESSAGE"),
                    "roomId": self.room["id"],
                    "roomType": "group",
                    "personId": self.user["id"],
                    "personEmail": self.user["emails"][0],
                    "created": "2026-01-01T00:00:00.000Z",
                }
            out.append(self.message_created_envelope(message))
        return out


def control_app(fake: BenchFake) -> web.Application:
    async def messages(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"envelopes": fake.mint(int(body["count"]), bool(body.get("keep", True)))})

    async def delay(request: web.Request) -> web.Response:
        body = await request.json()
        fake.delay(body.get("method", "*"), body.get("path", "/"), float(body["seconds"]))
        return web.json_response({"ok": True})

    async def fail(request: web.Request) -> web.Response:
        body = await request.json()
        fake.fail_next(
            body.get("method", "*"),
            body.get("path", "/"),
            status=int(body.get("status", 503)),
            times=int(body.get("times", 1)),
        )
        return web.json_response({"ok": True})

    async def clear(request: web.Request) -> web.Response:
        fake.clear_faults()
        return web.json_response({"ok": True})

    async def replies(request: web.Request) -> web.Response:
        after = int(request.query.get("after", "0"))
        return web.json_response({"replies": fake.replies[after:], "total": len(fake.replies)})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"messages": len(fake.messages), "replies": len(fake.replies)})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/control/messages", messages)
    app.router.add_post("/control/delay", delay)
    app.router.add_post("/control/fail", fail)
    app.router.add_post("/control/clear", clear)
    app.router.add_get("/control/replies", replies)
    app.router.add_get("/control/stats", stats)
    return app


async def serve(refuse_identity: bool, max_seconds: float) -> None:
    fake = BenchFake()
    api = await fake.start()
    if refuse_identity:
        # 401 on /people/me: the bot gives up learning who it is, so its worker never starts and only the
        # webhook's ack path runs. Bounded "forever": a billion answers.
        fake.fail_next("GET", "/people/me", status=401, times=10**9)
    runner = web.AppRunner(control_app(fake), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    control = f"http://127.0.0.1:{runner.addresses[0][1]}"
    print(json.dumps({"api": api, "control": control, "token": fake.token}), flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The lifetime cap means an orphaned fake cannot outlive a crashed benchmark for long.
    try:
        await asyncio.wait_for(stop.wait(), timeout=max_seconds)
    except TimeoutError:
        print("fakeserver: --max-seconds reached, exiting", file=sys.stderr)
    await runner.cleanup()
    await fake.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refuse-identity", action="store_true", help="answer 401 to GET /people/me")
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    args = parser.parse_args()
    asyncio.run(serve(args.refuse_identity, args.max_seconds))


if __name__ == "__main__":
    main()
