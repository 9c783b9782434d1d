"""The helpdesk handoff end to end: escalate, file, claim, resolve, reopen, and the ITSM outbox."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bot.keys import CONTEXT
from tests.fakewebex import FakeWebex
from tests.harness import FAST_WORKER, Bot, db_url, make_settings, verb, wait_for


class Receiver:
    """A real HTTP endpoint standing in for ServiceNow/Jira: fails the first `fail` deliveries."""

    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.received: list[dict[str, Any]] = []
        self.attempts = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if self.attempts <= self.fail:
            return web.Response(status=500)
        body = await request.read()
        self.received.append(
            {"body": json.loads(body), "raw": body, "signature": request.headers.get("X-Helpdesk-Signature")}
        )
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/itsm", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/itsm"

    async def close(self) -> None:
        if self.runner:
            await self.runner.cleanup()


@pytest.fixture
def world(fake_webex: FakeWebex) -> dict[str, Any]:
    alice = fake_webex.add_person("alice@example.com", "Alice Doe")
    sam = fake_webex.add_person("sam@example.com", "Sam Agent")
    pat = fake_webex.add_person("pat@example.com", "Pat Agent")
    mallory = fake_webex.add_person("mallory@example.com", "Mallory Outsider")
    sales = fake_webex.add_room("group", "Sales floor")
    helpdesk = fake_webex.add_room("group", "Helpdesk")
    fake_webex.add_membership(helpdesk["id"], sam["id"])
    fake_webex.add_membership(helpdesk["id"], pat["id"])
    return {"alice": alice, "sam": sam, "pat": pat, "mallory": mallory, "sales": sales, "helpdesk": helpdesk}


def posted_in(fake: FakeWebex, room_id: str) -> list[dict[str, Any]]:
    return [m for m in fake.posted_messages if m["roomId"] == room_id]


def bot_message(fake: FakeWebex, body: dict[str, Any]) -> dict[str, Any]:
    """The stored message (with its id) for a posted body."""
    return next(m for m in reversed(list(fake.messages.values())) if m.get("markdown") == body["markdown"])


async def click(
    bot: Bot, fake: FakeWebex, posted: dict[str, Any], person: dict[str, Any], data: dict[str, Any]
) -> None:
    action = fake.add_attachment_action(bot_message(fake, posted)["id"], person, data)
    resp = await bot.post(fake.action_created_envelope(action))
    assert resp.status == 200


async def test_escalate_claim_resolve_reopen(
    fake_webex: FakeWebex, world: dict[str, Any], tmp_path: Path
) -> None:
    receiver = Receiver(fail=2)
    await receiver.start()
    settings = make_settings(
        fake_webex,
        db_url(tmp_path),
        helpdesk_room_id=world["helpdesk"]["id"],
        ticket_webhook_url=receiver.url,
        ticket_webhook_secret="itsm-secret",
    )
    sales, helpdesk, alice = world["sales"]["id"], world["helpdesk"]["id"], world["alice"]
    try:
        async with Bot(fake_webex, settings) as bot:
            top = fake_webex.add_message(sales, alice, "Error: 1000:1002 on phone services")
            await bot.post(fake_webex.message_created_envelope(top))
            await wait_for(lambda: len(fake_webex.posted_messages) == 1, what="the fix card")
            fix = fake_webex.posted_messages[0]

            # Contact the helpdesk -> a card asking for an optional note.
            await click(bot, fake_webex, fix, alice, verb(fix, "escalate"))
            await wait_for(lambda: len(fake_webex.posted_messages) == 2, what="the note card")
            note_card = fake_webex.posted_messages[1]
            assert note_card["parentId"] == top["id"]
            filing = verb(note_card, "file_ticket") | {"note": "restarted twice; my password is hunter2!"}
            await click(bot, fake_webex, note_card, alice, filing)
            await wait_for(lambda: len(posted_in(fake_webex, helpdesk)) == 1, what="the ticket card")
            ticket_post = posted_in(fake_webex, helpdesk)[0]
            text = json.dumps(ticket_post)
            assert "HD-" in ticket_post["markdown"]
            assert "1000:1002" in text and "Alice Doe" in text and "alice@example.com" in text
            assert "hunter2" not in text and "redacted" in text
            number = verb(ticket_post, "claim")["number"]
            await wait_for(
                lambda: any(number in m["markdown"] for m in posted_in(fake_webex, sales)),
                what="confirmation",
            )
            confirmation = next(m for m in posted_in(fake_webex, sales) if number in m["markdown"])
            assert confirmation["parentId"] == top["id"]

            # A non-member cannot claim; a member can; a second claim changes nothing.
            await click(bot, fake_webex, ticket_post, world["mallory"], verb(ticket_post, "claim"))
            await wait_for(lambda: len(posted_in(fake_webex, helpdesk)) == 2, what="the refusal")
            assert "only members of the helpdesk" in posted_in(fake_webex, helpdesk)[1]["markdown"]
            before_claim = len(fake_webex.requests)
            await click(bot, fake_webex, ticket_post, world["sam"], verb(ticket_post, "claim"))
            await wait_for(
                lambda: any("is on it" in m["markdown"] for m in posted_in(fake_webex, sales)),
                what="claim notice",
            )
            # The ticket knows where its requester's notices go: no GET of the thread's first message.
            thread_reads = [
                r
                for r in fake_webex.requests[before_claim:]
                if r.method == "GET" and r.path == f"/messages/{top['id']}"
            ]
            assert thread_reads == []
            notice = next(m for m in posted_in(fake_webex, sales) if "is on it" in m["markdown"])
            assert (
                notice["markdown"].startswith("Sam from the helpdesk is on it")
                and notice["parentId"] == top["id"]
            )
            await click(bot, fake_webex, ticket_post, world["pat"], verb(ticket_post, "claim"))
            await wait_for(
                lambda: any(
                    "already claimed by Sam" in m["markdown"] for m in posted_in(fake_webex, helpdesk)
                ),
                what="the double-claim answer",
            )
            ticket = await bot.app[CONTEXT].store.get_ticket(number)
            assert ticket is not None and ticket.status == "claimed" and ticket.assignee_name == "Sam Agent"

            # Resolve with a note -> the requester is told and asked; "No" reopens.
            await click(
                bot,
                fake_webex,
                ticket_post,
                world["sam"],
                verb(ticket_post, "resolve") | {"resolution": "Reset the phone profile"},
            )
            await wait_for(
                lambda: any("is resolved" in m["markdown"] for m in posted_in(fake_webex, sales)),
                what="resolution",
            )
            resolved = next(m for m in posted_in(fake_webex, sales) if "is resolved" in m["markdown"])
            assert "Reset the phone profile" in json.dumps(resolved)
            await click(bot, fake_webex, resolved, alice, verb(resolved, "ticket_fixed", fixed=False))
            await wait_for(
                lambda: any("reopened" in m["markdown"] for m in posted_in(fake_webex, helpdesk)),
                what="reopen notice",
            )
            ticket = await bot.app[CONTEXT].store.get_ticket(number)
            assert ticket is not None and ticket.status == "open" and ticket.reopened == 1

            # The ITSM receiver failed twice, then got every event, in order, signed.
            await wait_for(lambda: len(receiver.received) >= 4, timeout=15, what="outbox deliveries")
            events = [r["body"]["event"] for r in receiver.received]
            assert events == ["ticket.created", "ticket.claimed", "ticket.resolved", "ticket.reopened"]
            for r in receiver.received:
                expected = "sha256=" + hmac.new(b"itsm-secret", r["raw"], hashlib.sha256).hexdigest()
                assert r["signature"] == expected
    finally:
        await receiver.close()


async def test_helpdesk_asks_for_info_and_the_answer_comes_back(
    fake_webex: FakeWebex, world: dict[str, Any], tmp_path: Path
) -> None:
    settings = make_settings(fake_webex, db_url(tmp_path), helpdesk_room_id=world["helpdesk"]["id"])
    direct = fake_webex.add_room("direct", "Alice")
    helpdesk, alice = world["helpdesk"]["id"], world["alice"]
    async with Bot(fake_webex, settings) as bot:
        msg = fake_webex.add_message(direct["id"], alice, "talk to a human")
        await bot.post(fake_webex.message_created_envelope(msg))
        await wait_for(lambda: len(fake_webex.posted_messages) == 1, what="the note card")
        note_card = fake_webex.posted_messages[0]
        await click(bot, fake_webex, note_card, alice, verb(note_card, "file_ticket") | {"note": ""})
        await wait_for(lambda: len(posted_in(fake_webex, helpdesk)) == 1, what="the ticket")
        ticket_post = posted_in(fake_webex, helpdesk)[0]
        ask = verb(ticket_post, "ask_info") | {"question": "Which laptop are you on?"}
        await click(bot, fake_webex, ticket_post, world["sam"], ask)
        await wait_for(
            lambda: any("asks about" in m["markdown"] for m in posted_in(fake_webex, direct["id"])),
            what="question",
        )
        question = next(m for m in posted_in(fake_webex, direct["id"]) if "asks about" in m["markdown"])
        assert "parentId" not in question  # direct spaces reply plainly
        await click(bot, fake_webex, question, alice, verb(question, "answer_info") | {"answer": "The Mac"})
        await wait_for(
            lambda: any("The Mac" in m["markdown"] for m in posted_in(fake_webex, helpdesk)),
            what="the answer",
        )
        answer = next(m for m in posted_in(fake_webex, helpdesk) if "The Mac" in m["markdown"])
        assert answer["parentId"] == bot_message(fake_webex, ticket_post)["id"]  # in the ticket's thread

        # Employees see their own tickets only; someone else gets nothing.
        mine = fake_webex.add_message(direct["id"], alice, "my tickets")
        await bot.post(fake_webex.message_created_envelope(mine))
        number = verb(ticket_post, "claim")["number"]
        await wait_for(
            lambda: "Your tickets" in fake_webex.posted_messages[-1]["markdown"], what="my tickets"
        )
        assert number in fake_webex.posted_messages[-1]["markdown"]
        other_room = fake_webex.add_room("direct", "Mallory")
        peek = fake_webex.add_message(other_room["id"], world["mallory"], f"ticket {number}")
        await bot.post(fake_webex.message_created_envelope(peek))
        await wait_for(lambda: posted_in(fake_webex, other_room["id"]) != [], what="the answer to mallory")
        assert "can't find" in posted_in(fake_webex, other_room["id"])[0]["markdown"]
        # The helpdesk lists the queue in its own space.
        queue = fake_webex.add_message(helpdesk, world["sam"], "tickets")
        await bot.post(fake_webex.message_created_envelope(queue))
        await wait_for(
            lambda: "Open and claimed" in posted_in(fake_webex, helpdesk)[-1]["markdown"], what="queue"
        )
        assert number in posted_in(fake_webex, helpdesk)[-1]["markdown"]


async def test_redelivered_filing_makes_one_ticket_and_survives_restart(
    fake_webex: FakeWebex, world: dict[str, Any], tmp_path: Path
) -> None:
    settings = make_settings(fake_webex, db_url(tmp_path), helpdesk_room_id=world["helpdesk"]["id"])
    direct = fake_webex.add_room("direct", "Alice")
    async with Bot(fake_webex, settings) as bot:
        msg = fake_webex.add_message(direct["id"], world["alice"], "escalate")
        await bot.post(fake_webex.message_created_envelope(msg))
        await wait_for(lambda: len(fake_webex.posted_messages) == 1, what="the note card")
        card_post = fake_webex.posted_messages[0]
        action = fake_webex.add_attachment_action(
            bot_message(fake_webex, card_post)["id"], world["alice"], verb(card_post, "file_ticket")
        )
        envelope = fake_webex.action_created_envelope(action)
        await bot.post(envelope)
        await bot.post(envelope)
        await wait_for(lambda: len(posted_in(fake_webex, world["helpdesk"]["id"])) == 1, what="one ticket")
        await bot.idle()
    async with Bot(fake_webex, settings, FAST_WORKER) as bot:
        assert (await (await bot.post(envelope)).json())["status"] == "duplicate"
        tickets = await bot.app[CONTEXT].store.tickets_for_requester(world["alice"]["id"])
        assert len(tickets) == 1 and tickets[0].status == "open"
        await asyncio.sleep(0.2)
    assert len(posted_in(fake_webex, world["helpdesk"]["id"])) == 1
