"""Tickets, the outbox, the conversation log and admin stats, on both backends."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from bot.store import (
    TICKET_STATUSES,
    OutboxItem,
    Stats,
    Store,
    Ticket,
    TicketChange,
    ticket_payload,
)
from bot.store.schema import inbox, outbox
from tests import test_store as base
from tests.test_store import Clock, fetch_all

# The backend-parametrized fixtures of test_store, shared here without a conftest of their own.
db_url = base.db_url
clock = base.clock
store = base.store


@pytest.fixture
async def replicas(db_url: str, clock: Clock) -> AsyncIterator[tuple[Store, Store]]:
    """Two processes' stores on one database."""
    first = await Store.open(db_url, now=clock)
    second = await Store.open(db_url, now=clock)
    yield first, second
    await first.close()
    await second.close()


async def open_ticket(store: Store, key: str = "m1", **overrides: Any) -> Ticket:
    facts: dict[str, Any] = {
        "requester_id": "p-ann",
        "requester_email": "ann@example.com",
        "requester_name": "Ann",
        "room_id": "r1",
        "thread_id": f"thread-{key}",
        "original_text": "Error 1000:1002 when I open phone services",
        "codes": ["1000:1002"],
        "articles": ["err-1000-1002"],
        "steps_suggested": ["Sign out", "Sign in again"],
        "note": "tried twice",
        "transcript": [{"who": "Ann", "text": "help", "at": "2025-03-01T07:00:00+00:00"}],
        "reply_parent": f"thread-{key}",
    }
    ticket, created = await store.create_ticket(dedupe_key=key, **(facts | overrides))
    assert created
    return ticket


def found(change: TicketChange | None) -> TicketChange:
    assert change is not None, "the ticket exists"
    return change


def iso(moment: datetime) -> str:
    """How the store writes a time into JSON: ISO 8601 in UTC, whatever zone the clock used."""
    return moment.astimezone(UTC).isoformat()


def events(items: list[OutboxItem]) -> list[tuple[int, str]]:
    return [(item.ticket_id, item.event) for item in items]


async def outbox_counts(url: str) -> dict[str, int]:
    rows = await fetch_all(url, select(outbox.c.status, func.count()).group_by(outbox.c.status))
    return {"pending": 0, "delivered": 0, "dead": 0} | dict(rows)


# --- tickets ---------------------------------------------------------------------------------------------------


async def test_tickets_are_numbered_from_1001_and_read_back(store: Store, clock: Clock) -> None:
    first = await open_ticket(store, "m1")
    clock.advance(5)
    second = await open_ticket(store, "m2", thread_id=None, note=None)
    third = await open_ticket(store, "m3")
    assert [first.number, second.number, third.number] == ["HD-1001", "HD-1002", "HD-1003"]
    assert first == Ticket(
        id=first.id,
        number="HD-1001",
        status="open",
        requester_id="p-ann",
        requester_email="ann@example.com",
        requester_name="Ann",
        room_id="r1",
        thread_id="thread-m1",
        original_text="Error 1000:1002 when I open phone services",
        codes=["1000:1002"],
        articles=["err-1000-1002"],
        steps_suggested=["Sign out", "Sign in again"],
        note="tried twice",
        transcript=[{"who": "Ann", "text": "help", "at": "2025-03-01T07:00:00+00:00"}],
        assignee_id=None,
        assignee_name=None,
        resolution=None,
        helpdesk_message_id=None,
        info_requests=0,
        reopened=0,
        created_at=clock() - timedelta(seconds=5),
        claimed_at=None,
        resolved_at=None,
        updated_at=clock() - timedelta(seconds=5),
        reply_parent="thread-m1",
    )
    assert (second.thread_id, second.note) == (None, None)
    for spelling in ("HD-1002", "hd-1002", "1002", " HD1002 ", "#1002"):
        assert await store.get_ticket(spelling) == second, spelling
    for missing in ("HD-999", "HD-1004", "banana", "HD-", "12345678901234567890"):
        assert await store.get_ticket(missing) is None, missing


async def test_concurrent_creates_get_distinct_consecutive_numbers(replicas: tuple[Store, Store]) -> None:
    created = await asyncio.gather(
        *(open_ticket(replicas[n % 2], f"m{n}", requester_id=f"p{n}") for n in range(10))
    )
    assert sorted(ticket.number for ticket in created) == [f"HD-{n}" for n in range(1001, 1011)]


