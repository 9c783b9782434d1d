"""Real `python -m bot serve` processes killed with SIGKILL or stopped with SIGTERM mid-work, then restarted on
the same PostgreSQL database: nothing acknowledged is lost, nothing is said twice."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.app import SHUTDOWN_GRACE_SECONDS
from tests.fakewebex import FakeWebex
from tests.harness import SECRET, verb
from tests.procs import (
    HoldingWebex,
    Receiver,
    ServeProcess,
    bot_messages,
    expire_inbox_leases,
    expire_outbox_leases,
    fresh_pg_database,
    pg_fetch,
    pg_url,
    requested,
    until,
    until_async,
)

# How long a restarted bot may take to answer what a killed one had in hand. The worker's lease is 120 s; a bot
# that only waits for it out leaves a person without an answer for two minutes after every crash.
RESTART_ANSWER_BOUND = 5.0
HOLD = 60.0  # a fake Webex "delay" longer than the test: the kill always lands inside it


@pytest.fixture
async def database() -> AsyncIterator[str]:
    async with fresh_pg_database("test_crash") as name:
        yield name


@pytest.fixture
async def fake_webex() -> AsyncIterator[HoldingWebex]:
    """This module's fake Webex can also stall the posts into one room."""
    fake = HoldingWebex()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


@pytest.fixture
def world(fake_webex: FakeWebex) -> dict[str, Any]:
    alice = fake_webex.add_person("alice@example.com", "Alice Doe")
    sam = fake_webex.add_person("sam@example.com", "Sam Agent")
    sales = fake_webex.add_room("group", "Sales floor")
    helpdesk = fake_webex.add_room("group", "Helpdesk")
    fake_webex.add_membership(helpdesk["id"], sam["id"])
    return {"alice": alice, "sam": sam, "sales": sales["id"], "helpdesk": helpdesk["id"]}


@pytest.fixture
async def procs() -> AsyncIterator[list[ServeProcess]]:
    """Every process a test starts, killed at the end whatever happened."""
    started: list[ServeProcess] = []
    yield started
    for proc in started:
        await proc.close()
        # Shown by pytest only when the test failed.
        print(f"----- {proc.log_path.name} (pid {proc.pid}) -----\n{proc.log()[-4000:]}")


def values(fake: FakeWebex, database: str, **extra: str) -> dict[str, str]:
    return {
        "WEBEX_ACCESS_TOKEN": fake.token,
        "WEBEX_WEBHOOK_SECRET": SECRET,
        "WEBEX_API_URL": fake.base_url,
        "DATABASE_URL": pg_url(database),
        # A short lease: a killed process's events come back within seconds (live workers renew theirs).
        "WORKER_LEASE_SECONDS": "3",
        **extra,
    }


async def serve(procs: list[ServeProcess], env: dict[str, str], tmp_path: Path) -> ServeProcess:
    proc = ServeProcess(env, tmp_path, f"serve-{len(procs) + 1}")
    procs.append(proc)
    await proc.start()
    await proc.wait_ready()
    return proc


async def kill9(proc: ServeProcess) -> None:
    proc.kill9()
    assert await proc.wait_exit(10) == -9


async def inbox(database: str) -> dict[str, Any]:
    rows = await pg_fetch(
        database, "SELECT event_id, status, attempts, leased_by, lease_until, reply_message_id FROM inbox"
    )
    return {row["event_id"]: dict(row) for row in rows}


async def kill_between_ack_and_reply(
    fake: FakeWebex, world: dict[str, Any], database: str, procs: list[ServeProcess], tmp_path: Path
) -> dict[str, Any]:
    """Ack a message, stall its GET /messages/{id}, SIGKILL the server there; returns the message."""
    first = await serve(procs, values(fake, database), tmp_path)
    fake.delay("GET", "/messages/", HOLD)
    msg = fake.add_message(world["sales"], world["alice"], "Error: 1000:1002 when I open phone services")
    assert await first.post(fake.message_created_envelope(msg)) == 200
    await until(lambda: bool(requested(fake, "GET", f"/messages/{msg['id']}")), 10, "the worker to fetch it")
    await kill9(first)
    fake.clear_faults()
    row = (await inbox(database))[msg["id"]]
    assert row["status"] == "working" and row["reply_message_id"] is None, row
    assert bot_messages(fake) == []
    return msg


