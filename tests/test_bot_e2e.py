"""End to end: signed webhooks into the real app, replies checked on the fake Webex API."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.cards import parse_submit
from bot.keys import CONTEXT
from bot.store.schema import messages_log
from tests.fakewebex import FakeWebex, bare_uuid
from tests.harness import Bot, card_of, db_url, make_settings, submits, votes, wait_for
from tests.test_store import fetch_all, stored_event


@pytest.fixture
def people(fake_webex: FakeWebex) -> dict[str, Any]:
    alice = fake_webex.add_person("alice@example.com", "Alice Doe")
    direct = fake_webex.add_room("direct", "Alice")
    group = fake_webex.add_room("group", "Sales floor")
    return {"alice": alice, "direct": direct, "group": group}


async def test_direct_message_gets_a_fix_card(
    fake_webex: FakeWebex, people: dict[str, Any], tmp_path: Path
) -> None:
    async with Bot(fake_webex, make_settings(fake_webex, db_url(tmp_path))) as bot:
        msg = fake_webex.add_message(
            people["direct"]["id"], people["alice"], "Error: 1000:1002 on phone services"
        )
        resp = await bot.post(fake_webex.message_created_envelope(msg))
        assert resp.status == 200
        assert (await resp.json())["status"] == "queued"
        await wait_for(lambda: len(fake_webex.posted_messages) == 1, what="the reply")
        reply = fake_webex.posted_messages[0]
        assert reply["roomId"] == people["direct"]["id"]
        assert "parentId" not in reply  # direct spaces reply plainly
        assert "1000:1002" in reply["markdown"]
        card = card_of(reply)
        assert "ServiceDiscoveryAuthenticationFailure" in json.dumps(card)
        await bot.idle()
        event = await stored_event(bot.settings.database_url, msg["id"])
        assert event is not None and event.status == "done" and event.reply_message_id


async def test_bad_or_missing_signature_is_401(
    fake_webex: FakeWebex, people: dict[str, Any], tmp_path: Path
) -> None:
    async with Bot(fake_webex, make_settings(fake_webex, db_url(tmp_path))) as bot:
        msg = fake_webex.add_message(people["direct"]["id"], people["alice"], "blank screen")
        envelope = fake_webex.message_created_envelope(msg)
        assert (await bot.post(envelope, secret="wrong-secret")).status == 401
        assert (await bot.post(envelope, secret=None)).status == 401
        # A signature replayed onto a changed body fails too.
        good = json.dumps(envelope).encode()
        from tests.fakewebex import sign

        changed = good.replace(b"created", b"created ", 1)
        resp = await bot.post(
            changed, secret=None, **{"X-Spark-Signature": sign(good, "webhook-secret-for-tests")}
        )
        assert resp.status == 401
        await asyncio.sleep(0.2)
        assert fake_webex.posted_messages == []


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"resource": "messages"}',
        b'{"id": "x", "resource": "messages", "event": "created", "data": {}}',
    ],
)
async def test_malformed_bodies_are_400(fake_webex: FakeWebex, tmp_path: Path, body: bytes) -> None:
    async with Bot(fake_webex, make_settings(fake_webex, db_url(tmp_path))) as bot:
        assert (await bot.post(body)).status == 400


async def test_oversized_body_is_413(fake_webex: FakeWebex, tmp_path: Path) -> None:
    async with Bot(fake_webex, make_settings(fake_webex, db_url(tmp_path))) as bot:
        assert (await bot.post(b"x" * (1024 * 1024 + 10))).status == 413


async def test_ignored_events_get_2xx_and_no_reply(
    fake_webex: FakeWebex, people: dict[str, Any], tmp_path: Path
) -> None:
    async with Bot(fake_webex, make_settings(fake_webex, db_url(tmp_path))) as bot:
        own = fake_webex.add_message(people["direct"]["id"], fake_webex.bot, "I am the bot")
        resp = await bot.post(fake_webex.message_created_envelope(own))
        assert resp.status == 200 and (await resp.json())["reason"] == "the bot's own event"
        other = fake_webex.webhook_envelope("rooms", "created", {"id": "room-1"})
        assert (await bot.post(other)).status == 200
        robot = fake_webex.add_person("other@webex.bot", "Other Bot", type="bot")
        theirs = fake_webex.add_message(people["direct"]["id"], robot, "beep")
        assert (await bot.post(fake_webex.message_created_envelope(theirs))).status == 200
        await asyncio.sleep(0.3)
        assert fake_webex.posted_messages == []
        assert not [r for r in fake_webex.requests if r.method == "GET" and r.path.startswith("/messages/")]


async def test_redelivery_is_answered_once_also_after_restart(
    fake_webex: FakeWebex, people: dict[str, Any], tmp_path: Path
) -> None:
    settings = make_settings(fake_webex, db_url(tmp_path))
    msg = fake_webex.add_message(people["direct"]["id"], people["alice"], "blank screen at sign in")
    envelope = fake_webex.message_created_envelope(msg)
    async with Bot(fake_webex, settings) as bot:
        assert (await (await bot.post(envelope)).json())["status"] == "queued"
        assert (await (await bot.post(envelope)).json())["status"] == "duplicate"
        await wait_for(lambda: len(fake_webex.posted_messages) == 1, what="the reply")
        await bot.idle()
    async with Bot(fake_webex, settings) as bot:
        resp = await bot.post(envelope)
        assert resp.status == 200 and (await resp.json())["status"] == "duplicate"
        await asyncio.sleep(0.3)
    assert len(fake_webex.posted_messages) == 1


async def test_group_mention_is_stripped_and_reply_is_threaded(
    fake_webex: FakeWebex, people: dict[str, Any], tmp_path: Path
) -> None:
    async with Bot(fake_webex, make_settings(fake_webex, db_url(tmp_path))) as bot:
        room = people["group"]["id"]
        # Webex sometimes puts the bare UUID rather than the REST id in the mention.
        html = (
            f'<p><spark-mention data-object-type="person" data-object-id="{bare_uuid(fake_webex.bot["id"])}">'
            "Helpdesk</spark-mention> blnk screen when I sign in</p>"
        )
        top = fake_webex.add_message(room, people["alice"], "Helpdesk blnk screen when I sign in", html=html)
        await bot.post(fake_webex.message_created_envelope(top))
        await wait_for(lambda: len(fake_webex.posted_messages) == 1, what="the first reply")
        first = fake_webex.posted_messages[0]
        assert first["parentId"] == top["id"]
        assert "blank" in first["markdown"].lower()
        # A message inside a thread is answered in that same thread.
        inner = fake_webex.add_message(room, people["alice"], "Helpdesk help", parent_id=top["id"])
        await bot.post(fake_webex.message_created_envelope(inner))
        await wait_for(lambda: len(fake_webex.posted_messages) == 2, what="the threaded reply")
        assert fake_webex.posted_messages[1]["parentId"] == top["id"]


async def test_card_feedback_is_recorded_and_acknowledged_in_thread(
    fake_webex: FakeWebex, people: dict[str, Any], tmp_path: Path
) -> None:
    async with Bot(fake_webex, make_settings(fake_webex, db_url(tmp_path))) as bot:
        room = people["group"]["id"]
        top = fake_webex.add_message(room, people["alice"], "Error: 1000:603")
        await bot.post(fake_webex.message_created_envelope(top))
        await wait_for(lambda: len(fake_webex.posted_messages) == 1, what="the fix card")
        card_message = next(m for m in fake_webex.messages.values() if m.get("attachments"))
        yes = next(
            d
            for d in submits(card_of(fake_webex.posted_messages[0]))
            if d.get("verb") == "feedback" and d["helpful"]
        )
        assert parse_submit(yes) is not None
        action = fake_webex.add_attachment_action(card_message["id"], people["alice"], yes)
        envelope = fake_webex.action_created_envelope(action)
        assert (await bot.post(envelope)).status == 200
        await wait_for(lambda: len(fake_webex.posted_messages) == 2, what="the feedback ack")
        ack = fake_webex.posted_messages[1]
        assert ack["parentId"] == top["id"] and "thanks" in ack["markdown"].lower()
        assert await votes(bot) == (1, 0)
        # The same submit delivered again counts once.
        await bot.post(envelope)
        await asyncio.sleep(0.2)
        assert await votes(bot) == (1, 0)


async def test_forged_submit_is_ignored(
    fake_webex: FakeWebex, people: dict[str, Any], tmp_path: Path
) -> None:
    async with Bot(fake_webex, make_settings(fake_webex, db_url(tmp_path))) as bot:
        posted = await bot.app[CONTEXT].webex.post_message(
            {"roomId": people["direct"]["id"], "markdown": "card"}
        )
        for inputs in ({"verb": "delete_everything"}, {"verb": "feedback", "helpful": "maybe"}, {}):
            action = fake_webex.add_attachment_action(posted.id, people["alice"], inputs)
            assert (await bot.post(fake_webex.action_created_envelope(action))).status == 200
        await bot.idle()
        assert len(fake_webex.posted_messages) == 1  # only the message this test posted itself


async def test_clarify_choice_shows_the_article(
    fake_webex: FakeWebex, people: dict[str, Any], tmp_path: Path
) -> None:
    async with Bot(fake_webex, make_settings(fake_webex, db_url(tmp_path))) as bot:
        msg = fake_webex.add_message(people["direct"]["id"], people["alice"], "okta")
        await bot.post(fake_webex.message_created_envelope(msg))
        await wait_for(lambda: len(fake_webex.posted_messages) == 1, what="a reply")
        shows = [d for d in submits(card_of(fake_webex.posted_messages[0])) if d.get("verb") == "show"]
        assert shows, "a clarify or fix card offers other articles to show"
        card_message = next(m for m in fake_webex.messages.values() if m.get("attachments"))
        action = fake_webex.add_attachment_action(card_message["id"], people["alice"], shows[0])
        await bot.post(fake_webex.action_created_envelope(action))
        await wait_for(lambda: len(fake_webex.posted_messages) == 2, what="the article")
        assert card_of(fake_webex.posted_messages[1])["type"] == "AdaptiveCard"


async def test_slow_webex_does_not_slow_the_ack(
    fake_webex: FakeWebex, people: dict[str, Any], tmp_path: Path
) -> None:
    # Webex stalls every message fetch for 2 s; the acks must not wait for it. Asserted by order of events,
    # not by a stopwatch (latency numbers live in bench/).
    fake_webex.delay("GET", "/messages/", 2.0)
    async with Bot(fake_webex, make_settings(fake_webex, db_url(tmp_path))) as bot:
        for n in range(20):
            msg = fake_webex.add_message(people["direct"]["id"], people["alice"], f"Error: 1000:1002 #{n}")
            resp = await bot.post(fake_webex.message_created_envelope(msg))
            assert resp.status == 200
        assert fake_webex.posted_messages == [], "every ack came back while Webex was still stalled"
        await wait_for(lambda: len(fake_webex.posted_messages) == 20, timeout=20, what="all replies")


async def test_final_failure_tells_the_user(
    fake_webex: FakeWebex, people: dict[str, Any], tmp_path: Path
) -> None:
    # The message vanished (404): retrying can't help, but the person still hears something honest.
    fake_webex.fail_next("GET", "/messages/", status=404)
    async with Bot(fake_webex, make_settings(fake_webex, db_url(tmp_path))) as bot:
        msg = fake_webex.add_message(people["direct"]["id"], people["alice"], "Error: 1000:1002")
        await bot.post(fake_webex.message_created_envelope(msg))
        await wait_for(lambda: len(fake_webex.posted_messages) == 1, what="the apology")
        assert "couldn't answer" in fake_webex.posted_messages[0]["markdown"]
        await bot.idle()
        event = await stored_event(bot.settings.database_url, msg["id"])
        assert event is not None and event.status == "dead" and "404" in (event.last_error or "")


async def test_429_then_success_replies_once(
    fake_webex: FakeWebex, people: dict[str, Any], tmp_path: Path
) -> None:
    fake_webex.fail_next("POST", "/messages", status=429, retry_after="1")
    async with Bot(fake_webex, make_settings(fake_webex, db_url(tmp_path))) as bot:
        msg = fake_webex.add_message(people["direct"]["id"], people["alice"], "SSOCertificateError")
        await bot.post(fake_webex.message_created_envelope(msg))
        await wait_for(lambda: len(fake_webex.posted_messages) == 1, what="the reply after a 429")
        await bot.idle()
    attempts = [r for r in fake_webex.requests if r.method == "POST" and r.path == "/messages"]
    assert [r.status for r in attempts] == [429, 200]


async def test_outage_retries_then_answers(
    fake_webex: FakeWebex, people: dict[str, Any], tmp_path: Path
) -> None:
    # More 503s than the client retries in one attempt: the worker's retry schedule takes over.
    fake_webex.fail_next("GET", "/messages/", status=503, times=6)
    async with Bot(fake_webex, make_settings(fake_webex, db_url(tmp_path))) as bot:
        msg = fake_webex.add_message(people["direct"]["id"], people["alice"], "Error: 1000:1005")
        await bot.post(fake_webex.message_created_envelope(msg))
        await wait_for(
            lambda: len(fake_webex.posted_messages) == 1, timeout=30, what="the reply after an outage"
        )
        event = await stored_event(bot.settings.database_url, msg["id"])
        assert event is not None and event.attempts >= 2


async def test_other_domains_are_refused(
    fake_webex: FakeWebex, people: dict[str, Any], tmp_path: Path
) -> None:
    settings = make_settings(fake_webex, db_url(tmp_path), allowed_email_domains="corp.example")
    async with Bot(fake_webex, settings) as bot:
        msg = fake_webex.add_message(people["direct"]["id"], people["alice"], "Error: 1000:1002")
        await bot.post(fake_webex.message_created_envelope(msg))
        await wait_for(lambda: len(fake_webex.posted_messages) == 1, what="the refusal")
        reply = fake_webex.posted_messages[0]
        assert "1000:1002" not in reply["markdown"] and not reply.get("attachments")


async def test_health_ready_and_metrics(
    fake_webex: FakeWebex, people: dict[str, Any], tmp_path: Path
) -> None:
    async with Bot(fake_webex, make_settings(fake_webex, db_url(tmp_path))) as bot:
        assert (await (await bot.client.get("/healthz")).json()) == {"status": "ok"}
        ready = await bot.client.get("/readyz")
        body = await ready.json()
        assert ready.status == 200 and body["ready"] and body["bot"]["id"] == fake_webex.bot["id"]
        msg = fake_webex.add_message(people["direct"]["id"], people["alice"], "the printer is jammed")
        await bot.post(fake_webex.message_created_envelope(msg))
        await wait_for(lambda: len(fake_webex.posted_messages) == 1, what="the not-sure reply")
        await bot.idle()
        text = await (await bot.client.get("/metrics")).text()
        assert 'bot_events_received_total{resource="messages"} 1.0' in text
        assert 'bot_triage_outcomes_total{outcome="none"} 1.0' in text
        assert 'bot_replies_sent_total{kind="triage-none"} 1.0' in text
        assert 'bot_webex_api_calls_total{endpoint="/messages",method="POST",status="200"} 1.0' in text


async def test_not_ready_until_identity_known(fake_webex: FakeWebex, tmp_path: Path) -> None:
    fake_webex.fail_next("GET", "/people/me", status=503, times=50)
    bot = Bot(fake_webex, make_settings(fake_webex, db_url(tmp_path)))
    await bot.client.start_server()
    try:
        resp = await bot.client.get("/readyz")
        assert resp.status == 503
        assert (await resp.json())["checks"]["webex_identity"] is False
    finally:
        await bot.client.close()


async def test_the_server_purges_handled_events_past_retention(
    fake_webex: FakeWebex, people: dict[str, Any], tmp_path: Path
) -> None:
    # Retention of one second, checked every second: the handled event goes, and the conversation log with it.
    url = db_url(tmp_path)
    settings = make_settings(fake_webex, url, retention_days=1 / 86400, purge_interval_seconds=1)
    async with Bot(fake_webex, settings) as bot:
        msg = fake_webex.add_message(people["direct"]["id"], people["alice"], "blank screen after login")
        assert (await bot.post(fake_webex.message_created_envelope(msg))).status == 200
        await wait_for(lambda: len(fake_webex.posted_messages) == 1, what="the reply")
        await bot.idle()
        store = bot.app[CONTEXT].store
        deadline = asyncio.get_running_loop().time() + 10
        while await stored_event(url, msg["id"]) is not None:
            assert asyncio.get_running_loop().time() < deadline, "the periodic purge never deleted the event"
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # one more round for what was written after the event was marked done
        assert await fetch_all(url, select(messages_log)) == []
        # The ticket-free conversation is gone; the stats' triage record stays.
        assert (await store.stats(since=datetime.now(UTC) - timedelta(days=1))).messages_triaged == 1