async def test_create_is_idempotent_on_the_dedupe_key(
    replicas: tuple[Store, Store], db_url: str, clock: Clock
) -> None:
    first = await open_ticket(replicas[0], "m1")
    clock.advance(60)
    again, created = await replicas[1].create_ticket(
        dedupe_key="m1",
        requester_id="p-someone-else",
        requester_email="x@example.com",
        requester_name="X",
        room_id="r9",
        thread_id=None,
        original_text="retried",
        codes=[],
        articles=[],
        steps_suggested=[],
        note=None,
        transcript=[],
        reply_parent=None,
    )
    assert (again, created) == (first, False)
    # A redelivered event racing itself across replicas still makes one ticket.
    racing = await asyncio.gather(*(open_ticket_or_existing(replicas[n % 2], "m2") for n in range(6)))
    assert sum(created for _, created in racing) == 1
    assert len({ticket.id for ticket, _ in racing}) == 1
    # On PostgreSQL the losers of the race burn sequence numbers, so the number is not always HD-1002.
    assert (await replicas[0].get_ticket(racing[0][0].number)) == racing[0][0]
    rows = await fetch_all(db_url, select(outbox.c.ticket_id, outbox.c.event).order_by(outbox.c.id))
    assert rows == [(first.id, "ticket.created"), (racing[0][0].id, "ticket.created")]


async def open_ticket_or_existing(store: Store, key: str) -> tuple[Ticket, bool]:
    return await store.create_ticket(
        dedupe_key=key,
        requester_id="p-ann",
        requester_email="ann@example.com",
        requester_name="Ann",
        room_id="r1",
        thread_id=None,
        original_text="x",
        codes=[],
        articles=[],
        steps_suggested=[],
        note=None,
        transcript=[],
        reply_parent=None,
    )


async def test_ten_concurrent_claims_have_exactly_one_winner(
    replicas: tuple[Store, Store], clock: Clock, db_url: str
) -> None:
    ticket = await open_ticket(replicas[0])
    clock.advance(30)
    outcomes = await asyncio.gather(
        *(
            replicas[n % 2].claim_ticket(ticket.number, assignee_id=f"staff{n}", assignee_name=f"Staff {n}")
            for n in range(10)
        )
    )
    changes = [found(outcome) for outcome in outcomes]
    winners = [change for change in changes if change.ok]
    assert len(winners) == 1
    winner = winners[0].ticket
    assert winner.status == "claimed"
    assert winner.claimed_at == clock() == winner.updated_at
    # Every loser is shown who has it.
    assert {(c.ticket.status, c.ticket.assignee_id) for c in changes} == {("claimed", winner.assignee_id)}
    assert {c.ticket.assignee_name for c in changes} == {winner.assignee_name}
    rows = await fetch_all(db_url, select(outbox.c.event, outbox.c.sequence).order_by(outbox.c.id))
    assert rows == [("ticket.created", 1), ("ticket.claimed", 2)]


async def test_resolve_from_open_or_claimed_and_only_once(store: Store, clock: Clock) -> None:
    claimed = await open_ticket(store, "m1")
    unclaimed = await open_ticket(store, "m2")
    assert found(await store.claim_ticket(claimed.number, assignee_id="s1", assignee_name="Sam")).ok
    clock.advance(100)

    done = found(
        await store.resolve_ticket(claimed.number, by_id="s2", by_name="Kim", resolution="reset the phone")
    )
    assert done.ok
    # Whoever claimed it keeps it; the resolver only fills an empty assignee.
    assert (done.ticket.status, done.ticket.assignee_id, done.ticket.assignee_name) == (
        "resolved",
        "s1",
        "Sam",
    )
    assert done.ticket.claimed_at == clock() - timedelta(seconds=100)
    assert (done.ticket.resolution, done.ticket.resolved_at) == ("reset the phone", clock())

    direct = found(
        await store.resolve_ticket(unclaimed.number, by_id="s2", by_name="Kim", resolution="fixed")
    )
    assert direct.ok
    assert (direct.ticket.assignee_id, direct.ticket.assignee_name) == ("s2", "Kim")
    assert direct.ticket.claimed_at == clock() == direct.ticket.resolved_at

    twice = found(await store.resolve_ticket(claimed.number, by_id="s3", by_name="Lee", resolution="other"))
    assert not twice.ok
    assert twice.ticket == done.ticket
    assert not found(await store.claim_ticket(claimed.number, assignee_id="s3", assignee_name="Lee")).ok


