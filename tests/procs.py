"""Helpers for the crash, fault and replica tests: fresh PostgreSQL databases, a cuttable TCP proxy,
real `python -m bot serve` processes, an ITSM receiver, and card/thread look-ups on the fake Webex."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from tests.conftest import KNOWLEDGE_DIR
from tests.fakewebex import FakeWebex, sign
from tests.harness import SECRET

PG_HOST, PG_PORT = "127.0.0.1", 5432

Json = dict[str, Any]


# --- PostgreSQL -------------------------------------------------------------------------------------------


def pg_url(name: str, port: int = PG_PORT) -> str:
    return f"postgresql://postgres@{PG_HOST}:{port}/{name}"


@asynccontextmanager
async def fresh_pg_database(prefix: str = "test_rel") -> AsyncIterator[str]:
    """A new, empty database for one test (its name is yielded); dropped afterwards, whatever happened."""
    try:
        admin = await asyncpg.connect(
            host=PG_HOST, port=PG_PORT, user="postgres", database="postgres", timeout=5
        )
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT} as user postgres ({exc!r})")
    name = f"{prefix}_{secrets.token_hex(6)}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield name
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def pg_fetch(database: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Look at the database behind the bot's back (always directly, never through a test's proxy)."""
    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres", database=database, timeout=5)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def pg_execute(database: str, sql: str, *args: Any) -> str:
    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres", database=database, timeout=5)
    try:
        return str(await conn.execute(sql, *args))
    finally:
        await conn.close()


async def expire_inbox_leases(database: str) -> int:
    """Stand-in for the lease running out (120 s by default): what a long enough wait would do."""
    status = await pg_execute(
        database,
        "UPDATE inbox SET lease_until = now() - interval '1 second' WHERE status = 'working'",
    )
    return int(status.split()[-1])


async def expire_outbox_leases(database: str) -> int:
    status = await pg_execute(
        database,
        "UPDATE outbox SET lease_until = now() - interval '1 second' "
        "WHERE status = 'pending' AND lease_until IS NOT NULL",
    )
    return int(status.split()[-1])


class TcpProxy:
    """A loopback forwarder to PostgreSQL that a test can cut and restore, like a database outage."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Refuse new connections and cut every open one."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()

    async def _accept(self, client: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream, upstream_writer = await asyncio.open_connection(PG_HOST, PG_PORT)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers |= {client_writer, upstream_writer}

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                writer.transport.abort()

        try:
            await asyncio.gather(pipe(client, upstream_writer), pipe(upstream, client_writer))
        finally:
            self._writers -= {client_writer, upstream_writer}


# --- processes --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def serve_env(**values: str) -> dict[str, str]:
    """The parent's environment without any bot configuration, plus `values`."""
    prefixes = (
        "WEBEX_",
        "DATABASE_",
        "PUBLIC_",
        "PORT",
        "HELPDESK_",
        "TICKET_",
        "ADMIN_",
        "ALLOWED_",
        "LOG_",
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    # Webhooks unless a test asks for the websocket: without PUBLIC_URL "auto" would pick the websocket.
    # Tests send one person's events in bursts; tests/test_floods.py holds the default rate limit.
    return {
        **base,
        "KNOWLEDGE_DIR": str(KNOWLEDGE_DIR),
        "HOST": "127.0.0.1",
        "WEBEX_INBOUND": "webhook",
        "RATE_LIMIT_PER_MINUTE": "10000",
        **values,
    }


class ServeProcess:
    """`python -m bot serve` in a subprocess; its log goes to a file so a chatty server never blocks on a pipe."""

    def __init__(self, values: dict[str, str], workdir: Path, name: str) -> None:
        self.port = free_port()
        self.values = {**values, "PORT": str(self.port)}
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    async def start(self) -> ServeProcess:
        with self.log_path.open("wb") as log:
            # cwd is the test's own directory, so no stray .env file can change the configuration.
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bot",
                "serve",
                cwd=self.workdir,
                env=serve_env(**self.values),
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.returncode is not None:
                    raise AssertionError(f"server exited during start-up:\n{self.log()[-3000:]}")
                try:
                    async with http.get(f"{self.url}/readyz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"server never became ready:\n{self.log()[-3000:]}")

    async def post(self, envelope: Json, http: aiohttp.ClientSession | None = None) -> int:
        raw = json.dumps(envelope).encode()
        headers = {"X-Spark-Signature": sign(raw, SECRET), "Content-Type": "application/json"}
        own = http is None
        session = http or aiohttp.ClientSession()
        try:
            async with session.post(f"{self.url}/webhooks/webex", data=raw, headers=headers) as resp:
                await resp.read()
                return resp.status
        finally:
            if own:
                await session.close()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    async def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def close(self) -> None:
        """Whatever the test did: never leave the process behind."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()


# --- the ITSM receiver ------------------------------------------------------------------------------------


@dataclass
class Delivery:
    delivery_id: str
    event: str
    body: Json
    raw: bytes
    completed: bool = False


@dataclass
class Receiver:
    """A real HTTP endpoint for the ticket webhook. Records each delivery as it arrives; `hold()` stalls answers."""

    delay: float = 0.0
    deliveries: list[Delivery] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    url: str = ""
    _gate: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    def __post_init__(self) -> None:
        self._gate.set()

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        delivery = Delivery(
            request.headers.get("X-Helpdesk-Delivery", ""),
            request.headers.get("X-Helpdesk-Event", ""),
            json.loads(raw),
            raw,
        )
        self.deliveries.append(delivery)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            await asyncio.wait_for(self._gate.wait(), 60)
        finally:
            self.in_flight -= 1
        delivery.completed = True
        return web.Response(status=204)

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/itsm", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/itsm"
        return self

    async def close(self) -> None:
        self.release()
        if self._runner is not None:
            await self._runner.cleanup()

    def completed(self) -> list[Delivery]:
        return [d for d in self.deliveries if d.completed]


# --- the fake Webex ---------------------------------------------------------------------------------------


class HoldingWebex(FakeWebex):
    """The fake Webex, plus: stall POST /messages into one room (the fake's own delays match paths only)."""

    hold_posts_to: str | None = None

    async def _post_message(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())  # aiohttp keeps the body the middleware already read
        except ValueError:
            body = None
        if (
            self.hold_posts_to is not None
            and isinstance(body, dict)
            and body.get("roomId") == self.hold_posts_to
        ):
            # The fake cancels a handler whose client went away, so a killed bot's post is never stored.
            await asyncio.sleep(60)
        return await super()._post_message(request)


def bot_messages(fake: FakeWebex, room_id: str | None = None, parent_id: str | None = None) -> list[Json]:
    """What Webex holds from the bot: the truth, also for a post whose answer never reached the bot."""
    return [
        m
        for m in fake.messages.values()
        if m["personId"] == fake.bot["id"]
        and (room_id is None or m["roomId"] == room_id)
        and (parent_id is None or m.get("parentId") == parent_id)
    ]


def requested(fake: FakeWebex, method: str, path_prefix: str, **json_match: Any) -> list[Any]:
    """Requests the fake has seen (answered or not), optionally with matching JSON body fields."""
    return [
        r
        for r in fake.requests
        if r.method == method
        and r.path.startswith(path_prefix)
        and all(isinstance(r.json, dict) and r.json.get(k) == v for k, v in json_match.items())
    ]


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


async def until_async(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
