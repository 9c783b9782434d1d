"""Forged card submits and markdown/mention injection, driven through the real app and the fake Webex."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import unicodedata
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bot.keys import CONTEXT, WORKER
from bot.knowledge import KnowledgeBase
from tests.fakewebex import FakeWebex
from tests.harness import Bot, db_url, make_settings, verb, votes, wait_for

Json = dict[str, Any]

# --- The world: an employee space, a helpdesk space and a few people ---------------------------------


@pytest.fixture
def world(fake_webex: FakeWebex) -> Json:
    people = {
        "alice": fake_webex.add_person("alice@example.com", "Alice Doe"),
        "bob": fake_webex.add_person("bob@example.com", "Bob Roe"),
        "carol": fake_webex.add_person("carol@example.com", "Carol Poe"),
        "sam": fake_webex.add_person("sam@example.com", "Sam Agent"),
    }
    sales = fake_webex.add_room("group", "Sales floor")
    helpdesk = fake_webex.add_room("group", "Helpdesk")
    fake_webex.add_membership(helpdesk["id"], people["sam"]["id"])
    for name in ("alice", "bob", "carol"):
        fake_webex.add_membership(sales["id"], people[name]["id"])
    return {
        **people,
        "sales": sales,
        "helpdesk": helpdesk,
        "alice_dm": fake_webex.add_room("direct", "Alice"),
        "bob_dm": fake_webex.add_room("direct", "Bob"),
        "carol_dm": fake_webex.add_room("direct", "Carol"),
    }


@pytest_asyncio.fixture
async def bot(fake_webex: FakeWebex, world: Json, tmp_path: Path) -> AsyncIterator[Bot]:
    settings = make_settings(fake_webex, db_url(tmp_path), helpdesk_room_id=world["helpdesk"]["id"])
    async with Bot(fake_webex, settings) as started:
        yield started


# --- Helpers -----------------------------------------------------------------------------------------


def stored(fake: FakeWebex, posted: Json) -> Json:
    """The stored bot message (with its id) for a posted body."""
    return next(
        m
        for m in reversed(list(fake.messages.values()))
        if m["personId"] == fake.bot["id"] and m.get("markdown") == posted["markdown"]
    )


async def say(bot: Bot, fake: FakeWebex, room: Json, person: Json, text: str, **kw: Any) -> tuple[Json, Json]:
    """A user message in, the bot's reply out."""
    before = len(fake.posted_messages)
    msg = fake.add_message(room["id"], person, text, **kw)
    assert (await bot.post(fake.message_created_envelope(msg))).status == 200
    await wait_for(lambda: len(fake.posted_messages) > before, what=f"a reply to {text[:40]!r}")
    await quiet(bot)
    return msg, fake.posted_messages[before]


async def click(bot: Bot, fake: FakeWebex, message_id: str, person: Json, inputs: Any) -> Json:
    action = fake.add_attachment_action(message_id, person, inputs)
    resp = await bot.post(fake.action_created_envelope(action))
    assert resp.status == 200, await resp.text()
    return action


async def quiet(bot: Bot, timeout: float = 10.0) -> None:
    """Everything the worker will do for what was sent so far is done, retries and last-resort notices too
    (Bot.idle does not wait for events that are waiting for a retry)."""
    store = bot.app[CONTEXT].store
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = await store.inbox_counts()
        busy = counts.get("pending", 0) + counts.get("working", 0) + counts.get("failed", 0)
        if not busy and bot.app[WORKER].in_flight == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the worker did not settle: {await store.inbox_counts()}")


def warned_about(caplog: pytest.LogCaptureFixture, *needles: str) -> bool:
    """A WARNING that names the action (or, for ticket refusals, the person) was logged."""
    return any(
        r.levelno == logging.WARNING and any(n in r.getMessage() for n in needles) for r in caplog.records
    )