async def test_only_the_requester_reopens_and_only_a_resolved_ticket(store: Store, clock: Clock) -> None:
    ticket = await open_ticket(store)
    assert not found(await store.reopen_ticket(ticket.number, requester_id="p-ann")).ok  # still open
    await store.claim_ticket(ticket.number, assignee_id="s1", assignee_name="Sam")
    await store.resolve_ticket(ticket.number, by_id="s1", by_name="Sam", resolution="restart")
    stranger = found(await store.reopen_ticket(ticket.number, requester_id="p-bob"))
    assert not stranger.ok
    assert stranger.ticket.status == "resolved"

    clock.advance(600)
    reopened = found(await store.reopen_ticket("hd-1001", requester_id="p-ann"))
    assert reopened.ok
    back = reopened.ticket
    assert (back.status, back.assignee_id, back.assignee_name, back.reopened) == ("open", None, None, 1)
    assert (back.claimed_at, back.resolved_at, back.updated_at) == (None, None, clock())
    assert back.resolution == "restart"  # the answer that did not work, for whoever picks it up next
    assert found(await store.claim_ticket(ticket.number, assignee_id="s2", assignee_name="Kim")).ok


async def test_only_the_requester_cancels_an_unresolved_ticket(store: Store) -> None:
    ticket = await open_ticket(store)
    await store.claim_ticket(ticket.number, assignee_id="s1", assignee_name="Sam")
    assert not found(await store.cancel_ticket(ticket.number, requester_id="s1")).ok
    cancelled = found(await store.cancel_ticket(ticket.number, requester_id="p-ann"))
    assert cancelled.ok
    assert (cancelled.ticket.status, cancelled.ticket.assignee_id) == ("cancelled", "s1")
    assert not found(await store.cancel_ticket(ticket.number, requester_id="p-ann")).ok
    assert not found(await store.resolve_ticket(ticket.number, by_id="s1", by_name="Sam", resolution="x")).ok
    assert not found(await store.reopen_ticket(ticket.number, requester_id="p-ann")).ok

    resolved = await open_ticket(store, "m2")
    await store.resolve_ticket(resolved.number, by_id="s1", by_name="Sam", resolution="x")
    assert not found(await store.cancel_ticket(resolved.number, requester_id="p-ann")).ok


async def test_request_info_counts_and_joins_the_transcript(store: Store, clock: Clock) -> None:
    ticket = await open_ticket(store)
    clock.advance(10)
    asked = found(
        await store.request_info(ticket.number, by_id="s1", by_name="Sam", question="Which phone model?")
    )
    assert asked.ok
    assert (asked.ticket.status, asked.ticket.info_requests) == ("open", 1)
    assert asked.ticket.transcript[-1] == {
        "who": "Sam",
        "text": "Which phone model?",
        "at": iso(clock()),
    }
    await store.claim_ticket(ticket.number, assignee_id="s1", assignee_name="Sam")
    again = found(await store.request_info(ticket.number, by_id="s1", by_name="Sam", question="Still?"))
    assert (again.ok, again.ticket.info_requests, len(again.ticket.transcript)) == (True, 2, 3)
    await store.resolve_ticket(ticket.number, by_id="s1", by_name="Sam", resolution="ok")
    late = found(await store.request_info(ticket.number, by_id="s1", by_name="Sam", question="?"))
    assert (late.ok, late.ticket.info_requests) == (False, 2)


async def test_unknown_tickets_are_none_for_transitions_and_raise_otherwise(
    store: Store, db_url: str
) -> None:
    await open_ticket(store)
    for missing in ("HD-1002", "nonsense"):
        assert await store.claim_ticket(missing, assignee_id="s", assignee_name="S") is None
        assert await store.resolve_ticket(missing, by_id="s", by_name="S", resolution="r") is None
        assert await store.reopen_ticket(missing, requester_id="p") is None
        assert await store.cancel_ticket(missing, requester_id="p") is None
        assert await store.request_info(missing, by_id="s", by_name="S", question="q") is None
        # These callers hold a ticket they just read, so a missing one is a bug.
        with pytest.raises(KeyError):
            await store.add_transcript(missing, "Ann", "hi")
        with pytest.raises(KeyError):
            await store.set_helpdesk_message(missing, "msg")
    assert await outbox_counts(db_url) == {"pending": 1, "delivered": 0, "dead": 0}


