"""What admins read and repair, on both backends: claim times across reopens, the chart per day, the questions
without an answer, dead ITSM deliveries, and the replicas' knowledge versions."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import create_async_engine

from bot.store import DeliveryNotDead, Store
from bot.store.migrations import UPGRADES, migrate
from bot.store.schema import outbox, tickets
from bot.store.store import async_url
from tests import test_store as base
from tests.test_store import Clock, build_version_1, fetch_all
from tests.test_store_tickets import found, open_ticket, triaged

db_url = base.db_url
clock = base.clock
store = base.store


# --- a claim's time survives a reopen ---------------------------------------------------------------------


async def test_the_time_to_claim_survives_a_reopen(store: Store, clock: Clock) -> None:
    since = clock()
    ticket = await open_ticket(store, "t1")
    clock.advance(90)
    found(await store.claim_ticket(ticket.number, assignee_id="s1", assignee_name="Sam"))
    clock.advance(60)
    found(await store.resolve_ticket(ticket.number, by_id="s1", by_name="Sam", resolution="restart"))
    reopened = found(await store.reopen_ticket(ticket.number, requester_id="p-ann"))
    # The ticket's own claim describes the current round: empty again, as the ITSM receiver sees it.
    assert reopened.ticket.claimed_at is None
    assert (await store.stats(since)).median_claim_seconds == 90.0
    clock.advance(600)
    found(await store.claim_ticket(ticket.number, assignee_id="s2", assignee_name="Pat"))
    # The first claim is the time to claim; a second round does not move it.
    assert (await store.stats(since)).median_claim_seconds == 90.0


async def test_resolving_an_unclaimed_ticket_counts_as_its_first_claim(store: Store, clock: Clock) -> None:
    since = clock()
    ticket = await open_ticket(store, "t1")
    clock.advance(30)
    found(await store.resolve_ticket(ticket.number, by_id="s1", by_name="Sam", resolution="done"))
    found(await store.reopen_ticket(ticket.number, requester_id="p-ann"))
    assert (await store.stats(since)).median_claim_seconds == 30.0


async def test_the_upgrade_recovers_first_claims_of_reopened_tickets(db_url: str, clock: Clock) -> None:
    # A version 4 database, where a reopen had already emptied claimed_at; the outbox still has the claim.
    await build_version_1(db_url, clock())
    engine = create_async_engine(async_url(db_url))
    claimed_at = clock() + timedelta(seconds=45)
    try:
        async with engine.begin() as conn:
            assert await migrate(conn, UPGRADES[:3]) == 4
            for n, (claimed, reopened) in enumerate([(None, 1), (claimed_at, 0)], 1):
                values = {
                    "number": 1000 + n,
                    "dedupe_key": f"k{n}",
                    "status": "open" if reopened else "claimed",
                    "requester_id": "p",
                    "requester_email": "ann@example.com",
                    "requester_name": "Ann",
                    "room_id": "r",
                    "original_text": "help",
                    "codes": [],
                    "articles": [],
                    "steps_suggested": [],
                    "transcript": [],
                    "info_requests": 0,
                    "reopened": reopened,
                    "created_at": clock(),
                    "claimed_at": claimed,
                    "updated_at": clock(),
                }
                await conn.execute(tickets.insert().values(values))
            first = (await conn.execute(select(tickets.c.id).where(tickets.c.number == 1001))).scalar_one()
            for sequence, event in enumerate(("ticket.created", "ticket.claimed", "ticket.reopened"), 1):
                at = clock() + timedelta(seconds=45 if event == "ticket.claimed" else sequence * 100)
                await conn.execute(
                    outbox.insert().values(
                        ticket_id=first,
                        sequence=sequence,
                        event=event,
                        payload={},
                        status="delivered",
                        attempts=1,
                        next_attempt_at=at,
                        created_at=at,
                    )
                )
    finally:
        await engine.dispose()
    upgraded = await Store.open(db_url, now=clock)
    try:
        rows = await fetch_all(db_url, text("SELECT number, first_claimed_at FROM tickets ORDER BY number"))
        assert [row[0] for row in rows] == [1001, 1002]
        assert all(row[1] is not None for row in rows), rows
        assert (await upgraded.stats(clock() - timedelta(days=1))).median_claim_seconds == 45.0
    finally:
        await upgraded.close()


# --- the chart's numbers ------------------------------------------------------------------------------------


async def test_daily_counts_fill_every_day_of_the_period(store: Store, clock: Clock) -> None:
    # The clock starts at 07:00 UTC on 2025-03-01 (09:00 in its own zone: days are UTC days).
    clock.advance(-4 * 86400)
    await triaged(store, "too-old", "fix", "a", [], "t-old")
    clock.advance(4 * 86400)
    since = clock() - timedelta(days=3)
    await triaged(store, "a", "fix", "a", [], "tA")
    await triaged(store, "b", "none", None, [], "tB")
    await store.record_feedback(action_id="v1", person_id="p", article_id="a", helpful=True, thread_id="tA")
    await store.record_feedback(action_id="v2", person_id="p", article_id="a", helpful=False, thread_id="tB")
    await open_ticket(store, "t1")
    clock.advance(2 * 86400)
    await triaged(store, "c", "clarify", "a", [], "tC")
    days = await store.daily_counts(since)
    assert [d.day.isoformat() for d in days] == [f"2025-02-{d}" for d in (26, 27, 28)] + [
        f"2025-03-0{d}" for d in (1, 2, 3)
    ]
    table = [(d.messages, d.confident, d.helpful, d.escalations) for d in days]
    assert table == [(0, 0, 0, 0)] * 3 + [(2, 1, 1, 1), (0, 0, 0, 0), (1, 0, 0, 0)]


# --- the questions without an answer ------------------------------------------------------------------------


async def test_gap_questions_are_the_unanswered_and_the_stuck(store: Store, clock: Clock) -> None:
    await triaged(store, "before", "none", None, [], "t0")
    clock.advance(60)
    since = clock()
    await triaged(store, "unsure", "none", "weak-guess", [], "t1")
    await triaged(store, "which", "clarify", "blank-screen", [], "t2")
    await triaged(store, "helped", "fix", "sso-failed", [], "t3")
    clock.advance(1)
    await triaged(store, "stuck", "fix", "sso-failed", [], "t4")
    await triaged(store, "silent", "fix", "sso-failed", [], "t5")
    await store.record_feedback(
        action_id="y", person_id="p", article_id="sso-failed", helpful=True, thread_id="t3"
    )
    await store.record_feedback(
        action_id="n", person_id="p", article_id="cant-sign-in", helpful=False, thread_id="t4"
    )
    questions = await store.gap_questions(since)
    by_text = {q.text: (q.outcome, q.offered, q.stuck) for q in questions}
    assert by_text == {
        "message unsure": ("none", None, False),  # "I'm not sure" offered nothing, whatever came closest
        "message which": ("clarify", "blank-screen", False),
        "message stuck": ("fix", "cant-sign-in", True),  # the article voted down is the one offered
    }
    assert questions[0].text == "message stuck"  # newest first


# --- dead ITSM deliveries ---------------------------------------------------------------------------------


async def test_a_dead_delivery_is_counted_retried_and_dropped(store: Store, clock: Clock) -> None:
    ticket = await open_ticket(store, "t1")
    found(await store.claim_ticket(ticket.number, assignee_id="s", assignee_name="Sam"))
    found(await store.resolve_ticket(ticket.number, by_id="s", by_name="Sam", resolution="ok"))
    [created] = await store.claim_outbox("w")
    await store.mark_outbox_failed(created.id, "HTTP 500", retry_in=None)
    clock.advance(10)
    assert await store.claim_outbox("w") == []  # the dead head holds the ticket's later events back
    stats = await store.stats(clock() - timedelta(days=1))
    assert (stats.dead_deliveries, stats.held_deliveries) == (1, 2)
    [dead] = await store.dead_deliveries()
    assert (dead.id, dead.ticket_number, dead.event, dead.sequence, dead.held, dead.last_error) == (
        created.id,
        ticket.number,
        "ticket.created",
        1,
        2,
        "HTTP 500",
    )

    with pytest.raises(KeyError):
        await store.retry_delivery(99999)
    await store.retry_delivery(created.id)
    [again] = await store.claim_outbox("w")
    assert (again.id, again.attempts) == (created.id, 1)  # from its first attempt
    with pytest.raises(DeliveryNotDead, match="is pending, not dead"):
        await store.drop_delivery(created.id)
    await store.mark_outbox_failed(again.id, "HTTP 500", retry_in=None)

    dropped = await store.drop_delivery(created.id)
    assert dropped.held == 2
    assert await store.dead_deliveries() == []
    [next_one] = await store.claim_outbox("w")
    assert next_one.event == "ticket.claimed"
    stats = await store.stats(clock() - timedelta(days=1))
    assert (stats.dead_deliveries, stats.held_deliveries) == (0, 0)


# --- the replicas' knowledge versions ---------------------------------------------------------------------


async def test_replicas_report_versions_and_leave(db_url: str, clock: Clock) -> None:
    first, second = await Store.open(db_url, now=clock), await Store.open(db_url, now=clock)
    try:
        assert await first.knowledge_version() == 0
        started = clock()
        shared = await first.report_replica(
            "a", version=0, fingerprint="f1", articles=49, error=None, started_at=started
        )
        assert shared == 0
        await second.report_replica(
            "b", version=0, fingerprint="f1", articles=49, error=None, started_at=started
        )
        assert await first.bump_knowledge_version("ada@example.com") == 1
        assert await second.bump_knowledge_version("bob@example.com") == 2
        # The heartbeat answers with the version to load.
        assert (
            await second.report_replica(
                "b", version=2, fingerprint="f2", articles=50, error="1 problem(s)", started_at=started
            )
            == 2
        )
        live = {r.replica_id: r for r in await first.live_replicas(timedelta(seconds=10))}
        assert set(live) == {"a", "b"}
        assert (live["b"].knowledge_version, live["b"].articles, live["b"].knowledge_error) == (
            2,
            50,
            "1 problem(s)",
        )
        clock.advance(30)
        await first.report_replica(
            "a", version=2, fingerprint="f2", articles=50, error=None, started_at=started
        )
        # b has not reported for 30 s: not running, as far as anyone can tell.
        assert [r.replica_id for r in await first.live_replicas(timedelta(seconds=10))] == ["a"]
        await first.leave("a")
        assert await first.live_replicas(timedelta(days=1)) == [
            r for r in await first.live_replicas(timedelta(days=1)) if r.replica_id == "b"
        ]
        clock.advance(2 * 86400)
        await second.leave("nobody")  # and replicas silent for days are forgotten
        assert await first.live_replicas(timedelta(days=30)) == []
    finally:
        await first.close()
        await second.close()
