"""The small holes: non-finite numbers, ITSM redirects, a database that cannot be written or was deleted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from bot.keys import CONTEXT
from bot.store import DatabaseLost, Store, StoreUnavailable
from tests.fakewebex import FakeWebex
from tests.harness import SECRET, Bot, db_url, make_settings
from tests.procs import Receiver, ServeProcess, fresh_pg_database, pg_fetch, pg_url, until_async


@pytest.fixture
async def database() -> AsyncIterator[str]:
    async with fresh_pg_database("test_holes") as name:
        yield name


async def test_non_finite_numbers_are_refused_and_fail_no_one_else(
    fake_webex: FakeWebex, database: str
) -> None:
    alice = fake_webex.add_person("alice@example.com", "Alice Doe")
    room = fake_webex.add_room("direct", "Alice")["id"]
    async with Bot(fake_webex, make_settings(fake_webex, pg_url(database))) as bot:
        good = [
            fake_webex.message_created_envelope(fake_webex.add_message(room, alice, "hi")) for _ in range(22)
        ]
        bad: list[bytes] = []
        for token in ("NaN", "Infinity", "-Infinity", "1e999"):
            envelope = fake_webex.message_created_envelope(fake_webex.add_message(room, alice, "hi"))
            bad.append(
                json.dumps(envelope)
                .encode()
                .replace(b'"created"', b'"n": ' + token.encode() + b', "created"', 1)
            )
        answers = await asyncio.gather(*(bot.post(e) for e in good), *(bot.post(raw) for raw in bad))
        assert [r.status for r in answers] == [200] * len(good) + [400] * len(bad)
        rows = await pg_fetch(database, "SELECT count(*) AS n FROM inbox")
        assert rows[0]["n"] == len(good)


async def test_the_itsm_outbox_follows_no_redirect(fake_webex: FakeWebex, tmp_path: Path) -> None:
    target = await Receiver().start()
    hits: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        hits.append(request.method)
        return web.Response(status=307, headers={"Location": target.url})

    app = web.Application()
    app.router.add_post("/itsm", redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/itsm"
    settings = make_settings(fake_webex, db_url(tmp_path), ticket_webhook_url=url, ticket_webhook_secret="s")
    try:
        async with Bot(fake_webex, settings) as bot:
            store = bot.app[CONTEXT].store
            await store.create_ticket(
                dedupe_key="k",
                requester_id="p",
                requester_email="p@example.com",
                requester_name="P",
                room_id="r",
                thread_id=None,
                original_text="x",
                codes=[],
                articles=[],
                steps_suggested=[],
                note=None,
                transcript=[],
                reply_parent=None,
            )
            db = bot.settings.database_url.removeprefix("sqlite:///")

            def last_error() -> str:
                with contextlib.closing(sqlite3.connect(db)) as conn:
                    return str(conn.execute("SELECT last_error FROM outbox").fetchone()[0])

            async def failed() -> bool:
                return last_error() == "HTTP 307"

            await until_async(failed, 10, "the 307 to count as a failed delivery")
            assert hits and target.deliveries == [], "the signed ticket went to the redirect target"
    finally:
        await runner.cleanup()
        await target.close()


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


async def test_an_unwritable_database_is_not_ready_and_takes_no_work(
    fake_webex: FakeWebex, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    alice = fake_webex.add_person("alice@example.com", "Alice Doe")
    room = fake_webex.add_room("direct", "Alice")["id"]
    async with Bot(fake_webex, make_settings(fake_webex, db_url(tmp_path))) as bot:
        assert (await bot.client.get("/readyz")).status == 200
        with immutable(tmp_path / "bot.db"):
            # Writes still land in the WAL, which can no longer be copied back: it would grow for ever.
            ready = await bot.client.get("/readyz")
            body = await ready.json()
            assert ready.status == 503 and body["checks"]["database"] is False, body
            assert "disk I/O error" in body["problem"]
            msg = fake_webex.add_message(room, alice, "hi")
            assert (await bot.post(fake_webex.message_created_envelope(msg))).status == 503
        ready = await bot.client.get("/readyz")
        assert ready.status == 200, await ready.json()
        assert (await bot.post(fake_webex.message_created_envelope(msg))).status == 200


async def test_a_deleted_database_is_refused_not_silently_recreated(
    tmp_path: Path, fake_webex: FakeWebex
) -> None:
    url = db_url(tmp_path)
    store = await Store.open(url, refuse_lost_file=True)
    await store.close()
    (tmp_path / "bot.db").unlink()
    with pytest.raises(DatabaseLost, match=r"restore it from a backup, or delete .*created to start afresh"):
        await Store.open(url, refuse_lost_file=True)
    # A real start says so in one line and exits 1.
    proc = ServeProcess(
        {
            "WEBEX_ACCESS_TOKEN": fake_webex.token,
            "WEBEX_WEBHOOK_SECRET": SECRET,
            "WEBEX_API_URL": fake_webex.base_url,
            "DATABASE_URL": url,
        },
        tmp_path,
        "serve",
    )
    await proc.start()
    assert await proc.wait_exit(30) == 1
    assert "error: the database" in proc.log() and "Traceback" not in proc.log()
    (tmp_path / "bot.db.bot" / "created").unlink()  # starting afresh on purpose
    store = await Store.open(url, refuse_lost_file=True)
    await store.close()


async def test_a_database_file_deleted_under_the_running_bot_is_noticed(
    fake_webex: FakeWebex, tmp_path: Path
) -> None:
    async with Bot(fake_webex, make_settings(fake_webex, db_url(tmp_path))) as bot:
        (tmp_path / "bot.db").unlink()
        ready = await bot.client.get("/readyz")
        assert ready.status == 503 and "deleted or replaced" in (await ready.json())["problem"]
        with pytest.raises(StoreUnavailable):
            await bot.app[CONTEXT].store.check_health()