async def test_helpdesk_message_is_remembered(store: Store, clock: Clock) -> None:
    ticket = await open_ticket(store)
    clock.advance(1)
    await store.set_helpdesk_message(ticket.number, "hd-msg-1")
    stored = await store.get_ticket(ticket.number)
    assert stored is not None
    assert (stored.helpdesk_message_id, stored.updated_at) == ("hd-msg-1", clock())


async def test_transcript_keeps_the_last_50_entries(store: Store, clock: Clock) -> None:
    seeded = [{"who": "Ann", "text": f"old {n}", "at": "x"} for n in range(60)]
    ticket = await open_ticket(store, transcript=seeded)
    assert [entry["text"] for entry in ticket.transcript] == [f"old {n}" for n in range(10, 60)]
    for n in range(49):
        await store.add_transcript(ticket.number, "Ann", f"new {n}")
    clock.advance(1)
    await store.add_transcript(ticket.number, "Bot", "y" * 3000)
    stored = await store.get_ticket(ticket.number)
    assert stored is not None
    assert len(stored.transcript) == 50
    assert [entry["text"] for entry in stored.transcript[:-1]] == [f"new {n}" for n in range(49)]
    assert stored.transcript[-1] == {"who": "Bot", "text": "y" * 2000, "at": iso(clock())}


async def test_listing_is_newest_first(store: Store, clock: Clock) -> None:
    made = []
    for n in range(5):
        made.append(await open_ticket(store, f"m{n}", requester_id="p-bob" if n == 2 else "p-ann"))
        clock.advance(1)
    await store.claim_ticket(made[1].number, assignee_id="s", assignee_name="S")
    await store.resolve_ticket(made[3].number, by_id="s", by_name="S", resolution="r")
    numbers = [ticket.number for ticket in await store.list_tickets()]
    assert numbers == ["HD-1005", "HD-1003", "HD-1002", "HD-1001"]
    assert [t.number for t in await store.list_tickets(limit=2)] == ["HD-1005", "HD-1003"]
    assert [t.number for t in await store.list_tickets(("resolved",))] == ["HD-1004"]
    assert [t.number for t in await store.list_tickets("resolved")] == ["HD-1004"]  # not "r", "e", "s"...
    mine = [t.number for t in await store.tickets_for_requester("p-ann")]
    assert mine == ["HD-1005", "HD-1004", "HD-1002", "HD-1001"]
    assert [t.number for t in await store.tickets_for_requester("p-ann", limit=1)] == ["HD-1005"]
    assert [t.number for t in await store.tickets_for_requester("p-bob")] == ["HD-1003"]
    assert await store.tickets_for_requester("p-nobody") == []


# --- outbox ----------------------------------------------------------------------------------------------------


async def test_outbox_payload_is_the_ticket_as_json(store: Store, clock: Clock) -> None:
    ticket = await open_ticket(store)
    clock.advance(30)
    claimed = found(await store.claim_ticket(ticket.number, assignee_id="s1", assignee_name="Sam")).ticket
    [created] = await store.claim_outbox("w1")
    assert (created.ticket_id, created.event, created.attempts, created.created_at) == (
        ticket.id,
        "ticket.created",
        1,
        ticket.created_at,
    )
    assert created.payload == ticket_payload(ticket) | {
        "event": "ticket.created",
        "at": ticket.created_at.isoformat(),
        "sequence": 1,
        "actor": {"id": "p-ann", "name": "Ann"},
    }
    assert created.payload["created_at"] == "2025-03-01T07:00:00+00:00"
    assert json.loads(json.dumps(created.payload)) == created.payload
    await store.mark_outbox_delivered(created.id)
    [claim] = await store.claim_outbox("w1")
    assert claim.payload["status"] == "claimed"
    assert claim.payload == ticket_payload(claimed) | {
        "event": "ticket.claimed",
        "at": iso(clock()),
        "sequence": 2,
        "actor": {"id": "s1", "name": "Sam"},
    }


