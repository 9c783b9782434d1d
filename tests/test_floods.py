"""Floods: one person's thousands of messages neither delay another person's answer nor get answered one by one."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bot.config import Settings
from bot.keys import CONTEXT, WORKER
from bot.limits import SLOW_DOWN, RateLimiter
from bot.store import Store
from tests.fakewebex import FakeWebex
from tests.harness import FAST_WORKER, Bot, db_url, make_settings
from tests.procs import bot_messages, until

DEFAULT_LIMIT = Settings.model_fields["rate_limit_per_minute"].default


async def flood(
    bot: Bot, fake: FakeWebex, room: str, person: dict[str, Any], n: int, sent: list[int] | None = None
) -> list[dict[str, Any]]:
    msgs = [fake.add_message(room, person, f"blank screen when I sign in ({i})") for i in range(n)]
    for start in range(0, n, 50):
        answers = await asyncio.gather(
            *(bot.post(fake.message_created_envelope(m)) for m in msgs[start : start + 50])
        )
        assert {r.status for r in answers} == {200}
        if sent is not None:
            sent.append(len(answers))
    return msgs


async def settle(bot: Bot, timeout: float) -> None:
    store = bot.app[CONTEXT].store
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = await store.inbox_counts()
        if (
            not (counts["pending"] or counts["working"] or counts["failed"])
            and bot.app[WORKER].in_flight == 0
        ):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the inbox never drained: {await store.inbox_counts()}")


async def test_a_flood_of_2000_does_not_delay_another_person_and_is_told_to_slow_down_once(
    fake_webex: FakeWebex, tmp_path: Path
) -> None:
    mallory = fake_webex.add_person("mallory@example.com", "Mallory")
    alice = fake_webex.add_person("alice@example.com", "Alice Doe")
    flooded, quiet = fake_webex.add_room("group", "Flood")["id"], fake_webex.add_room("group", "Quiet")["id"]
    settings = make_settings(fake_webex, db_url(tmp_path), rate_limit_per_minute=DEFAULT_LIMIT)
    async with Bot(fake_webex, settings) as bot:
        sent: list[int] = []
        sender = asyncio.create_task(flood(bot, fake_webex, flooded, mallory, 2000, sent))
        await until(lambda: sum(sent) >= 500, 60, "the flood to be under way")
        ask = fake_webex.add_message(quiet, alice, "Error: 1000:1002 when I open phone services")
        asked = time.monotonic()
        assert (await bot.post(fake_webex.message_created_envelope(ask))).status == 200
        await until(lambda: bool(bot_messages(fake_webex, parent_id=ask["id"])), 30, "Alice's answer")
        waited = time.monotonic() - asked
        still_sending = not sender.done()
        msgs = await sender
        assert still_sending or sum(sent) == len(msgs)
        assert waited < 5.0, f"Alice waited {waited:.1f}s behind the flood"
        print(
            f"Alice answered {waited:.2f}s after she asked, the flood {'still' if still_sending else 'no longer'} sending"
        )
        await settle(bot, 120)
        to_mallory = bot_messages(fake_webex, flooded)
        notes = [m for m in to_mallory if m["markdown"] == SLOW_DOWN]
        assert len(notes) == 1, "told to slow down once"
        # Her first 30 (the default limit) are answered, plus what the bucket refilled meanwhile; not 2,000.
        assert 30 < len(to_mallory) < 30 + 1 + 60, len(to_mallory)
        assert notes[0]["parentId"] in {m["id"] for m in msgs}, "the note goes into the message's thread"
        rows = await bot.app[CONTEXT].store.inbox_counts()
        assert rows["done"] == len(msgs) + 1, "every event was handled; none was lost"


async def test_the_worker_takes_events_fairly_across_people(fake_webex: FakeWebex, tmp_path: Path) -> None:
    """Without the rate limit and with few slots: only the order decides how long the other person waits."""
    mallory = fake_webex.add_person("mallory@example.com", "Mallory")
    alice = fake_webex.add_person("alice@example.com", "Alice Doe")
    flooded, quiet = fake_webex.add_room("group", "Flood")["id"], fake_webex.add_room("group", "Quiet")["id"]
    settings = make_settings(fake_webex, db_url(tmp_path), rate_limit_per_minute=0)
    narrow = dataclasses.replace(FAST_WORKER, concurrency=4)
    async with Bot(fake_webex, settings, narrow) as bot:
        fake_webex.delay("GET", "/messages/", 0.1)
        # 400 at 0.1 s each over 4 slots: ten seconds of work queued before Alice asks.
        await flood(bot, fake_webex, flooded, mallory, 400)
        ask = fake_webex.add_message(quiet, alice, "Error: 1000:1002 when I open phone services")
        asked = time.monotonic()
        assert (await bot.post(fake_webex.message_created_envelope(ask))).status == 200
        await until(lambda: bool(bot_messages(fake_webex, parent_id=ask["id"])), 30, "Alice's answer")
        waited = time.monotonic() - asked
        answered_before = len(bot_messages(fake_webex, flooded))
        assert answered_before < 200, (
            "the flood was mostly answered before Alice asked: this measured nothing"
        )
        assert waited < 3.0, f"Alice waited {waited:.1f}s behind {answered_before} of Mallory's answers"


async def test_claims_follow_the_fair_order(tmp_path: Path) -> None:
    store = await Store.open(db_url(tmp_path))
    try:
        now = datetime.now(UTC)
        burst = {f"m{i}": now + timedelta(seconds=0.2 * i) for i in range(1, 10)}
        await store.enqueue_events([(f"m{i}", "messages", "{}") for i in range(10)], fair_at=burst)
        await store.enqueue_events([("alice", "messages", "{}")])
        taken = [e.event_id for e in await store.claim_events("w", limit=3)]
        # Her message is due at once even though the burst's fair times lie ahead: nobody waits for them.
        assert taken[:2] == ["m0", "alice"] and taken[2] == "m1", taken
        rest = [e.event_id for e in await store.claim_events("w", limit=20)]
        assert rest == [f"m{i}" for i in range(2, 10)]
    finally:
        await store.close()


def test_rate_limiter_allows_a_burst_then_notes_once_a_minute() -> None:
    clock = [0.0]
    limiter = RateLimiter(3, clock=lambda: clock[0])
    assert [limiter.take("p") for _ in range(6)] == ["ok", "ok", "ok", "note", "drop", "drop"]
    assert limiter.take("q") == "ok", "another person has a bucket of their own"
    clock[0] = 20.0  # one token back (3 a minute)
    assert [limiter.take("p"), limiter.take("p")] == ["ok", "drop"], "no second note within the minute"
    clock[0] = 200.0
    assert [limiter.take("p") for _ in range(4)] == ["ok", "ok", "ok", "note"]
    assert RateLimiter(0).take("p") == "ok"