async def assert_still_answering(bot: Bot, fake: FakeWebex, world: Json) -> None:
    assert (await bot.client.get("/healthz")).status == 200
    _, reply = await say(bot, fake, world["alice_dm"], world["alice"], "Error: 1000:1002")
    assert "1000:1002" in reply["markdown"]


async def fix_card_in_thread(
    bot: Bot, fake: FakeWebex, world: Json, person: str = "alice", text: str = "Error: 1000:603"
) -> tuple[Json, Json]:
    """A group-space thread: the person's message and the bot's fix card under it."""
    top, posted = await say(bot, fake, world["sales"], world[person], text)
    assert posted.get("attachments"), posted["markdown"][:200]
    assert posted["parentId"] == top["id"]
    return top, stored(fake, posted)


# --- Forged, malformed and oversized submits ---------------------------------------------------------


def forged_inputs(thread: str) -> dict[str, Any]:
    good = {"verb": "feedback", "article_id": "1000:603", "helpful": True, "thread_id": thread}
    return {
        "unknown verb": {**good, "verb": "delete_everything"},
        "verb in capitals": {**good, "verb": "FEEDBACK"},
        "verb with spaces": {**good, "verb": " feedback "},
        "verb as a list": {**good, "verb": ["feedback"]},
        "verb as an object": {**good, "verb": {"verb": "feedback"}},
        "verb null": {**good, "verb": None},
        "no verb": {k: v for k, v in good.items() if k != "verb"},
        "no inputs at all": {},
        "helpful is 'maybe'": {**good, "helpful": "maybe"},
        "helpful is 1": {**good, "helpful": 1},
        "helpful is null": {**good, "helpful": None},
        "helpful missing": {k: v for k, v in good.items() if k != "helpful"},
        "article id is a number": {**good, "article_id": 603},
        "article id is markup": {**good, "article_id": "<@all>"},
        "article id is a path": {**good, "article_id": "../../etc/passwd"},
        "thread id is markup": {**good, "thread_id": "[x](https://evil.example)"},
        "thread id is empty": {**good, "thread_id": ""},
        "thread id is a list": {**good, "thread_id": [thread]},
        "thread id missing": {k: v for k, v in good.items() if k != "thread_id"},
        "page is negative": {"verb": "setup_page", "page": -1, "thread_id": thread},
        "page is a float": {"verb": "setup_page", "page": 1.5, "thread_id": thread},
        "page is a bool": {"verb": "setup_page", "page": True, "thread_id": thread},
        "page in Arabic digits": {"verb": "setup_page", "page": "٣", "thread_id": thread},
        "page is 1e3": {"verb": "setup_page", "page": "1e3", "thread_id": thread},
        "page is 1000 nines": {"verb": "setup_page", "page": "9" * 1000, "thread_id": thread},
        "100 KB article id": {**good, "article_id": "a" * 100_000},
        "100 KB thread id": {**good, "thread_id": "A" * 100_000},
        "ticket number is SQL": {"verb": "claim", "number": "HD-1; DROP TABLE tickets"},
        "ticket number is markup": {"verb": "cancel_ticket", "number": "<@all>", "thread_id": thread},
        # Too long, blank or too many inputs with a known verb are answered: tests/test_abuse_tickets.py.
    }