async def test_outbox_delivers_each_tickets_events_in_order(store: Store, clock: Clock, db_url: str) -> None:
    first = await open_ticket(store, "m1")
    await store.claim_ticket(first.number, assignee_id="s1", assignee_name="Sam")
    await store.resolve_ticket(first.number, by_id="s1", by_name="Sam", resolution="r")
    second = await open_ticket(store, "m2")
    # Only the head of each ticket's queue is offered.
    batch = await store.claim_outbox("w1")
    assert events(batch) == [(first.id, "ticket.created"), (second.id, "ticket.created")]
    assert await store.claim_outbox("w1") == []
    # A failed head holds its ticket back even once it is due again; other tickets are not affected.
    await store.mark_outbox_failed(batch[0].id, "502", retry_in=60)
    await store.mark_outbox_delivered(batch[1].id)
    assert await store.claim_outbox("w1") == []
    clock.advance(60)
    assert events(await store.claim_outbox("w1")) == [(first.id, "ticket.created")]
    await store.mark_outbox_delivered(batch[0].id)
    [claimed] = await store.claim_outbox("w1")
    assert claimed.event == "ticket.claimed"
    await store.mark_outbox_delivered(claimed.id)
    [resolved] = await store.claim_outbox("w1")
    assert (resolved.event, resolved.payload["sequence"]) == ("ticket.resolved", 3)
    await store.mark_outbox_delivered(resolved.id)
    assert await store.claim_outbox("w1") == []
    assert await outbox_counts(db_url) == {"pending": 0, "delivered": 4, "dead": 0}


async def test_a_dead_item_keeps_blocking_its_ticket(store: Store, clock: Clock, db_url: str) -> None:
    stuck = await open_ticket(store, "m1")
    await store.cancel_ticket(stuck.number, requester_id="p-ann")
    other = await open_ticket(store, "m2")
    batch = await store.claim_outbox("w1", limit=1)
    assert events(batch) == [(stuck.id, "ticket.created")]
    await store.mark_outbox_failed(batch[0].id, "x" * 5000, retry_in=None)
    clock.advance(86400 * 30)
    assert events(await store.claim_outbox("w1")) == [(other.id, "ticket.created")]
    assert (
        await store.claim_outbox("w1") == []
    )  # "ticket.cancelled" of the stuck ticket waits behind the dead one
    assert await outbox_counts(db_url) == {"pending": 2, "delivered": 0, "dead": 1}
    [(error, status)] = await fetch_all(
        db_url, select(outbox.c.last_error, outbox.c.status).where(outbox.c.id == batch[0].id)
    )
    assert (error, status) == ("x" * 2000, "dead")


async def test_outbox_retry_waits_for_its_time(store: Store, clock: Clock, db_url: str) -> None:
    await open_ticket(store)
    [item] = await store.claim_outbox("w1", lease_seconds=10)
    await store.mark_outbox_failed(item.id, "ITSM said 503", retry_in=120)
    [(next_attempt, leased_by)] = await fetch_all(
        db_url, select(outbox.c.next_attempt_at, outbox.c.leased_by).where(outbox.c.id == item.id)
    )
    assert leased_by is None
    assert next_attempt.replace(tzinfo=UTC) == clock() + timedelta(seconds=120)
    clock.advance(119.9)
    assert await store.claim_outbox("w1") == []
    clock.advance(0.1)
    [retried] = await store.claim_outbox("w2")
    assert (retried.id, retried.attempts) == (item.id, 2)


async def test_outbox_lease_expiry_hands_the_item_to_another_worker(store: Store, clock: Clock) -> None:
    await open_ticket(store)
    assert await store.claim_outbox("w1", limit=0) == []
    [item] = await store.claim_outbox("w1", lease_seconds=30)
    clock.advance(29.9)
    assert await store.claim_outbox("w2") == []
    clock.advance(0.2)
    [again] = await store.claim_outbox("w2", lease_seconds=30)
    assert (again.id, again.attempts) == (item.id, 2)