async def test_kill9_before_the_reply_restart_answers_promptly(
    fake_webex: FakeWebex, world: dict[str, Any], database: str, procs: list[ServeProcess], tmp_path: Path
) -> None:
    msg = await kill_between_ack_and_reply(fake_webex, world, database, procs, tmp_path)
    await serve(procs, values(fake_webex, database), tmp_path)
    started = time.monotonic()
    try:
        await until(
            lambda: bool(bot_messages(fake_webex, parent_id=msg["id"])), RESTART_ANSWER_BOUND, "a reply"
        )
    except AssertionError:
        row = (await inbox(database))[msg["id"]]
        pytest.fail(
            f"the restarted bot did not answer the acknowledged message within {RESTART_ANSWER_BOUND:.0f}s: "
            f"its inbox row is still {row['status']!r}, leased by the dead process {row['leased_by']!r} until "
            f"{row['lease_until']:%H:%M:%S} (claim_events only takes 'working' rows whose lease ran out; the "
            "lease here is WORKER_LEASE_SECONDS=3)"
        )
    assert time.monotonic() - started < RESTART_ANSWER_BOUND
    await asyncio.sleep(0.5)
    assert len(bot_messages(fake_webex, parent_id=msg["id"])) == 1


async def test_kill9_before_the_reply_answers_exactly_once_after_the_lease(
    fake_webex: FakeWebex, world: dict[str, Any], database: str, procs: list[ServeProcess], tmp_path: Path
) -> None:
    msg = await kill_between_ack_and_reply(fake_webex, world, database, procs, tmp_path)
    await serve(procs, values(fake_webex, database), tmp_path)
    assert await expire_inbox_leases(database) == 1  # what waiting out the 120 s lease would do
    await until(lambda: bool(bot_messages(fake_webex, parent_id=msg["id"])), 10, "the reply after restart")
    await until_async(
        lambda: _status_is(database, msg["id"], "done"), 10, "the event to be marked done after restart"
    )
    await asyncio.sleep(0.5)  # room for a second, wrong, reply
    replies = bot_messages(fake_webex, parent_id=msg["id"])
    assert len(replies) == 1 and "1000:1002" in replies[0]["markdown"]
    row = (await inbox(database))[msg["id"]]
    assert row["reply_message_id"] == replies[0]["id"] and row["attempts"] == 2


async def _status_is(database: str, event_id: str, status: str) -> bool:
    return bool((await inbox(database))[event_id]["status"] == status)


async def file_ticket_until_killed(
    fake: FakeWebex, world: dict[str, Any], database: str, procs: list[ServeProcess], tmp_path: Path
) -> tuple[ServeProcess, dict[str, Any]]:
    """Escalate, then click "Send to the helpdesk" and stall the helpdesk card's POST: SIGKILL lands there."""
    first = await serve(procs, values(fake, database, HELPDESK_ROOM_ID=world["helpdesk"]), tmp_path)
    ask = fake.add_message(world["sales"], world["alice"], "talk to a human")
    assert await first.post(fake.message_created_envelope(ask)) == 200
    await until(lambda: bool(bot_messages(fake, world["sales"])), 10, "the note card")
    note_card = bot_messages(fake, world["sales"])[0]
    fake.delay("POST", "/messages", HOLD)
    data = verb(note_card, "file_ticket") | {"note": "restarted twice"}
    action = fake.add_attachment_action(note_card["id"], world["alice"], data)
    assert await first.post(fake.action_created_envelope(action)) == 200
    await until(
        lambda: bool(requested(fake, "POST", "/messages", roomId=world["helpdesk"])),
        10,
        "the ticket card's POST",
    )
    await kill9(first)
    fake.clear_faults()
    return first, {"ask": ask, "action": action}


