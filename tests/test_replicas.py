"""Two replicas of the app on one PostgreSQL database and one (fake) Webex: one effect per event and per click,
and a knowledge reload on one reaches the other."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import shutil
from collections import defaultdict
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from bot.keys import CONTEXT
from bot.store import Store
from tests.conftest import KNOWLEDGE_DIR
from tests.fakewebex import FakeWebex
from tests.harness import FAST_WORKER, Bot, make_settings, verb
from tests.procs import Receiver, bot_messages, fresh_pg_database, pg_fetch, pg_url, until, until_async


@pytest.fixture
async def database() -> AsyncIterator[str]:
    async with fresh_pg_database("test_replicas") as name:
        yield name


@pytest.fixture
def world(fake_webex: FakeWebex) -> dict[str, Any]:
    alice = fake_webex.add_person("alice@example.com", "Alice Doe")
    sam = fake_webex.add_person("sam@example.com", "Sam Agent")
    pat = fake_webex.add_person("pat@example.com", "Pat Agent")
    sales = fake_webex.add_room("group", "Sales floor")
    helpdesk = fake_webex.add_room("group", "Helpdesk")
    fake_webex.add_membership(helpdesk["id"], sam["id"])
    fake_webex.add_membership(helpdesk["id"], pat["id"])
    return {"alice": alice, "sam": sam, "pat": pat, "sales": sales["id"], "helpdesk": helpdesk["id"]}


def replies_sent(bot: Bot) -> float:
    registry = bot.app[CONTEXT].metrics.registry
    return sum(
        sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == "bot_replies_sent_total"
    )


async def to_both(a: Bot, b: Bot, envelope: dict[str, Any]) -> list[str]:
    """Deliver one webhook to both replicas at the same moment; returns their answers."""
    responses = await asyncio.gather(a.post(envelope), b.post(envelope))
    assert [r.status for r in responses] == [200, 200]
    return sorted([(await r.json())["status"] for r in responses])


async def test_the_same_webhooks_on_both_replicas_get_one_reply_each(
    fake_webex: FakeWebex, world: dict[str, Any], database: str
) -> None:
    settings = make_settings(fake_webex, pg_url(database))
    texts = ["Error: 1000:1002", "blank screen when I sign in", "help", "okta setup", "sso failed", "hello"]
    # Few slots per replica, so that neither can take every event in one claim and both do some of the work.
    narrow = dataclasses.replace(FAST_WORKER, concurrency=2)
    async with Bot(fake_webex, settings, narrow) as a, Bot(fake_webex, settings, narrow) as b:
        fake_webex.delay("GET", "/messages/", 0.1)  # keeps both workers busy at once
        msgs = [
            fake_webex.add_message(world["sales"], world["alice"], f"{t} ({n})")
            for n, t in enumerate(texts * 2)
        ]
        answers = await asyncio.gather(*(to_both(a, b, fake_webex.message_created_envelope(m)) for m in msgs))
        # The unique event id decides: one replica queues it, the other sees a duplicate.
        assert answers == [["duplicate", "queued"]] * len(msgs)
        await until(lambda: all(bot_messages(fake_webex, parent_id=m["id"]) for m in msgs), 15, "every reply")
        await a.idle()
        await b.idle()
        await asyncio.sleep(0.3)
        counts = [len(bot_messages(fake_webex, parent_id=m["id"])) for m in msgs]
        assert counts == [1] * len(msgs)
        # Both replicas did part of the work, and between them posted exactly one reply per event.
        assert replies_sent(a) + replies_sent(b) == len(msgs)
        assert replies_sent(a) > 0 and replies_sent(b) > 0
        rows = await pg_fetch(database, "SELECT status, attempts FROM inbox")
        assert len(rows) == len(msgs) and {(r["status"], r["attempts"]) for r in rows} == {("done", 1)}


async def file_tickets(bot: Bot, fake: FakeWebex, world: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """n tickets filed by Alice through the bot; returns their cards in the helpdesk space."""
    for i in range(n):
        ask = fake.add_message(world["sales"], world["alice"], "talk to a human")
        assert (await bot.post(fake.message_created_envelope(ask))).status == 200
        note_cards = partial(bot_messages, fake, world["sales"], parent_id=ask["id"])
        await until(lambda: bool(note_cards()), 10, "the note card")  # noqa: B023 - awaited inside this iteration
        note_card = note_cards()[0]
        action = fake.add_attachment_action(note_card["id"], world["alice"], verb(note_card, "file_ticket"))
        assert (await bot.post(fake.action_created_envelope(action))).status == 200
        filed = i + 1
        await until(lambda: len(bot_messages(fake, world["helpdesk"])) == filed, 10, "the ticket card")  # noqa: B023 - awaited inside this iteration
    return bot_messages(fake, world["helpdesk"])


async def test_two_claims_at_once_on_two_replicas_one_wins(
    fake_webex: FakeWebex, world: dict[str, Any], database: str
) -> None:
    settings = make_settings(fake_webex, pg_url(database), helpdesk_room_id=world["helpdesk"])
    helpdesk = world["helpdesk"]
    async with Bot(fake_webex, settings) as a, Bot(fake_webex, settings) as b:
        cards = await file_tickets(a, fake_webex, world, 3)
        for card in cards:
            number = verb(card, "claim")["number"]
            sam = fake_webex.add_attachment_action(card["id"], world["sam"], verb(card, "claim"))
            pat = fake_webex.add_attachment_action(card["id"], world["pat"], verb(card, "claim"))
            # Sam's click reaches replica A and Pat's replica B, at the same moment.
            acks = await asyncio.gather(
                a.post(fake_webex.action_created_envelope(sam)),
                b.post(fake_webex.action_created_envelope(pat)),
            )
            assert [r.status for r in acks] == [200, 200]
            under = partial(bot_messages, fake_webex, helpdesk, parent_id=card["id"])
            await until(lambda: len(under()) >= 2, 10, f"both answers under {number}")  # noqa: B023 - awaited inside this iteration
        await a.idle()
        await b.idle()
        await asyncio.sleep(0.3)
        store: Store = a.app[CONTEXT].store
        for card in cards:
            number = verb(card, "claim")["number"]
            ticket = await store.get_ticket(number)
            assert ticket is not None and ticket.status == "claimed"
            winner = ticket.assignee_name
            assert winner in ("Sam Agent", "Pat Agent")
            answers = sorted(m["markdown"] for m in bot_messages(fake_webex, helpdesk, parent_id=card["id"]))
            assert answers == sorted(
                [f"{winner} claimed {number}.", f"{number} is already claimed by {winner}. Nothing changed."]
            ), answers
            notices = [
                m for m in bot_messages(fake_webex, world["sales"]) if f"is on it ({number})" in m["markdown"]
            ]
            assert len(notices) == 1 and notices[0]["markdown"].startswith(winner.split()[0])
        claimed = await pg_fetch(database, "SELECT count(*) AS n FROM outbox WHERE event = 'ticket.claimed'")
        assert claimed[0]["n"] == len(cards)


async def test_outbox_with_two_replicas_delivers_each_event_once_in_order(
    fake_webex: FakeWebex, database: str
) -> None:
    receiver = await Receiver(delay=0.02).start()
    settings = make_settings(fake_webex, pg_url(database), ticket_webhook_url=receiver.url)
    tickets, steps = 8, ["created", "claimed", "resolved", "reopened"]
    try:
        async with Bot(fake_webex, settings), Bot(fake_webex, settings):
            store = await Store.open(pg_url(database))
            try:

                async def life_of_a_ticket(i: int) -> None:
                    ticket, _ = await store.create_ticket(
                        dedupe_key=f"action-{i}",
                        requester_id="alice",
                        requester_email="alice@example.com",
                        requester_name="Alice Doe",
                        room_id="room",
                        thread_id=None,
                        original_text=f"problem {i}",
                        codes=[],
                        articles=[],
                        steps_suggested=[],
                        note=None,
                        transcript=[],
                        reply_parent=None,
                    )
                    await asyncio.sleep(0.01 * (i % 3))
                    assert await store.claim_ticket(ticket.number, assignee_id="sam", assignee_name="Sam")
                    assert await store.resolve_ticket(
                        ticket.number, by_id="sam", by_name="Sam", resolution="ok"
                    )
                    assert await store.reopen_ticket(ticket.number, requester_id="alice")

                await asyncio.gather(*(life_of_a_ticket(i) for i in range(tickets)))
            finally:
                await store.close()

            async def all_delivered() -> bool:
                rows = await pg_fetch(database, "SELECT status FROM outbox")
                return len(rows) == tickets * len(steps) and all(r["status"] == "delivered" for r in rows)

            await until_async(all_delivered, 20, "every outbox event to be delivered")
            await asyncio.sleep(0.3)
        ids = [d.delivery_id for d in receiver.deliveries]
        assert len(ids) == len(set(ids)) == tickets * len(steps), "each event delivered exactly once"
        per_ticket: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for d in receiver.deliveries:
            per_ticket[d.body["number"]].append((d.body["sequence"], d.event))
        assert len(per_ticket) == tickets
        expected = [(n, f"ticket.{step}") for n, step in enumerate(steps, 1)]
        for number, seen in per_ticket.items():
            assert re.fullmatch(r"HD-\d+", number)
            assert seen == expected, f"{number} arrived out of order: {seen}"
        # Both replicas really delivered at once (each deliverer alone sends one at a time).
        assert receiver.max_in_flight >= 2
    finally:
        await receiver.close()


async def test_reload_knowledge_on_one_replica_reloads_the_other_and_counts_them(
    fake_webex: FakeWebex, world: dict[str, Any], database: str, tmp_path: Path
) -> None:
    folders = {name: tmp_path / name for name in ("a", "b")}
    for folder in folders.values():
        shutil.copytree(KNOWLEDGE_DIR, folder)
    ada = fake_webex.add_person("ada@example.com", "Ada Admin")
    ada_room = fake_webex.add_room("direct", "Ada")
    common = {"admin_emails": "ada@example.com", "replica_check_seconds": 0.2}
    a_settings = make_settings(fake_webex, pg_url(database), knowledge_dir=folders["a"], **common)
    b_settings = make_settings(fake_webex, pg_url(database), knowledge_dir=folders["b"], **common)

    async def reload_on(bot: Bot) -> str:
        ask = fake_webex.add_message(ada_room["id"], ada, "reload knowledge")
        assert (await bot.post(fake_webex.message_created_envelope(ask))).status == 200
        await until(
            lambda: "Knowledge" in (fake_webex.posted_messages or [{}])[-1].get("markdown", ""),
            20,
            "the reply",
        )
        markdown: str = fake_webex.posted_messages[-1]["markdown"]
        return markdown

    def first_step(bot: Bot) -> str:
        return bot.app[CONTEXT].knowledge.kb.articles["okta-saml-setup"].steps[0].text

    async with Bot(fake_webex, a_settings) as a, Bot(fake_webex, b_settings) as b:
        for folder in folders.values():  # the same edit deployed to both
            setup = folder / "setup.toml"
            setup.write_text(setup.read_text().replace('detail = "', 'detail = "First: ', 1))
        reply = await reload_on(a)
        assert "Knowledge reloaded" in reply and "okta-saml-setup" in reply
        assert "Replicas: 2 of 2 took it." in reply, reply
        # B reloaded without being asked, and answers from the new knowledge.
        assert first_step(b).startswith("First: ") and first_step(a).startswith("First: ")
        answer = fake_webex.add_message(world["sales"], world["alice"], "okta setup")
        assert (await b.post(fake_webex.message_created_envelope(answer))).status == 200
        await until(lambda: bool(bot_messages(fake_webex, parent_id=answer["id"])), 10, "B's answer")
        assert "First: " in bot_messages(fake_webex, parent_id=answer["id"])[0]["markdown"]

        # B's files break; A's are fine: A reloads, B keeps what it had and says why.
        errors = folders["b"] / "errors.toml"
        errors.write_text(errors.read_text().replace('category = "sso"', 'category = "telepathy"', 1))
        setup = folders["a"] / "setup.toml"
        setup.write_text(setup.read_text().replace('detail = "First: ', 'detail = "Second: ', 1))
        reply = await reload_on(a)
        assert "Replicas: 1 of 2 took it." in reply, reply
        assert (
            "kept its old knowledge: 6 problems, the first: errors.toml: error(10) (1000:400): category"
            in reply
        )
        assert first_step(a).startswith("Second: ") and first_step(b).startswith("First: ")
        versions = await pg_fetch(database, "SELECT knowledge_version, knowledge_error FROM replicas")
        assert sorted(r["knowledge_version"] for r in versions) == [2, 2]
        assert sum(r["knowledge_error"] is not None for r in versions) == 1
    # A clean stop leaves the count.
    assert await pg_fetch(database, "SELECT replica_id FROM replicas") == []
