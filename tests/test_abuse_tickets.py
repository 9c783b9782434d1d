"""Forged and repeated card submits against the ticket flow, and replies that must land in the right thread."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from bot.keys import CONTEXT
from tests.fakewebex import FakeWebex
from tests.harness import Bot, db_url, make_settings, verb, votes
from tests.test_injection import Json, click, quiet, say, stored, world

__all__ = ["world"]  # the fixture, shared with tests/test_injection.py


@pytest_asyncio.fixture
async def bot(fake_webex: FakeWebex, world: Json, tmp_path: Path) -> AsyncIterator[Bot]:
    settings = make_settings(
        fake_webex, db_url(tmp_path), helpdesk_room_id=world["helpdesk"]["id"], tickets_per_hour=3
    )
    async with Bot(fake_webex, settings) as started:
        yield started


def in_helpdesk(fake: FakeWebex, world: Json) -> list[Json]:
    return [p for p in fake.posted_messages if p["roomId"] == world["helpdesk"]["id"]]


async def test_one_escalation_card_files_one_ticket_and_a_second_escalation_points_to_it(
    bot: Bot, fake_webex: FakeWebex, world: Json
) -> None:
    top, note_card = await say(bot, fake_webex, world["sales"], world["alice"], "talk to a human")
    filing = verb(note_card, "file_ticket")
    card_id = stored(fake_webex, note_card)["id"]
    # The same card submitted 30 times at once, as a script would.
    await asyncio.gather(*(click(bot, fake_webex, card_id, world["alice"], filing) for _ in range(30)))
    await quiet(bot)
    tickets = await bot.app[CONTEXT].store.tickets_for_requester(world["alice"]["id"])
    assert len(tickets) == 1
    number = tickets[0].number
    assert len(in_helpdesk(fake_webex, world)) == 1, "one ticket card"
    pointers = [p for p in fake_webex.posted_messages if f"{number} is already open" in p["markdown"]]
    assert len(pointers) == 29 and all(p.get("parentId") == top["id"] for p in pointers)
    # Asking again in the same thread: pointed to the open ticket, no new note card.
    again = fake_webex.add_message(world["sales"]["id"], world["alice"], "escalate", parent_id=top["id"])
    assert (await bot.post(fake_webex.message_created_envelope(again))).status == 200
    await quiet(bot)
    last = fake_webex.posted_messages[-1]
    assert f"{number} is already open" in last["markdown"] and not last.get("attachments")


async def test_new_tickets_per_person_are_capped_per_hour(
    bot: Bot, fake_webex: FakeWebex, world: Json
) -> None:
    for _ in range(4):
        _, note_card = await say(bot, fake_webex, world["sales"], world["bob"], "talk to a human")
        await click(
            bot, fake_webex, stored(fake_webex, note_card)["id"], world["bob"], verb(note_card, "file_ticket")
        )
        await quiet(bot)
    assert len(await bot.app[CONTEXT].store.tickets_for_requester(world["bob"]["id"])) == 3
    assert "3 tickets in the last hour" in fake_webex.posted_messages[-1]["markdown"]
    assert len(in_helpdesk(fake_webex, world)) == 3


async def test_answers_reach_the_helpdesk_only_for_an_open_question(
    bot: Bot, fake_webex: FakeWebex, world: Json
) -> None:
    top, note_card = await say(bot, fake_webex, world["sales"], world["alice"], "talk to a human")
    await click(
        bot, fake_webex, stored(fake_webex, note_card)["id"], world["alice"], verb(note_card, "file_ticket")
    )
    await quiet(bot)
    ticket_card = in_helpdesk(fake_webex, world)[0]
    number = verb(ticket_card, "claim")["number"]
    confirmation = fake_webex.posted_messages[-1]
    answer = {"verb": "answer_info", "number": number, "thread_id": top["id"], "answer": "it says 1002"}
    # No question asked yet: ten unsolicited answers post nothing in the helpdesk space.
    for _ in range(10):
        await click(bot, fake_webex, stored(fake_webex, confirmation)["id"], world["alice"], answer)
    await quiet(bot)
    assert len(in_helpdesk(fake_webex, world)) == 1
    assert "no open question" in fake_webex.posted_messages[-1]["markdown"]
    ask = verb(ticket_card, "ask_info") | {"question": "Which error code do you see?"}
    await click(bot, fake_webex, stored(fake_webex, ticket_card)["id"], world["sam"], ask)
    await quiet(bot)
    question_card = next(p for p in reversed(fake_webex.posted_messages) if "asks about" in p["markdown"])
    reply = verb(question_card, "answer_info") | {"answer": "it says 1002"}
    # One question, answered three times at once: one answer reaches the helpdesk.
    await asyncio.gather(
        *(
            click(bot, fake_webex, stored(fake_webex, question_card)["id"], world["alice"], reply)
            for _ in range(3)
        )
    )
    await quiet(bot)
    answers = [p for p in in_helpdesk(fake_webex, world) if p["markdown"].startswith("Answer from")]
    assert len(answers) == 1 and "it says 1002" in answers[0]["markdown"]


async def test_a_refusal_on_a_card_that_is_a_reply_goes_into_its_thread(
    bot: Bot, fake_webex: FakeWebex, world: Json
) -> None:
    top, fix = await say(bot, fake_webex, world["sales"], world["alice"], "Error: 1000:603")
    assert fix["parentId"] == top["id"]  # the card is itself a reply
    before = len(fake_webex.posted_messages)
    await click(
        bot, fake_webex, stored(fake_webex, fix)["id"], world["bob"], {"verb": "claim", "number": "HD-1001"}
    )
    await quiet(bot)
    refusals = fake_webex.posted_messages[before:]
    assert len(refusals) == 1 and "only members of the helpdesk" in refusals[0]["markdown"]
    assert refusals[0]["parentId"] == top["id"]


async def test_the_final_apology_goes_into_the_messages_thread_or_nowhere(
    bot: Bot, fake_webex: FakeWebex, world: Json
) -> None:
    top = fake_webex.add_message(world["sales"]["id"], world["alice"], "hello there")
    reply = fake_webex.add_message(
        world["sales"]["id"], world["alice"], "Error: 1000:1002", parent_id=top["id"]
    )
    fake_webex.fail_next("GET", f"/messages/{reply['id']}", status=404)
    assert (await bot.post(fake_webex.message_created_envelope(reply))).status == 200
    await quiet(bot)
    apology = fake_webex.posted_messages[-1]
    assert "couldn't answer" in apology["markdown"] and apology["parentId"] == top["id"]
    # A message deleted for good, in a group space: no apology at the top of the space.
    gone = fake_webex.add_message(world["sales"]["id"], world["alice"], "Error: 1000:1002")
    del fake_webex.messages[gone["id"]]
    before = len(fake_webex.posted_messages)
    assert (await bot.post(fake_webex.message_created_envelope(gone))).status == 200
    await quiet(bot)
    assert fake_webex.posted_messages[before:] == []


async def test_a_forged_thread_in_a_direct_space_is_refused(
    bot: Bot, fake_webex: FakeWebex, world: Json
) -> None:
    carol_msg, _ = await say(
        bot, fake_webex, world["carol_dm"], world["carol"], "blank screen when I sign in"
    )
    _, bob_card = await say(bot, fake_webex, world["bob_dm"], world["bob"], "blank screen when I sign in")
    bob_card_id = stored(fake_webex, bob_card)["id"]
    forged_vote = verb(bob_card, "feedback", helpful=True) | {"thread_id": carol_msg["id"]}
    before = len(fake_webex.posted_messages)
    await click(bot, fake_webex, bob_card_id, world["bob"], forged_vote)
    _, note_card = await say(bot, fake_webex, world["bob_dm"], world["bob"], "talk to a human")
    forged_filing = verb(note_card, "file_ticket") | {"thread_id": carol_msg["id"]}
    after_note = len(fake_webex.posted_messages)
    await click(bot, fake_webex, stored(fake_webex, note_card)["id"], world["bob"], forged_filing)
    await quiet(bot)
    assert await votes(bot) == (0, 0), "no vote attributed to Carol's thread"
    assert await bot.app[CONTEXT].store.tickets_for_requester(world["bob"]["id"]) == []
    assert len(fake_webex.posted_messages) == after_note == before + 1  # only the note card itself
    # His own thread works.
    await click(bot, fake_webex, bob_card_id, world["bob"], verb(bob_card, "feedback", helpful=True))
    await quiet(bot)
    assert await votes(bot) == (1, 0)


async def test_too_long_blank_or_too_many_inputs_are_answered_with_the_limit(
    bot: Bot, fake_webex: FakeWebex, world: Json
) -> None:
    top, fix = await say(bot, fake_webex, world["sales"], world["alice"], "Error: 1000:603")
    card_id = stored(fake_webex, fix)["id"]
    good = verb(fix, "feedback", helpful=True)
    cases = {
        "a 1,001-character note": (
            {"verb": "file_ticket", "thread_id": top["id"], "note": "x" * 1001},
            "1000",
        ),
        "a 100 KB question": ({"verb": "ask_info", "number": "HD-1", "question": "q" * 100_000}, "1000"),
        "a blank answer": (
            {"verb": "answer_info", "number": "HD-1", "thread_id": top["id"], "answer": "   "},
            "empty",
        ),
        "an empty question": ({"verb": "ask_info", "number": "HD-1", "question": ""}, "empty"),
        "21 inputs": ({**good, **{f"k{i}": i for i in range(17)}}, "20"),
    }
    problems = {}
    for name, (inputs, limit) in cases.items():
        before = len(fake_webex.posted_messages)
        await click(bot, fake_webex, card_id, world["alice"], inputs)
        await quiet(bot)
        told = fake_webex.posted_messages[before:]
        if len(told) != 1 or limit not in told[0]["markdown"] or told[0].get("parentId") != top["id"]:
            problems[name] = [(t["markdown"][:80], t.get("parentId") == top["id"]) for t in told]
    assert not problems, problems
    assert await bot.app[CONTEXT].store.tickets_for_requester(world["alice"]["id"]) == []
    assert await votes(bot) == (0, 0)