async def test_kill9_during_the_ticket_workflow_loses_and_doubles_nothing(
    fake_webex: HoldingWebex,
    world: dict[str, Any],
    database: str,
    procs: list[ServeProcess],
    tmp_path: Path,
) -> None:
    """Two kills: between the ticket's insert and its helpdesk card, then between a claim's two messages."""
    env = values(fake_webex, database, HELPDESK_ROOM_ID=world["helpdesk"])
    helpdesk, sales = world["helpdesk"], world["sales"]
    _, seen = await file_ticket_until_killed(fake_webex, world, database, procs, tmp_path)
    tickets = await pg_fetch(database, "SELECT number, helpdesk_message_id FROM tickets")
    assert len(tickets) == 1 and tickets[0]["helpdesk_message_id"] is None  # the kill landed in the window
    assert bot_messages(fake_webex, helpdesk) == []
    number = f"HD-{tickets[0]['number']}"

    second = await serve(procs, env, tmp_path)
    assert await expire_inbox_leases(database) == 1  # waiting out the lease; see the tests above for why
    await until(lambda: len(bot_messages(fake_webex, helpdesk)) >= 1, 10, "the ticket card after restart")

    def to_alice(text: str) -> list[dict[str, Any]]:
        return [m for m in bot_messages(fake_webex, sales) if text in m.get("markdown", "")]

    await until(lambda: len(to_alice(number)) >= 1, 10, "the requester's confirmation")
    await until_async(
        lambda: _status_is(database, seen["action"]["id"], "done"), 10, "the filing event to finish"
    )
    await asyncio.sleep(0.5)
    cards = bot_messages(fake_webex, helpdesk)
    assert len(cards) == 1 and number in cards[0]["markdown"]
    assert len(to_alice(number)) == 1
    assert to_alice(number)[0]["parentId"] == seen["ask"]["id"]
    tickets = await pg_fetch(database, "SELECT number, helpdesk_message_id FROM tickets")
    assert [(f"HD-{t['number']}", t["helpdesk_message_id"]) for t in tickets] == [(number, cards[0]["id"])]
    outbox = await pg_fetch(database, "SELECT event FROM outbox")
    assert [o["event"] for o in outbox] == ["ticket.created"]

    # Sam claims; the bot says so under the card, then dies while telling Alice.
    fake_webex.hold_posts_to = sales
    posts_to_alice = len(requested(fake_webex, "POST", "/messages", roomId=sales))
    claim = fake_webex.add_attachment_action(cards[0]["id"], world["sam"], verb(cards[0], "claim"))
    assert await second.post(fake_webex.action_created_envelope(claim)) == 200
    await until(
        lambda: len(requested(fake_webex, "POST", "/messages", roomId=sales)) > posts_to_alice,
        10,
        "the claim notice to the requester",
    )
    await kill9(second)
    fake_webex.hold_posts_to = None

    def under_card() -> list[dict[str, Any]]:
        return bot_messages(fake_webex, helpdesk, parent_id=cards[0]["id"])

    assert [m["markdown"] for m in under_card()] == [f"Sam Agent claimed {number}."]
    assert to_alice("is on it") == []

    await serve(procs, env, tmp_path)
    assert await expire_inbox_leases(database) == 1
    await until_async(lambda: _status_is(database, claim["id"], "done"), 10, "the claim event to finish")
    await asyncio.sleep(0.5)
    assert [m["markdown"] for m in under_card()] == [f"Sam Agent claimed {number}."]
    assert len(to_alice("is on it")) == 1, (
        "the requester was never told of the claim: the retried event found the ticket already claimed, "
        "answered nothing new (its reply id was recorded) and skipped the notice"
    )


async def test_kill9_during_an_outbox_delivery(
    fake_webex: FakeWebex, world: dict[str, Any], database: str, procs: list[ServeProcess], tmp_path: Path
) -> None:
    receiver = await Receiver().start()
    receiver.hold()  # the ITSM system takes its time: the delivery is in flight when the bot dies
    env = values(
        fake_webex,
        database,
        HELPDESK_ROOM_ID=world["helpdesk"],
        TICKET_WEBHOOK_URL=receiver.url,
        TICKET_WEBHOOK_SECRET="itsm-secret",
    )
    try:
        first = await serve(procs, env, tmp_path)
        ask = fake_webex.add_message(world["sales"], world["alice"], "talk to a human")
        assert await first.post(fake_webex.message_created_envelope(ask)) == 200
        await until(lambda: bool(bot_messages(fake_webex, world["sales"])), 10, "the note card")
        note_card = bot_messages(fake_webex, world["sales"])[0]
        action = fake_webex.add_attachment_action(
            note_card["id"], world["alice"], verb(note_card, "file_ticket")
        )
        assert await first.post(fake_webex.action_created_envelope(action)) == 200
        await until(lambda: bool(bot_messages(fake_webex, world["helpdesk"])), 10, "the ticket card")
        await until(lambda: len(receiver.deliveries) == 1, 10, "the ticket.created delivery to start")
        await until_async(lambda: _status_is(database, action["id"], "done"), 10, "the filing to finish")
        await kill9(first)
        assert not receiver.deliveries[0].completed  # the bot died before the receiver answered
        receiver.release()

        second = await serve(procs, env, tmp_path)
        # The outbox lease is 3 x the 10 s delivery timeout; waiting it out is what this stands in for.
        assert await expire_outbox_leases(database) == 1
        # Work the ticket on the restarted bot: its event must come after the redelivered one.
        ticket_card = bot_messages(fake_webex, world["helpdesk"])[0]
        claim = fake_webex.add_attachment_action(ticket_card["id"], world["sam"], verb(ticket_card, "claim"))
        assert await second.post(fake_webex.action_created_envelope(claim)) == 200

        async def all_delivered() -> bool:
            rows = await pg_fetch(database, "SELECT status FROM outbox")
            return len(rows) == 2 and all(r["status"] == "delivered" for r in rows)

        await until_async(all_delivered, 15, "both outbox events to be delivered")
        outbox = await pg_fetch(database, "SELECT id, event, sequence FROM outbox ORDER BY id")
        by_id = {str(o["id"]): o for o in outbox}
        # Every event arrived; a repeat carries the same delivery id and the same body.
        assert {d.delivery_id for d in receiver.deliveries} == set(by_id)
        for d in receiver.deliveries:
            assert d.event == by_id[d.delivery_id]["event"] == d.body["event"]
            assert d.body["sequence"] == by_id[d.delivery_id]["sequence"]
        firsts = [d for d in receiver.deliveries if d.delivery_id == receiver.deliveries[0].delivery_id]
        assert len(firsts) == 2, "the interrupted delivery is sent again (at least once)"
        assert len({d.raw for d in firsts}) == 1, "a redelivery must be byte-identical (same signature)"
        # In order: the last time each delivery id was seen, ticket.created before ticket.claimed.
        order = list(dict.fromkeys(d.event for d in receiver.deliveries))
        assert order == ["ticket.created", "ticket.claimed"]
        assert len(receiver.deliveries) <= 3  # the interrupted one twice at most, the claim once
    finally:
        await receiver.close()


