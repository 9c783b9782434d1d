"""Slow and broken HTTP clients against a real `python -m bot serve` started with the common 1,024-descriptor
limit: valid webhooks keep being acknowledged fast, and the log stays short and free of tracebacks."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.fakewebex import FakeWebex
from tests.harness import SECRET
from tests.procs import ServeProcess, serve_env

SLOW = 2000


class LimitedServe(ServeProcess):
    """The server with a soft limit of 1,024 open files, as on many machines."""

    async def start(self) -> LimitedServe:
        def limit() -> None:
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))

        with self.log_path.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bot",
                "serve",
                cwd=self.workdir,
                env=serve_env(**self.values),
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=limit,
            )
        return self


@pytest.fixture
async def server(fake_webex: FakeWebex, tmp_path: Path) -> AsyncIterator[ServeProcess]:
    values = {
        "WEBEX_ACCESS_TOKEN": fake_webex.token,
        "WEBEX_WEBHOOK_SECRET": SECRET,
        "WEBEX_API_URL": fake_webex.base_url,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'bot.db'}",
        "LOG_LEVEL": "DEBUG",
    }
    proc = LimitedServe(values, tmp_path, "serve")
    await proc.start()
    try:
        await proc.wait_ready()
        yield proc
    finally:
        await proc.close()
        print(proc.log()[-4000:])


async def half_sent(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /webhooks/webex HTTP/1.1\r\nHost: bot\r\nContent-Type: application/json\r\n")
    await writer.drain()
    return reader, writer


async def _closed(reader: asyncio.StreamReader, wait: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), wait) == b""
    except (TimeoutError, ConnectionError):
        return False


async def test_2000_slow_connections_do_not_stop_acks_and_are_closed(
    server: ServeProcess, fake_webex: FakeWebex
) -> None:
    alice = fake_webex.add_person("alice@example.com", "Alice Doe")
    room = fake_webex.add_room("direct", "Alice")["id"]
    slow: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for start in range(0, SLOW, 200):
            slow += await asyncio.gather(
                *(half_sent(server.port) for _ in range(start, min(start + 200, SLOW)))
            )
        # Past MAX_CONNECTIONS (1,000) the oldest are shut at once, long before the header timeout.
        early = await asyncio.gather(*(_closed(reader, 2.0) for reader, _ in slow[:900]))
        assert sum(early) > 800, f"only {sum(early)} of the 900 oldest were closed past the cap"
        took: list[float] = []
        async with aiohttp.ClientSession() as http:
            for n in range(20):
                msg = fake_webex.add_message(room, alice, f"Error: 1000:1002 #{n} secret-text-{n}")
                began = time.monotonic()
                assert await server.post(fake_webex.message_created_envelope(msg), http) == 200
                took.append(time.monotonic() - began)
        assert statistics.median(took) < 0.1, f"acks took {sorted(took)}"
        # Still only half a request after the header timeout: the server has closed them.
        await asyncio.sleep(12)
        closed = 0
        for reader, _ in slow:
            with contextlib.suppress(TimeoutError):
                closed += await asyncio.wait_for(reader.read(), 0.01) == b""
        assert closed > SLOW * 0.9, f"only {closed} of {SLOW} half-sent requests were closed"
    finally:
        for _, writer in slow:
            writer.close()
    log = server.log()
    assert "Traceback" not in log
    assert "secret-text" not in log, "message text in the DEBUG log"


async def test_hang_ups_and_malformed_requests_are_one_line_each_and_rate_limited(
    server: ServeProcess,
) -> None:
    for _ in range(30):
        _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(
            b"POST /webhooks/webex HTTP/1.1\r\nHost: bot\r\nContent-Length: 5000\r\n"
            b'X-Spark-Signature: 00\r\n\r\n{"id": "half'
        )
        await writer.drain()
        writer.close()
        reader2, writer2 = await asyncio.open_connection("127.0.0.1", server.port)
        writer2.write(b"\x16\x03\x01 NOT HTTP AT ALL\r\n\r\n")
        await writer2.drain()
        await reader2.read()
        writer2.close()
    await asyncio.sleep(1.0)
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/healthz") as resp:
        assert resp.status == 200
    log = server.log()
    assert "Traceback" not in log, log[-3000:]
    dropped = [line for line in log.splitlines() if "dropped" in line and "webhook from" in line]
    assert 1 <= len(dropped) <= 10, "a hang-up is one line, and repeats are held back"
    assert len(log.splitlines()) < 200, "the log stays short"
