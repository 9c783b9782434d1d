"""Websocket inbound against webhooks in the same run: events/s to the posted reply, added latency, reconnect time.

Run: python bench/websocket.py [--burst 1000] [--rate 20] [--seconds 15] [--drops 5] [--json out.json]

Two `python -m bot serve` processes (SQLite, pinned to core 0 one after the other): one on webhooks, one on the
websocket. The fake Webex REST API and the fake socket side (tests/fakewebsocket.py) run in this process on core 1
and post nothing themselves. Each event is a new @mention in a group space with a text from the labelled triage
sets, so the worker does the real work (GET /messages/{id}, triage, card, POST /messages in the thread).

- burst: --burst events at once (all webhooks in flight at once, or all frames published at once); events/s is
  the count over the time from the first send to the last reply.
- latency: --rate events/s for --seconds, open loop; reply-posted minus send time (both seen in this process).
- reconnect: the fake cuts the socket --drops times; the time until the next authorized connection and until
  an event sent right after the cut is answered. The bot waits 1-1.5 s before its first retry, by design.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import html
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import _harness as h  # noqa: E402

from tests.fakewebsocket import FakeCloud, SocketWebex  # noqa: E402

SECRET = h.SECRET


class ReplyClock(SocketWebex):
    """Records when each reply is posted, by the message it answers; forgets answered messages."""

    def __init__(self) -> None:
        super().__init__()
        self.replied: dict[str, float] = {}
        self.waiters: dict[str, asyncio.Future[float]] = {}
        self.user = self.add_person("alice@example.com", "Alice Doe")
        self.room = self.add_room("group", "Helpdesk bench")
        self.texts = [
            json.loads(line)["text"]
            for name in ("triage_public.jsonl", "triage_holdout.jsonl")
            for line in (ROOT / "tests" / "data" / name).read_text().splitlines()
            if line.strip()
        ]
        self.minted = 0

    async def _post_message(self, request: web.Request) -> web.Response:
        response = await super()._post_message(request)
        if response.status == 200:
            _, posted = next(reversed(self.messages.items()))
            parent = posted.get("parentId")
            if parent:
                now = time.monotonic()
                self.replied[parent] = now
                waiter = self.waiters.pop(parent, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(now)
        self.requests.clear()
        return response

    def mint(self) -> dict[str, Any]:
        text = self.texts[self.minted % len(self.texts)]
        self.minted += 1
        tag = f'<spark-mention data-object-type="person" data-object-id="{self.bot["id"]}">Helpdesk</spark-mention>'
        return self.add_message(
            self.room["id"], self.user, f"Helpdesk {text}", f"<p>{tag} {html.escape(text)}</p>"
        )


def sign(body: bytes) -> str:
    return hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest()


async def serve(env: dict[str, str], tmp: Path, name: str) -> tuple[asyncio.subprocess.Process, str]:
    port = h.free_port()
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("WEBEX_", "DATABASE_", "PUBLIC_", "HTTP"))
    }
    full = {
        **base,
        "HOST": h.LOOPBACK,
        "PORT": str(port),
        "DATABASE_URL": f"sqlite:///{tmp / (name + '.db')}",
        "LOG_LEVEL": "WARNING",
        **env,
    }
    log = (tmp / f"{name}.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        *h.pinned([h.PYTHON, "-m", "bot", "serve"], h.SERVER_CORE), env=full, cwd=tmp, stdout=log, stderr=log
    )
    url = f"http://{h.LOOPBACK}:{port}"
    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            try:
                async with http.get(url + "/readyz") as resp:
                    if resp.status == 200:
                        return proc, url
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise SystemExit(f"{name} never became ready; see {tmp / (name + '.log')}")


async def stop(proc: asyncio.subprocess.Process) -> None:
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), 20)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def send_webhook(
    http: aiohttp.ClientSession, url: str, fake: ReplyClock, message: dict[str, Any]
) -> None:
    raw = json.dumps(fake.message_created_envelope(message)).encode()
    headers = {"X-Spark-Signature": sign(raw), "Content-Type": "application/json"}
    async with http.post(url + "/webhooks/webex", data=raw, headers=headers) as resp:
        await resp.read()
        if resp.status != 200:
            raise SystemExit(f"webhook answered {resp.status}")


async def wait_all(fake: ReplyClock, ids: list[str], limit: float) -> None:
    loop = asyncio.get_running_loop()
    pending = [fake.waiters.setdefault(i, loop.create_future()) for i in ids if i not in fake.replied]
    if pending:
        await asyncio.wait(pending, timeout=limit)


async def burst(path: str, fake: ReplyClock, cloud: FakeCloud, url: str, count: int) -> dict[str, Any]:
    messages = [fake.mint() for _ in range(count)]
    ids = [m["id"] for m in messages]
    start = time.monotonic()
    if path == "webhook":
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:
            await asyncio.gather(*(send_webhook(http, url, fake, m) for m in messages))
    else:
        for m in messages:
            cloud.post(m)
    await wait_all(fake, ids, 300)
    done = [fake.replied[i] for i in ids if i in fake.replied]
    span = max(done) - start if done else float("nan")
    return {
        "path": path,
        "events": count,
        "replied": len(done),
        "seconds": span,
        "events_per_s": len(done) / span,
    }


async def steady(
    path: str, fake: ReplyClock, cloud: FakeCloud, url: str, rate: float, seconds: float
) -> dict[str, Any]:
    sent: dict[str, float] = {}
    tasks = []
    start = time.monotonic()
    async with aiohttp.ClientSession() as http:
        for n in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
            message = fake.mint()
            sent[message["id"]] = time.monotonic()
            if path == "webhook":
                tasks.append(asyncio.create_task(send_webhook(http, url, fake, message)))
            else:
                cloud.post(message)
        await asyncio.gather(*tasks)
    await wait_all(fake, list(sent), 60)
    latencies = sorted((fake.replied[i] - t) * 1000 for i, t in sent.items() if i in fake.replied)
    return {
        "path": path,
        "rate": rate,
        "events": len(sent),
        "replied": len(latencies),
        "p50_ms": h.pct(latencies, 50),
        "p90_ms": h.pct(latencies, 90),
        "p99_ms": h.pct(latencies, 99),
    }


async def reconnects(fake: ReplyClock, cloud: FakeCloud, drops: int) -> dict[str, Any]:
    back, answered = [], []
    for _ in range(drops):
        await asyncio.sleep(0.5)
        before = len(cloud.connections)
        cut = time.monotonic()
        await cloud.drop()
        message = fake.mint()
        cloud.post(message)  # queued for the device, sent when it is back
        waiter = fake.waiters[message["id"]] = asyncio.get_running_loop().create_future()
        # Polled: the fake only keeps a list of connections, and 5 ms is well under what is measured.
        while not (len(cloud.connections) > before and cloud.connections[-1].authorized):  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        back.append(time.monotonic() - cut)
        answered.append(await asyncio.wait_for(waiter, 30) - cut)
    return {
        "drops": drops,
        "reconnect_median_s": statistics.median(back),
        "reconnect_max_s": max(back),
        "answered_median_s": statistics.median(answered),
        "answered_max_s": max(answered),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    fake = ReplyClock()
    await fake.start()
    cloud = FakeCloud(fake)
    await cloud.start()
    results: dict[str, Any] = {"machine": h.machine(), "args": vars(args)}
    common = {"WEBEX_ACCESS_TOKEN": fake.token, "WEBEX_API_URL": fake.base_url}
    with tempfile.TemporaryDirectory(prefix="bench-ws-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            for path in ("webhook", "websocket"):
                env = {**common, "WEBEX_INBOUND": path, "WEBEX_WEBHOOK_SECRET": SECRET}
                if path == "websocket":
                    env |= {"WEBEX_U2C_URL": cloud.u2c_url, "WEBEX_DEVICE_NAME": "helpdesk-bot@bench"}
                proc, url = await serve(env, tmp, path)
                try:
                    await burst(path, fake, cloud, url, 50)  # warm-up: imports, caches, SQLite pages
                    results[f"{path}_burst"] = await burst(path, fake, cloud, url, args.burst)
                    results[f"{path}_steady"] = await steady(path, fake, cloud, url, args.rate, args.seconds)
                    if path == "websocket":
                        results["reconnect"] = await reconnects(fake, cloud, args.drops)
                finally:
                    await stop(proc)
        finally:
            await cloud.close()
            await fake.close()
    return results


def report(r: dict[str, Any]) -> None:
    print(h.describe(r["machine"]))
    rows = [
        [p, r[f"{p}_burst"]["events"], r[f"{p}_burst"]["replied"], h.fmt(r[f"{p}_burst"]["events_per_s"])]
        for p in ("webhook", "websocket")
    ]
    print(h.table(["burst", "events", "replied", "events/s to reply"], rows))
    rows = [
        [
            p,
            h.fmt(r[f"{p}_steady"]["rate"], 0),
            h.fmt(r[f"{p}_steady"]["p50_ms"]),
            h.fmt(r[f"{p}_steady"]["p90_ms"]),
            h.fmt(r[f"{p}_steady"]["p99_ms"]),
        ]
        for p in ("webhook", "websocket")
    ]
    print(h.table(["steady", "events/s", "p50 ms", "p90 ms", "p99 ms"], rows))
    added = r["websocket_steady"]["p50_ms"] - r["webhook_steady"]["p50_ms"]
    print(f"added latency of the websocket path at p50: {added:+.1f} ms")
    c = r["reconnect"]
    print(
        f"reconnect after a cut ({c['drops']}x): back in {c['reconnect_median_s']:.2f} s median "
        f"({c['reconnect_max_s']:.2f} max); the event sent during the cut answered after "
        f"{c['answered_median_s']:.2f} s median ({c['answered_max_s']:.2f} max)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--drops", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if h.CLIENT_CORE is not None:
        os.sched_setaffinity(0, {int(h.CLIENT_CORE)})
    results = asyncio.run(run(args))
    report(results)
    h.write_json(args.json, results)


if __name__ == "__main__":
    main()