async def test_sigterm_under_load_exits_cleanly_and_every_acked_event_is_answered_once(
    fake_webex: FakeWebex, world: dict[str, Any], database: str, procs: list[ServeProcess], tmp_path: Path
) -> None:
    first = await serve(procs, values(fake_webex, database), tmp_path)
    fake_webex.delay("GET", "/messages/", 1.0)  # a slow Webex: eight events in flight at any moment
    acked: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    stop_posting = asyncio.Event()

    async def post_one(http: aiohttp.ClientSession, n: int) -> None:
        msg = fake_webex.add_message(world["sales"], world["alice"], f"blank screen when I sign in ({n})")
        try:
            status = await first.post(fake_webex.message_created_envelope(msg), http)
        except aiohttp.ClientError:
            status = 0
        (acked if status == 200 else refused).append(msg)

    async def keep_posting(http: aiohttp.ClientSession) -> None:
        n = 0
        while not stop_posting.is_set() and len(refused) < 10 and n < 200:
            await post_one(http, n)
            n += 1
            await asyncio.sleep(0.01)

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(post_one(http, n) for n in range(1000, 1024)))
        assert len(acked) == 24, "acks must not wait for a slow Webex"
        await until(lambda: len(requested(fake_webex, "GET", "/messages/")) >= 8, 10, "work in flight")
        poster = asyncio.create_task(keep_posting(http))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        first.terminate()
        code = await first.wait_exit(SHUTDOWN_GRACE_SECONDS + 15)
        took = time.monotonic() - started
        stop_posting.set()
        await poster
    log = first.log()
    assert code == 0, log[-3000:]
    assert took < SHUTDOWN_GRACE_SECONDS + 2, f"SIGTERM took {took:.1f}s"
    assert "stopped cleanly" in log and "Traceback" not in log, log[-3000:]

    # Nothing half-done: every row is finished with its reply recorded, or handed back untouched.
    rows = await inbox(database)
    assert {r["status"] for r in rows.values()} <= {"done", "pending"}, rows
    for event_id, row in rows.items():
        replies = bot_messages(fake_webex, parent_id=event_id)
        assert len(replies) <= 1
        if row["status"] == "done":
            assert [m["id"] for m in replies] == [row["reply_message_id"]]
        else:
            assert replies == [] and row["reply_message_id"] is None and row["leased_by"] is None
    assert {m["id"] for m in acked} <= set(rows), "every acknowledged event is in the inbox"

    fake_webex.clear_faults()
    second = await serve(procs, values(fake_webex, database), tmp_path)
    # Webex redelivers what got no 200; the restarted bot answers those too.
    for msg in refused:
        assert await second.post(fake_webex.message_created_envelope(msg)) == 200
    everyone = acked + refused
    await until(
        lambda: all(bot_messages(fake_webex, parent_id=m["id"]) for m in everyone),
        15,
        "a reply to every message after the restart",
    )
    await asyncio.sleep(0.5)
    counts = {m["id"]: len(bot_messages(fake_webex, parent_id=m["id"])) for m in everyone}
    assert set(counts.values()) == {1}, {k: v for k, v in counts.items() if v != 1}
    rows = await inbox(database)
    assert all(r["status"] == "done" for r in rows.values())
