"""End to end over the websocket: the real app (create_app) against the fake REST API and the fake socket side."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bot.app import create_app
from bot.config import Settings
from bot.keys import CONTEXT, WEBSOCKET, WORKER
from bot.startup import StartupError
from bot.websocket import SocketOptions
from tests.conftest import KNOWLEDGE_DIR
from tests.fakewebsocket import FakeCloud, SocketWebex
from tests.harness import FAST_WORKER, Bot, db_url, make_settings, verb, wait_for
from tests.procs import bot_messages, fresh_pg_database, pg_url
from tests.test_store import stored_event

FAST_SOCKET = SocketOptions(ping_seconds=0.2, pong_timeout=0.3, backoff_min=0.05, backoff_max=0.2)
DEVICE = "helpdesk-bot@test"


@pytest.fixture
async def fake() -> AsyncIterator[SocketWebex]:
    webex = SocketWebex()
    await webex.start()
    try:
        yield webex
    finally:
        await webex.close()


@pytest.fixture
async def cloud(fake: SocketWebex) -> AsyncIterator[FakeCloud]:
    side = FakeCloud(fake)
    await side.start()
    try:
        yield side
    finally:
        await side.close()


@pytest.fixture
def world(fake: SocketWebex) -> dict[str, Any]:
    alice = fake.add_person("alice@example.com", "Alice Doe")
    direct = fake.add_room("direct", "Alice")
    fake.add_membership(direct["id"], alice["id"])
    group = fake.add_room("group", "Sales floor")
    return {"alice": alice, "direct": direct["id"], "group": group["id"]}


def socket_settings(fake: SocketWebex, cloud: FakeCloud, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "webex_access_token": fake.token,
        "webex_api_url": fake.base_url,
        "webex_u2c_url": cloud.u2c_url,
        "webex_device_name": DEVICE,
        "database_url": database_url,
        "knowledge_dir": KNOWLEDGE_DIR,
        **overrides,
    }
    return Settings(_env_file=None, **values)


class SocketBot:
    """The app with WEBEX_INBOUND=auto and no PUBLIC_URL: the websocket path."""

    def __init__(self, settings: Settings, socket: SocketOptions = FAST_SOCKET) -> None:
        self.settings = settings
        self.app: web.Application = create_app(settings, worker=FAST_WORKER, websocket=socket)
        self.client: TestClient[Any, Any] = TestClient(TestServer(self.app))

    async def __aenter__(self) -> SocketBot:
        await self.client.start_server()
        await wait_for(lambda: self.app[CONTEXT].me is not None, what="the bot's identity")
        await wait_for(lambda: self.app[WEBSOCKET].connected, what="the websocket to open")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()

    @property
    def connected(self) -> bool:
        return self.app[WEBSOCKET].connected

    async def ready(self) -> int:
        return int((await self.client.get("/readyz")).status)

    async def metric(self, name: str) -> float:
        text = await (await self.client.get("/metrics")).text()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and not line.startswith("#")
        )

    async def idle(self) -> None:
        store = self.app[CONTEXT].store

        async def settled() -> bool:
            counts = await store.inbox_counts()
            return self.app[WORKER].in_flight == 0 and not (counts["pending"] or counts["working"])

        for _ in range(500):
            if await settled():
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the worker did not settle")


def mention(fake: SocketWebex, room: str, person: dict[str, Any], text: str) -> dict[str, Any]:
    html = f'<p><spark-mention data-object-type="person" data-object-id="{fake.bot["id"]}">Helpdesk</spark-mention> {text}</p>'
    return fake.add_message(room, person, f"Helpdesk {text}", html)


async def test_direct_message_over_the_socket_is_stored_then_acked_and_answered(
    fake: SocketWebex, cloud: FakeCloud, world: dict[str, Any], tmp_path: Path
) -> None:
    async with SocketBot(socket_settings(fake, cloud, db_url(tmp_path))) as bot:
        # The authorization frame came first, with the bot's token.
        first = cloud.connections[0].first_frame
        assert first is not None and first["type"] == "authorization"
        assert first["data"]["token"] == f"Bearer {fake.token}"
        assert [d.name for d in cloud.ours()] == [DEVICE]
        msg = fake.add_message(world["direct"], world["alice"], "Error: 1000:1002 on phone services")
        envelopes = cloud.post(msg)
        await wait_for(lambda: bool(bot_messages(fake, world["direct"])), what="the reply")
        reply = bot_messages(fake, world["direct"])[0]
        assert "1000:1002" in reply["markdown"] and "parentId" not in reply
        await wait_for(lambda: cloud.acked(envelopes), what="the ack")
        # Same inbox row, same key as the webhook's: the message's REST id.
        event = await stored_event(bot.settings.database_url, msg["id"])
        assert event is not None and event.resource == "messages"
        assert await bot.ready() == 200
        assert await bot.metric("bot_websocket_connects_total") == 1
        assert await bot.metric("bot_websocket_last_event_age_seconds") >= 0
        # POST /webhooks/webex does not exist without a public URL: nobody may inject events there.
        assert (await bot.client.post("/webhooks/webex", data=b"{}")).status in (404, 405)


async def test_group_mention_is_answered_in_its_thread_and_other_bots_are_ignored(
    fake: SocketWebex, cloud: FakeCloud, world: dict[str, Any], tmp_path: Path
) -> None:
    async with SocketBot(socket_settings(fake, cloud, db_url(tmp_path))) as bot:
        robot = fake.add_person("other@webex.bot", "Other Bot", type="bot")
        cloud.post(fake.add_message(world["group"], robot, "beep"))
        cloud.post(fake.add_message(world["group"], fake.bot, "I said this"))
        msg = mention(fake, world["group"], world["alice"], "blank screen when I sign in")
        cloud.post(msg)
        await wait_for(
            lambda: bool(bot_messages(fake, world["group"], parent_id=msg["id"])), what="the reply"
        )
        await bot.idle()
        mine = [m for m in bot_messages(fake, world["group"]) if m["text"] != "I said this"]
        assert len(mine) == 1 and mine[0]["parentId"] == msg["id"]
        assert await bot.metric('bot_events_ignored_total{reason="bot"}') == 1
        assert await bot.metric('bot_events_ignored_total{reason="self"}') == 1


async def test_card_submit_over_the_socket(
    fake: SocketWebex, cloud: FakeCloud, world: dict[str, Any], tmp_path: Path
) -> None:
    async with SocketBot(socket_settings(fake, cloud, db_url(tmp_path))) as bot:
        msg = mention(fake, world["group"], world["alice"], "Error: 1000:1002")
        cloud.post(msg)
        await wait_for(lambda: bool(bot_messages(fake, world["group"], parent_id=msg["id"])), what="the card")
        card = bot_messages(fake, world["group"], parent_id=msg["id"])[0]
        action = fake.add_attachment_action(card["id"], world["alice"], verb(card, "feedback", helpful=True))
        envelopes = cloud.card_action(action)
        await wait_for(
            lambda: len(bot_messages(fake, world["group"], parent_id=msg["id"])) == 2, what="the answer"
        )
        await wait_for(lambda: cloud.acked(envelopes), what="the ack")
        await bot.idle()
        event = await stored_event(bot.settings.database_url, action["id"])
        assert event is not None and event.resource == "attachmentActions" and event.status == "done"


async def test_a_dropped_socket_reconnects_and_the_next_event_is_answered(
    fake: SocketWebex, cloud: FakeCloud, world: dict[str, Any], tmp_path: Path
) -> None:
    async with SocketBot(socket_settings(fake, cloud, db_url(tmp_path), webex_catch_up_hours=0)) as bot:
        cloud.answer_pings = False  # a half-dead line: nothing is refused, nothing comes back
        await wait_for(lambda: not bot.connected, what="the bot to notice the silence")
        assert await bot.ready() == 503
        body = await (await bot.client.get("/readyz")).json()
        assert body["checks"]["websocket"] is False
        cloud.answer_pings = True
        await wait_for(lambda: bot.connected, what="the reconnect")
        await cloud.drop()  # now an abrupt cut
        await wait_for(
            lambda: cloud.open_sockets == 1 and bot.connected and cloud.connections[-1].authorized,
            what="another reconnect",
        )
        assert len(cloud.connections) >= 3
        msg = fake.add_message(world["direct"], world["alice"], "sso failed")
        cloud.post(msg)
        await wait_for(lambda: bool(bot_messages(fake, world["direct"])), what="the reply")
        assert await bot.metric("bot_websocket_reconnects_total") >= 2
        assert await bot.metric('bot_websocket_reconnects_total{reason="pong-timeout"}') >= 1
        assert await bot.ready() == 200


async def test_an_event_delivered_again_is_answered_once(
    fake: SocketWebex, cloud: FakeCloud, world: dict[str, Any], tmp_path: Path
) -> None:
    async with SocketBot(socket_settings(fake, cloud, db_url(tmp_path), webex_catch_up_hours=0)) as bot:
        cloud.lose_acks = True  # the acks are lost, so Webex sends the event again on the next connection
        msg = fake.add_message(world["direct"], world["alice"], "blank screen")
        [envelope] = cloud.post(msg)
        await wait_for(lambda: bool(bot_messages(fake, world["direct"])), what="the reply")
        cloud.lose_acks = False
        await cloud.drop()
        device = cloud.ours()[0]
        await wait_for(lambda: device.connections == 2 and cloud.acked([envelope]), what="redelivery and ack")
        assert device.queue[0].sends == 2
        await bot.idle()
        await asyncio.sleep(0.2)
        assert len(bot_messages(fake, world["direct"])) == 1
        assert await bot.metric('bot_events_ignored_total{reason="duplicate"}') == 1


async def test_a_deleted_device_is_registered_again(
    fake: SocketWebex, cloud: FakeCloud, world: dict[str, Any], tmp_path: Path
) -> None:
    async with SocketBot(socket_settings(fake, cloud, db_url(tmp_path), webex_catch_up_hours=0)) as bot:
        [old] = cloud.ours()
        await cloud.drop()
        cloud.forget(old.id)  # before the bot is back: its handshake now answers 404
        await wait_for(
            lambda: bool(cloud.ours()) and cloud.ours()[0].id != old.id and bot.connected, what="a new device"
        )
        assert [d.name for d in cloud.ours()] == [DEVICE]
        msg = fake.add_message(world["direct"], world["alice"], "Error: 1000:1002")
        cloud.post(msg)
        await wait_for(lambda: bool(bot_messages(fake, world["direct"])), what="the reply")


async def test_a_device_whose_socket_answers_404_is_replaced_even_if_still_listed(
    fake: SocketWebex, cloud: FakeCloud, world: dict[str, Any], tmp_path: Path
) -> None:
    async with SocketBot(socket_settings(fake, cloud, db_url(tmp_path), webex_catch_up_hours=0)) as bot:
        [old] = cloud.ours()
        cloud.dead_sockets.add(old.id)
        await cloud.drop()
        await wait_for(
            lambda: [d.id for d in cloud.ours()] not in ([], [old.id]) and bot.connected, what="a new device"
        )
        assert (
            old.id not in cloud.devices and len(cloud.ours()) == 1
        )  # the stale one deleted, not left behind
        msg = fake.add_message(world["direct"], world["alice"], "Error: 1000:1002")
        cloud.post(msg)
        await wait_for(lambda: bool(bot_messages(fake, world["direct"])), what="the reply")


async def test_at_the_device_cap_only_our_stale_devices_are_removed(
    fake: SocketWebex, cloud: FakeCloud, tmp_path: Path
) -> None:
    cloud.device_cap = 4
    stale = cloud.add_device("helpdesk-bot@old-pod", age=timedelta(days=3))
    fresh = cloud.add_device("helpdesk-bot@other-replica", age=timedelta(minutes=5))
    others = [cloud.add_device("phone", model="webex-app", age=timedelta(days=30)) for _ in range(2)]
    async with SocketBot(socket_settings(fake, cloud, db_url(tmp_path))) as bot:
        assert bot.connected
        names = sorted(d.name for d in cloud.devices.values())
        assert names == sorted([DEVICE, fresh.name, "phone", "phone"])
        assert stale.id not in cloud.devices and all(o.id in cloud.devices for o in others)


async def test_a_replaced_connection_is_not_fought(
    fake: SocketWebex, cloud: FakeCloud, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with SocketBot(socket_settings(fake, cloud, db_url(tmp_path), webex_catch_up_hours=0)) as bot:
        connections = len(cloud.connections)
        with caplog.at_level(logging.WARNING, logger="bot.websocket"):
            await cloud.close_sockets(4000, "replaced")
            await wait_for(lambda: not bot.connected, what="the close")
            await asyncio.sleep(0.5)  # several backoffs' worth
        assert len(cloud.connections) == connections
        stopped = bot.app[WEBSOCKET].stopped
        assert stopped is not None and "replaced" in stopped
        assert "another connection replaced ours" in caplog.text
        assert await bot.ready() == 503


async def test_a_bad_token_stops_with_a_clear_error(
    fake: SocketWebex, cloud: FakeCloud, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = socket_settings(fake, cloud, db_url(tmp_path))
    fake.token = "the-right-token"
    app = create_app(settings, worker=FAST_WORKER, websocket=FAST_SOCKET)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    # The start checks the token first (GET /people/me) and stops with one line; the socket never starts,
    # so the refusal is said once.
    # Bounded: a start or a close that hangs is a failure with a name, not a suite that never ends.
    async with asyncio.timeout(60):
        with (
            caplog.at_level(logging.DEBUG),
            pytest.raises(StartupError, match="Webex refused WEBEX_ACCESS_TOKEN"),
        ):
            await client.start_server()
        await client.close()
    assert [p for m, p in cloud.requests if p.endswith("/catalog")] == []
    assert "websocket stopped" not in caplog.text


async def test_after_a_gap_missed_messages_are_caught_up_once(
    fake: SocketWebex, cloud: FakeCloud, world: dict[str, Any], tmp_path: Path
) -> None:
    settings = socket_settings(fake, cloud, db_url(tmp_path))
    answered = fake.add_message(world["direct"], world["alice"], "help")
    async with SocketBot(settings) as bot:
        cloud.post(answered)
        await wait_for(lambda: len(bot_messages(fake, world["direct"])) == 1, what="the first reply")
        await bot.idle()
    # While the bot is away: a direct message, a mention, and a group message that does not mention it.
    missed_direct = fake.add_message(world["direct"], world["alice"], "Error: 1000:1002")
    missed_mention = mention(fake, world["group"], world["alice"], "sso failed")
    fake.add_message(world["group"], world["alice"], "lunch anyone?")
    async with SocketBot(settings) as bot:
        await wait_for(
            lambda: bool(bot_messages(fake, world["group"], parent_id=missed_mention["id"])),
            what="the mention",
        )
        await wait_for(lambda: len(bot_messages(fake, world["direct"])) == 2, what="the direct message")
        await bot.idle()
        # The same messages again over the socket are duplicates, and nothing was answered twice.
        cloud.post(missed_direct)
        cloud.post(answered)
        await asyncio.sleep(0.3)
        await bot.idle()
        assert len(bot_messages(fake, world["direct"])) == 2
        assert len(bot_messages(fake, world["group"])) == 1
        assert await bot.metric("bot_websocket_caught_up_total") == 2


async def test_a_share_is_answered_once_its_files_are_safe(
    fake: SocketWebex, cloud: FakeCloud, world: dict[str, Any], tmp_path: Path
) -> None:
    async with SocketBot(socket_settings(fake, cloud, db_url(tmp_path), webex_catch_up_hours=0)):
        msg = fake.add_message(world["direct"], world["alice"], "this is what I see: Error: 1000:1002")
        [share] = cloud.share(msg, safe=False)
        await asyncio.sleep(0.3)
        assert bot_messages(fake, world["direct"]) == [] and share not in cloud.acks
        [update] = cloud.files_scanned(msg)
        await wait_for(lambda: bool(bot_messages(fake, world["direct"])), what="the reply")
        await wait_for(lambda: cloud.acked([share, update]), what="both acks")


async def test_one_message_by_webhook_and_by_socket_is_one_event(
    fake: SocketWebex, cloud: FakeCloud, world: dict[str, Any]
) -> None:
    """A bot moving from webhooks to the socket (or running both) answers each message once: same inbox key."""
    async with fresh_pg_database("test_ws_both") as name:
        hook_settings = make_settings(fake, pg_url(name))
        sock_settings = socket_settings(fake, cloud, pg_url(name), webex_catch_up_hours=0)
        async with Bot(fake, hook_settings) as hook, SocketBot(sock_settings) as sock:
            first = fake.add_message(world["direct"], world["alice"], "Error: 1000:1002")
            assert (await (await hook.post(fake.message_created_envelope(first))).json())[
                "status"
            ] == "queued"
            envelopes = cloud.post(first)
            await wait_for(lambda: cloud.acked(envelopes), what="the socket's ack of a duplicate")
            second = fake.add_message(world["direct"], world["alice"], "blank screen")
            cloud.post(second)
            await wait_for(lambda: len(bot_messages(fake, world["direct"])) == 2, what="both replies")
            await asyncio.sleep(0.1)
            resp = await hook.post(fake.message_created_envelope(second))
            assert (await resp.json())["status"] == "duplicate"
            await hook.idle()
            await sock.idle()
            await asyncio.sleep(0.2)
            assert len(bot_messages(fake, world["direct"])) == 2
            assert await sock.metric('bot_events_ignored_total{reason="duplicate"}') == 1