async def test_concurrent_outbox_claims_never_overlap(replicas: tuple[Store, Store]) -> None:
    for n in range(20):
        ticket = await open_ticket(replicas[0], f"m{n}")
        await replicas[0].claim_ticket(ticket.number, assignee_id="s", assignee_name="S")
    batches = await asyncio.gather(
        *(replica.claim_outbox(f"w{n}", limit=3) for n in range(5) for replica in replicas)
    )
    claimed = [item for batch in batches for item in batch]
    assert len(claimed) == 20
    assert len({item.id for item in claimed}) == 20
    assert {item.event for item in claimed} == {"ticket.created"}  # never a ticket's second event alongside
    for batch in batches:
        assert [item.id for item in batch] == sorted(item.id for item in batch)


async def test_unknown_outbox_items_raise(store: Store) -> None:
    with pytest.raises(KeyError):
        await store.mark_outbox_delivered(999)
    with pytest.raises(KeyError):
        await store.mark_outbox_failed(999, "boom", retry_in=1)


# --- conversation log ------------------------------------------------------------------------------------------


async def test_recent_messages_are_the_last_few_of_the_thread_oldest_first(
    store: Store, clock: Clock
) -> None:
    for n in range(12):
        await store.log_message(room_id="r1", thread_id="t1", person_id="p1", who="Ann", text=f"line {n}")
        clock.advance(1)
    await store.log_message(room_id="r1", thread_id="t2", person_id="p2", who="Bob", text="elsewhere")
    await store.log_message(room_id="r1", thread_id=None, person_id="bot", who="bot", text="z" * 2500)
    await store.log_message(room_id="r2", thread_id="t1", person_id="p1", who="Ann", text="other room")
    start = clock() - timedelta(seconds=12)
    recent = await store.recent_messages("r1", "t1")
    assert recent == [
        {"who": "Ann", "text": f"line {n}", "at": iso(start + timedelta(seconds=n))} for n in range(2, 12)
    ]
    assert [m["text"] for m in await store.recent_messages("r1", "t1", limit=2)] == ["line 10", "line 11"]
    assert [m["text"] for m in await store.recent_messages("r1", None)] == ["z" * 2000]
    assert await store.recent_messages("r3", "t1") == []


# --- stats -----------------------------------------------------------------------------------------------------


async def triaged(
    store: Store, event_id: str, outcome: str, top_id: str | None, codes: list[str], thread_id: str | None
) -> None:
    await store.record_triage(
        event_id=event_id,
        person_id="p1",
        person_email="ann@example.com",
        room_id="r1",
        text=f"message {event_id}",
        outcome=outcome,
        top_id=top_id,
        score=None if top_id is None else 80.0,
        codes=codes,
        thread_id=thread_id,
    )


async def test_stats_on_a_small_known_dataset(store: Store, clock: Clock) -> None:
    # Before the period: counted nowhere except as a still-open ticket.
    await triaged(store, "old", "fix", "art-a", ["1000:1"], "t-old")
    await store.record_feedback(
        action_id="v-old", person_id="p1", article_id="a", helpful=True, thread_id="t-old"
    )
    await open_ticket(store, "ticket-old", thread_id="t-old")
    clock.advance(3600)
    since = clock()

    await triaged(store, "a", "fix", "art-a", ["1000:1002", "1000:1"], "tA")  # nobody reacted: deflected
    await triaged(store, "b", "fix", "art-a", ["1000:1002"], "tB")  # voted helpful
    await triaged(store, "c", "fix", "art-b", [], "tC")  # escalated
    await triaged(store, "d", "clarify", "art-c", ["1000:1"], "tD")
    await triaged(store, "e", "none", None, ["1000:1002"], "tE")
    await triaged(store, "f", "fix", "art-b", [], None)  # no thread to check
    await store.record_feedback(
        action_id="v1", person_id="p1", article_id="art-a", helpful=True, thread_id="tB"
    )
    await store.record_feedback(
        action_id="v2", person_id="p1", article_id="art-c", helpful=False, thread_id="tD"
    )

    resolved = await open_ticket(store, "ticket-1", thread_id="tC")
    claimed = await open_ticket(store, "ticket-2", thread_id="tX")
    await open_ticket(store, "ticket-3", thread_id="tY")
    clock.advance(60)
    await store.claim_ticket(resolved.number, assignee_id="s1", assignee_name="Sam")
    clock.advance(120)
    await store.claim_ticket(claimed.number, assignee_id="s1", assignee_name="Sam")
    clock.advance(120)
    await store.resolve_ticket(resolved.number, by_id="s1", by_name="Sam", resolution="r")

    clock.advance(86400)
    await triaged(store, "g", "fix", "art-a", ["1000:9"], "tG")  # confident, but too recent to judge

    assert await store.stats(since) == Stats(
        messages_triaged=7,
        confident=5,
        clarify=1,
        none=1,
        helpful=1,
        not_helpful=1,
        escalations=3,
        resolved_by_bot=1,
        potential_deflection=1,
        top_codes=[("1000:1002", 3), ("1000:1", 2), ("1000:9", 1)],
        top_articles=[("art-a", 3), ("art-b", 2)],
        open_tickets=3,
        median_claim_seconds=120.0,
        median_resolve_seconds=300.0,
    )
    # Nothing after the period starts: zeros, and no medians to speak of.
    empty = await store.stats(clock() + timedelta(seconds=1))
    assert (empty.messages_triaged, empty.escalations, empty.top_codes, empty.open_tickets) == (0, 0, [], 3)
    assert (empty.median_claim_seconds, empty.median_resolve_seconds) == (None, None)