async def test_forged_and_malformed_submits_are_refused_quietly(
    bot: Bot, fake_webex: FakeWebex, world: Json, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    top, card = await fix_card_in_thread(bot, fake_webex, world)
    cases = forged_inputs(top["id"])
    before = len(fake_webex.posted_messages)
    actions = {}
    for name, inputs in cases.items():
        actions[name] = await click(bot, fake_webex, card["id"], world["alice"], inputs)
    await quiet(bot)
    answered = fake_webex.posted_messages[before:]
    assert answered == [], (
        f"{len(answered)} replies to forged submits: {[a['markdown'][:80] for a in answered]}"
    )
    unlogged = [name for name, action in actions.items() if not warned_about(caplog, action["id"])]
    assert not unlogged, f"refused without a WARNING naming the action: {unlogged}"
    store = bot.app[CONTEXT].store
    assert await votes(bot) == (0, 0)
    assert await store.tickets_for_requester(world["alice"]["id"]) == []
    await assert_still_answering(bot, fake_webex, world)


NOT_AN_OBJECT = {"list": ["verb", "feedback"], "string": "verb=feedback", "null": None, "number": 42}


async def test_submits_whose_inputs_are_not_an_object_are_refused_quietly(
    bot: Bot, fake_webex: FakeWebex, world: Json, caplog: pytest.LogCaptureFixture
) -> None:
    # A forged POST /attachment/actions can carry any JSON as inputs; Webex hands it back verbatim.
    caplog.set_level(logging.WARNING)
    _, card = await fix_card_in_thread(bot, fake_webex, world)
    problems = {}
    for name, inputs in NOT_AN_OBJECT.items():
        before = len(fake_webex.posted_messages)
        action = await click(bot, fake_webex, card["id"], world["alice"], inputs)
        await quiet(bot)
        answered = [a["markdown"][:80] for a in fake_webex.posted_messages[before:]]
        if answered or not warned_about(caplog, action["id"]):
            problems[name] = answered
    assert not problems, f"malformed submits were answered (or not logged): {problems}"
    await assert_still_answering(bot, fake_webex, world)


async def test_submits_pointing_at_messages_the_bot_did_not_send_are_refused(
    bot: Bot, fake_webex: FakeWebex, world: Json, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    await fix_card_in_thread(bot, fake_webex, world)
    good = verb(fake_webex.posted_messages[-1], "feedback")
    someone_elses = fake_webex.add_message(world["sales"]["id"], world["carol"], "a card-looking message")
    before = len(fake_webex.posted_messages)
    action = await click(bot, fake_webex, someone_elses["id"], world["bob"], good)
    await quiet(bot)
    assert fake_webex.posted_messages[before:] == []
    assert warned_about(caplog, action["id"])
    assert await votes(bot) == (0, 0)


async def test_a_submit_on_a_deleted_card_is_refused_quietly(
    bot: Bot, fake_webex: FakeWebex, world: Json, caplog: pytest.LogCaptureFixture
) -> None:
    # The card is gone (deleted, or the id never existed): Webex answers 404 for it.
    caplog.set_level(logging.WARNING)
    _, card = await fix_card_in_thread(bot, fake_webex, world)
    good = verb(fake_webex.posted_messages[-1], "feedback")
    before = len(fake_webex.posted_messages)
    action = fake_webex.add_attachment_action(card["id"], world["alice"], good)
    del fake_webex.messages[card["id"]]
    assert (await bot.post(fake_webex.action_created_envelope(action))).status == 200
    await quiet(bot)
    answered = fake_webex.posted_messages[before:]
    assert answered == [], f"a reply to a submit on a missing card: {[a['markdown'][:100] for a in answered]}"
    assert any(r.levelno >= logging.WARNING and action["id"] in r.getMessage() for r in caplog.records)


# --- Someone else's thread, someone else's ticket ---------------------------------------------------


async def test_a_submit_cannot_steer_the_reply_into_another_thread(
    bot: Bot, fake_webex: FakeWebex, world: Json, caplog: pytest.LogCaptureFixture
) -> None:
    """Bob clicks on Alice's card (he can: it is a shared space) but names Carol's thread, or a thread in
    another space. Whatever the bot does (refuse, or answer where the card really is), nothing may land
    outside the card's own thread, and no "problem on my side" apology either."""
    caplog.set_level(logging.WARNING)
    alice_top, alice_card = await fix_card_in_thread(bot, fake_webex, world, "alice")
    carol_top, _ = await fix_card_in_thread(
        bot, fake_webex, world, "carol", "Error: 1000:1005 carol-group-secret"
    )
    elsewhere, _ = await say(
        bot, fake_webex, world["carol_dm"], world["carol"], "blank screen when I sign in carol-dm-secret"
    )
    forged: dict[str, Json] = {}
    for label, thread in (("Carol's thread", carol_top["id"]), ("another space", elsewhere["id"])):
        forged |= {
            f"feedback yes -> {label}": {
                "verb": "feedback",
                "article_id": "1000:603",
                "helpful": True,
                "thread_id": thread,
            },
            f"feedback no -> {label}": {
                "verb": "feedback",
                "article_id": "1000:603",
                "helpful": False,
                "thread_id": thread,
            },
            f"show -> {label}": {"verb": "show", "article_id": "1000:1002", "thread_id": thread},
            f"setup page -> {label}": {"verb": "setup_page", "page": 1, "thread_id": thread},
            f"escalate -> {label}": {"verb": "escalate", "thread_id": thread, "origin_id": thread},
            f"file ticket -> {label}": {"verb": "file_ticket", "thread_id": thread, "origin_id": thread},
        }
    leaked = {}
    for name, inputs in forged.items():
        before = len(fake_webex.posted_messages)
        action = await click(bot, fake_webex, alice_card["id"], world["bob"], inputs)
        await quiet(bot)
        posted = fake_webex.posted_messages[before:]
        stray = [
            p
            for p in posted
            if p["roomId"] != world["sales"]["id"]
            or p.get("parentId") != alice_top["id"]
            or "problem on my side" in p["markdown"]
        ]
        if stray or not (posted or warned_about(caplog, action["id"])):
            leaked[name] = [
                (
                    p["roomId"] == world["sales"]["id"],
                    p.get("parentId") == carol_top["id"],
                    p["markdown"][:50],
                )
                for p in stray
            ]
    assert not leaked, f"forged thread ids were followed (same room?, Carol's thread?, text): {leaked}"
    # Carol's words never end up in a ticket someone else filed, nor in any message the bot sent.
    for ticket in await bot.app[CONTEXT].store.tickets_for_requester(world["bob"]["id"]):
        assert "carol-" not in json.dumps(ticket.transcript) + ticket.original_text
    outside_carols_spaces = [
        p
        for p in fake_webex.posted_messages
        if p["roomId"] != world["carol_dm"]["id"] and p.get("parentId") != carol_top["id"]
    ]
    assert not [p for p in outside_carols_spaces if "carol-" in json.dumps(p)]


async def test_a_forged_origin_cannot_pull_another_persons_message_into_a_ticket(
    bot: Bot, fake_webex: FakeWebex, world: Json
) -> None:
    # Carol told the bot something private in her own space; Bob files a ticket naming her message.
    secret = "my personal phone 555 0100 cannot register"
    carol_msg, _ = await say(bot, fake_webex, world["carol_dm"], world["carol"], secret)
    _, reply = await say(bot, fake_webex, world["bob_dm"], world["bob"], "escalate")
    filing = verb(reply, "file_ticket") | {"origin_id": carol_msg["id"], "note": ""}
    await click(bot, fake_webex, stored(fake_webex, reply)["id"], world["bob"], filing)
    await quiet(bot)
    _, summary = await say(bot, fake_webex, world["bob_dm"], world["bob"], "my tickets")
    seen_by_bob_or_helpdesk = [
        json.dumps(p)
        for p in fake_webex.posted_messages
        if p["roomId"] in (world["bob_dm"]["id"], world["helpdesk"]["id"])
    ]
    tickets = await bot.app[CONTEXT].store.tickets_for_requester(world["bob"]["id"])
    assert tickets, "Bob's ticket was filed"
    assert all("personal phone" not in t.original_text for t in tickets), tickets[0].original_text
    assert not any("personal phone" in text for text in seen_by_bob_or_helpdesk)
    assert summary["roomId"] == world["bob_dm"]["id"]


async def test_ticket_verbs_from_someone_else_change_nothing_and_reach_no_one(
    bot: Bot, fake_webex: FakeWebex, world: Json, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    helpdesk = world["helpdesk"]["id"]
    alice_top, reply = await say(bot, fake_webex, world["sales"], world["alice"], "escalate")
    await click(bot, fake_webex, stored(fake_webex, reply)["id"], world["alice"], verb(reply, "file_ticket"))
    await quiet(bot)
    ticket_post = next(p for p in fake_webex.posted_messages if p["roomId"] == helpdesk)
    number = verb(ticket_post, "claim")["number"]
    # Bob has his own card from the bot in his own space; he aims Alice's ticket verbs at it.
    _, bob_reply = await say(bot, fake_webex, world["bob_dm"], world["bob"], "the printer is jammed")
    bob_card = stored(fake_webex, bob_reply)["id"]
    forged = {
        "cancel": {"verb": "cancel_ticket", "number": number, "thread_id": alice_top["id"]},
        "still broken (reopen)": {
            "verb": "ticket_fixed",
            "number": number,
            "thread_id": alice_top["id"],
            "fixed": False,
        },
        "fixed": {"verb": "ticket_fixed", "number": number, "thread_id": alice_top["id"], "fixed": True},
        "answer": {
            "verb": "answer_info",
            "number": number,
            "thread_id": alice_top["id"],
            "answer": "<@all> hi",
        },
        "claim": {"verb": "claim", "number": number},
        "resolve": {"verb": "resolve", "number": number, "resolution": "closed by bob"},
        "ask": {"verb": "ask_info", "number": number, "question": "what is your password?"},
    }
    store = bot.app[CONTEXT].store
    original = await store.get_ticket(number)
    assert original is not None
    problems = {}
    for name, inputs in forged.items():
        before = len(fake_webex.posted_messages)
        action = await click(bot, fake_webex, bob_card, world["bob"], inputs)
        await quiet(bot)
        posted = fake_webex.posted_messages[before:]
        reached = [
            p for p in posted if p["roomId"] != world["bob_dm"]["id"] or p.get("parentId") == alice_top["id"]
        ]
        leaked = [p for p in posted if number in p["markdown"] and "Alice" in json.dumps(p)]
        if reached or leaked or not warned_about(caplog, action["id"], world["bob"]["id"]):
            problems[name] = [(p["roomId"], p["markdown"][:60]) for p in reached + leaked]
    after = await store.get_ticket(number)
    assert after is not None
    assert (after.status, after.assignee_id, after.resolution, after.reopened) == (
        original.status,
        original.assignee_id,
        original.resolution,
        original.reopened,
    )
    assert not problems, f"someone else's ticket verbs reached Alice or the helpdesk: {problems}"


# --- Markdown and mention injection ------------------------------------------------------------------

PAYLOADS = [
    "<@all>",
    "<@personEmail:boss@example.com>",
    "<@personId:Y2lzY29zcGFyazovL3VzL1BFT1BMRS9ib3Nz|The Boss>",
    "[click](https://evil.example)",
    "![x](https://evil.example/x.png)",
    "[ref][1]\n\n[1]: https://evil.example/ref",
    "<script>alert(1)</script>",
    "<a href='https://evil.example'>x</a>",
    "&lt;@all&gt; &#60;@all&#62; &amp;",
    "@all",
    "@ALL please",
    "@\u200ball",
    "\u202e<@all>\u202c",
    "<https://evil.example/auto>",
    "`code` **bold** _it_ # heading",
]
INJECTION = " ".join(PAYLOADS)
_LINK = re.compile(r"!?\[([^\]]*)\]\(([^)\s]*)")
_REF_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*\S+", re.MULTILINE)
_MENTION = re.compile(r"<@|@all", re.IGNORECASE)
_ENTITY = re.compile(r"&(?:#\d+|#x[0-9a-f]+|[a-z]+);", re.IGNORECASE)


def strings(value: Any, key: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from strings(v, str(k))
    elif isinstance(value, list):
        for v in value:
            yield from strings(v, key)


def injection_problems(posted: Json, allowed_urls: set[str]) -> list[str]:
    """Everything in one posted body (markdown and card) that could render as a live mention, link or markup."""
    problems = []
    texts = [("markdown", posted.get("markdown") or ""), ("text", posted.get("text") or "")]
    for attachment in posted.get("attachments") or []:
        texts += list(strings(attachment.get("content")))
    for key, text in texts:
        if key in ("url", "iconUrl", "backgroundImage") and text not in allowed_urls:
            problems.append(f"{key} {text!r} is not a knowledge link")
        if _MENTION.search(text):
            problems.append(f"mention in {key}: {text[:120]!r}")
        for _, url in _LINK.findall(text):
            if url not in allowed_urls:
                problems.append(f"link to {url!r} in {key}")
        if _REF_LINK.search(text):
            problems.append(f"reference-style link in {key}: {text[:120]!r}")
        if "<" in text:  # ">" also starts a quote and appears in knowledge steps ("Settings > Phone")
            problems.append(f"angle bracket in {key}: {text[:120]!r}")
        if _ENTITY.search(text):
            problems.append(f"HTML entity in {key}: {text[:120]!r}")
        if re.search(r"https?://evil", text, re.IGNORECASE):
            problems.append(f"user URL in {key}: {text[:120]!r}")
        if any(unicodedata.category(ch) == "Cf" for ch in text):
            problems.append(f"invisible format character in {key}: {text[:60]!r}")
    return problems


def allowed(kb: KnowledgeBase) -> set[str]:
    return {link.url for link in kb.links.values()}


def assert_inert(fake: FakeWebex, kb: KnowledgeBase, since: int = 0) -> None:
    found = {}
    for n, posted in enumerate(fake.posted_messages[since:], since):
        problems = injection_problems(posted, allowed(kb))
        if problems:
            found[f"#{n}: {posted['markdown'][:40]!r}"] = problems
    assert not found, json.dumps(found, indent=1, ensure_ascii=False)


def test_the_inertness_check_itself_catches_raw_payloads(kb: KnowledgeBase) -> None:
    # Guard against a check that passes everything: each raw payload must be flagged on its own.
    for payload in PAYLOADS:
        if payload.startswith("`code`"):
            continue
        assert injection_problems({"markdown": payload}, allowed(kb)), payload
        card = {"type": "AdaptiveCard", "body": [{"type": "TextBlock", "text": payload}]}
        assert injection_problems({"markdown": "x", "attachments": [{"content": card}]}, allowed(kb)), payload


async def test_injection_in_messages_never_comes_back_live(
    bot: Bot, fake_webex: FakeWebex, world: Json, kb: KnowledgeBase
) -> None:
    alice, dm, sales = world["alice"], world["alice_dm"], world["sales"]
    messages = [
        # Unmatched: the not-sure card echoes an excerpt.
        f"the printer is jammed {INJECTION}",
        f"{INJECTION} the printer is jammed",
        # Long: the excerpt is cut, possibly in the middle of a payload.
        "printer " * 24 + INJECTION,
        "x" * 195 + "[click](https://evil.example) <@all>",
        ("printer jam " + INJECTION + " ") * 300,  # ~30 KB
        # Unknown codes are named back to the user.
        f"Error: 1000:9999 {INJECTION}",
        "Error: 1000:1 <@all>",
        # A matched code with hostile text around it.
        f"{INJECTION} Error: 1000:1002 {INJECTION}",
        "escalate",
    ]
    for text in messages:
        await say(bot, fake_webex, dm, alice, text)
    # A group mention whose html carries entities that strip_mention unescapes.
    bot_id = fake_webex.bot["id"]
    html = (
        f'<p><spark-mention data-object-type="person" data-object-id="{bot_id}">Helpdesk</spark-mention> '
        "&lt;@all&gt; &lt;@personEmail:boss@example.com&gt; [click](https://evil.example) &lt;script&gt;x</p>"
    )
    await say(bot, fake_webex, sales, alice, "Helpdesk <@all> [click](https://evil.example)", html=html)
    assert len(fake_webex.posted_messages) == len(messages) + 1
    echoed = [p for p in fake_webex.posted_messages if "You wrote" in p["markdown"]]
    assert len(echoed) >= 3, "the not-sure card should echo the message (else this test checks nothing)"
    assert any("click" in p["markdown"] and "evil(.)example" in p["markdown"] for p in echoed)
    assert_inert(fake_webex, kb)


async def test_injection_through_the_ticket_flow_never_comes_back_live(
    fake_webex: FakeWebex, world: Json, kb: KnowledgeBase, tmp_path: Path
) -> None:
    # The display name is user-controlled in Webex too.
    mallory = fake_webex.add_person("mallory@example.com", "<@all> [Mallory](https://evil.example)")
    mallory["displayName"] = "<@all> [Mallory](https://evil.example) @all"
    mallory["firstName"] = "<@all>"
    sam = world["sam"]
    sam["displayName"] = "Sam [agent](https://evil.example) <@all>"
    sam["firstName"] = "[Sam](https://evil.example)"
    room = fake_webex.add_room("group", "Shared")
    fake_webex.add_membership(room["id"], mallory["id"])
    settings = make_settings(fake_webex, db_url(tmp_path), helpdesk_room_id=world["helpdesk"]["id"])
    helpdesk = world["helpdesk"]["id"]
    async with Bot(fake_webex, settings) as bot:
        top, reply = await say(bot, fake_webex, room, mallory, f"the printer is jammed {INJECTION}")
        await click(bot, fake_webex, stored(fake_webex, reply)["id"], mallory, verb(reply, "escalate"))
        await wait_for(lambda: len(fake_webex.posted_messages) == 2, what="the note card")
        note_card = fake_webex.posted_messages[1]
        filing = verb(note_card, "file_ticket") | {"note": INJECTION[:900]}
        await click(bot, fake_webex, stored(fake_webex, note_card)["id"], mallory, filing)
        await wait_for(
            lambda: any(p["roomId"] == helpdesk for p in fake_webex.posted_messages), what="the ticket card"
        )
        await quiet(bot)
        ticket_post = next(p for p in fake_webex.posted_messages if p["roomId"] == helpdesk)
        ticket_msg = stored(fake_webex, ticket_post)["id"]
        number = verb(ticket_post, "claim")["number"]
        await click(bot, fake_webex, ticket_msg, sam, {"verb": "claim", "number": number})
        await quiet(bot)
        ask = {"verb": "ask_info", "number": number, "question": INJECTION[:900]}
        await click(bot, fake_webex, ticket_msg, sam, ask)
        await wait_for(
            lambda: any("asks about" in p["markdown"] for p in fake_webex.posted_messages),
            what="the question",
        )
        question = next(p for p in fake_webex.posted_messages if "asks about" in p["markdown"])
        answer = verb(question, "answer_info") | {"answer": INJECTION[:900]}
        await click(bot, fake_webex, stored(fake_webex, question)["id"], mallory, answer)
        await quiet(bot)
        resolve = {"verb": "resolve", "number": number, "resolution": INJECTION[:900]}
        await click(bot, fake_webex, ticket_msg, sam, resolve)
        await quiet(bot)
        await say(bot, fake_webex, room, mallory, "my tickets", parent_id=top["id"])
        await say(bot, fake_webex, room, mallory, f"ticket {number}", parent_id=top["id"])
        await say(bot, fake_webex, world["helpdesk"], sam, "tickets")
        kinds = " | ".join(p["markdown"][:30] for p in fake_webex.posted_messages)
        assert len(fake_webex.posted_messages) >= 10, kinds
        # Every step of the flow really ran, so every builder that echoes user text was exercised.
        for step in ("Ticket ", "claimed", "asks about", "Answer from", "is resolved", "Your tickets"):
            assert step in kinds or any(step in p["markdown"] for p in fake_webex.posted_messages), step
        # Make sure the hostile text really was carried (escaped) into the ticket, so the check means something.
        assert "evil(.)example" in json.dumps(ticket_post) and "click" in json.dumps(ticket_post)
        assert_inert(fake_webex, kb)