async def test_unmatched_is_the_newest_non_confident_triage(store: Store, clock: Clock) -> None:
    await triaged(store, "m1", "none", None, [], "t1")
    clock.advance(1)
    await triaged(store, "m2", "fix", "art-a", ["1000:1"], "t2")
    clock.advance(1)
    await triaged(store, "m3", "clarify", "art-b", ["1000:2"], "t3")
    clock.advance(1)
    await triaged(store, "m4", "none", None, [], None)
    assert [record.event_id for record in await store.unmatched()] == ["m4", "m3", "m1"]
    [newest, _] = await store.unmatched(limit=2)
    assert (newest.event_id, newest.outcome, newest.thread_id, newest.created_at) == (
        "m4",
        "none",
        None,
        clock(),
    )
    assert newest.created_at.tzinfo == UTC


# --- retention -------------------------------------------------------------------------------------------------


async def test_purge_deletes_only_what_is_handled_and_old(db_url: str, store: Store, clock: Clock) -> None:
    async def old_and_new(tag: str) -> None:
        """One of everything at the current time: an event done, one pending, one dead, effects, log, ticket."""
        await store.enqueue_events([(f"{tag}-done", "messages", "{}"), (f"{tag}-waiting", "messages", "{}")])
        await store.enqueue_events([(f"{tag}-dead", "messages", "{}")])
        for claimed in await store.claim_events("w1", limit=10):
            if claimed.event_id == f"{tag}-done":
                await store.record_effect(claimed.event_id, "reply", "m")
                await store.mark_done(claimed.event_id)
            elif claimed.event_id == f"{tag}-dead":
                await store.mark_failed(claimed.event_id, "boom", retry_in=None)
            else:
                await store.mark_failed(claimed.event_id, "later", retry_in=3600)
        await store.log_message(room_id="r1", thread_id=None, person_id="p", who="Ann", text=f"{tag} hello")
        ticket = await open_ticket(store, key=f"{tag}-ticket")
        [item] = await store.claim_outbox("w1")
        assert item.ticket_id == ticket.id
        await store.mark_outbox_delivered(item.id)

    await old_and_new("old")
    clock.advance(20 * 86400)
    await old_and_new("new")
    clock.advance(86400)

    deleted = await store.purge(timedelta(days=14), batch=1)  # batch=1: the loop runs until nothing is left
    assert deleted == {"inbox": 1, "event_effects": 1, "outbox": 1, "messages_log": 1}
    left = {row.event_id: row.status for row in await fetch_all(db_url, select(inbox))}
    assert left == {
        "old-waiting": "failed",
        "old-dead": "dead",
        "new-done": "done",
        "new-waiting": "failed",
        "new-dead": "dead",
    }
    assert await store.effects("old-done") == {} and await store.effects("new-done") == {"reply": "m"}
    assert [m["text"] for m in await store.recent_messages("r1", None)] == ["new hello"]
    assert len(await fetch_all(db_url, select(outbox))) == 1
    assert len(await store.list_tickets(TICKET_STATUSES)) == 2  # tickets stay
    assert await store.purge(timedelta(days=14)) == dict.fromkeys(deleted, 0)
