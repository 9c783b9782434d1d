"""Tickets and their outbox: the helpdesk handoff, its transitions, and the ITSM events each one queues."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, Select, and_, case, func, literal, or_, select, text, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import ColumnElement

from bot.store.base import StoreBase
from bot.store.records import (
    FIRST_TICKET_NUMBER,
    OutboxItem,
    Ticket,
    TicketChange,
    TicketRefused,
    parse_ticket_number,
    ticket_payload,
    transcript_entry,
)
from bot.store.schema import (
    UtcDateTime,
    outbox,
    read_record,
    read_ticket,
    ticket_counter,
    ticket_number_seq,
    tickets,
)

MAX_TRANSCRIPT_ENTRIES = 50
TICKET_LOCK_NAMESPACE = (
    0x5449434B  # "TICK": advisory locks that serialise one thread's or one person's filings
)


class TicketStore(StoreBase):
    """The Store's ticket queries.

    A number may be written "HD-1042", "hd-1042" or "1042". The transitions answer None for a ticket that does
    not exist (numbers come from users and card submits, so that is an answer, not a bug); each one that
    happens queues its outbox event in the transaction that makes the change."""

    async def create_ticket(
        self,
        *,
        dedupe_key: str,
        requester_id: str,
        requester_email: str,
        requester_name: str,
        room_id: str,
        thread_id: str | None,
        original_text: str,
        codes: Sequence[str],
        articles: Sequence[str],
        steps_suggested: Sequence[str],
        note: str | None,
        transcript: Sequence[Mapping[str, str]],
        reply_parent: str | None,
        one_per_thread: bool = False,
        hourly_cap: int = 0,
    ) -> tuple[Ticket, bool]:
        """Open a ticket once per dedupe_key; a retry gets the existing ticket and False.

        With one_per_thread, a thread whose ticket is still open or claimed gets no second one, and with
        hourly_cap a requester no more than that many an hour: both raise TicketRefused, checked in the
        transaction that inserts, so that concurrent (forged) submits cannot slip past them."""
        now = self._now()
        by_key = select(tickets).where(tickets.c.dedupe_key == dedupe_key)
        async with self._begin() as conn:
            existing = (await conn.execute(by_key)).first()
            if existing is not None:
                return read_ticket(existing), False
            if one_per_thread and thread_id:
                await self._serialise(conn, f"thread:{room_id}:{thread_id}")
                open_one = (await conn.execute(_open_in_thread(room_id, thread_id))).first()
                if open_one is not None:
                    raise TicketRefused(read_ticket(open_one))
            if hourly_cap > 0:
                await self._serialise(conn, f"requester:{requester_id}")
                recent = select(func.count()).where(
                    tickets.c.requester_id == requester_id, tickets.c.created_at > now - timedelta(hours=1)
                )
                if (await conn.execute(recent)).scalar_one() >= hourly_cap:
                    raise TicketRefused(None, hourly_cap)
            values = {
                "number": await self._allocate_ticket_number(conn),
                "dedupe_key": dedupe_key,
                "status": "open",
                "requester_id": requester_id,
                "requester_email": requester_email,
                "requester_name": requester_name,
                "room_id": room_id,
                "thread_id": thread_id,
                "original_text": original_text,
                "codes": list(codes),
                "articles": list(articles),
                "steps_suggested": list(steps_suggested),
                "note": note,
                "transcript": [dict(entry) for entry in transcript][-MAX_TRANSCRIPT_ENTRIES:],
                "info_requests": 0,
                "reopened": 0,
                "created_at": now,
                "updated_at": now,
                "reply_parent": reply_parent,
            }
            insert = self._insert_or_ignore(tickets, "dedupe_key", values).returning(*tickets.c)
            row = (await conn.execute(insert)).first()
            if row is None:
                # Only on PostgreSQL: a concurrent create with the same key committed after our look. Its ticket
                # is the answer; the sequence value we drew becomes a gap, which sequences allow anyway.
                return read_ticket((await conn.execute(by_key)).one()), False
            ticket = read_ticket(row)
            actor = {"id": requester_id, "name": requester_name}
            await _enqueue_outbox(conn, ticket, "ticket.created", now, {"actor": actor})
        return ticket, True

    async def open_ticket_in_thread(self, room_id: str, thread_id: str) -> Ticket | None:
        """The thread's ticket that is still open or claimed, if it has one."""
        async with self._begin() as conn:
            row = (await conn.execute(_open_in_thread(room_id, thread_id))).first()
        return None if row is None else read_ticket(row)

    async def _serialise(self, conn: AsyncConnection, what: str) -> None:
        """Make concurrent transactions about `what` take turns (SQLite's BEGIN IMMEDIATE already does)."""
        if self.dialect == "postgresql":
            key = int.from_bytes(hashlib.sha256(what.encode()).digest()[:4], "big") & 0x7FFFFFFF
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(:ns, :key)"), {"ns": TICKET_LOCK_NAMESPACE, "key": key}
            )

    async def get_ticket(self, number: str) -> Ticket | None:
        key = parse_ticket_number(number)
        if key is None:
            return None
        async with self._begin() as conn:
            row = (await conn.execute(select(tickets).where(tickets.c.number == key))).first()
        return None if row is None else read_ticket(row)

    async def set_helpdesk_message(self, number: str, message_id: str) -> None:
        """Remember the card posted in the helpdesk space, so a later change can point at it."""
        statement = (
            update(tickets)
            .where(tickets.c.number == _ticket_key(number))
            .values(helpdesk_message_id=message_id, updated_at=self._now())
        )
        async with self._begin() as conn:
            if (await conn.execute(statement)).rowcount == 0:
                raise KeyError(number)

    async def claim_ticket(self, number: str, *, assignee_id: str, assignee_name: str) -> TicketChange | None:
        """Take an open ticket. Of concurrent claims exactly one wins; the others see who has it."""
        now = self._now()
        return await self._transition(
            number,
            "ticket.claimed",
            allowed=tickets.c.status == "open",
            changes={
                "status": "claimed",
                "assignee_id": assignee_id,
                "assignee_name": assignee_name,
                "claimed_at": now,
                "first_claimed_at": func.coalesce(tickets.c.first_claimed_at, literal(now, UtcDateTime)),
            },
            actor_id=assignee_id,
            actor_name=assignee_name,
            now=now,
        )

    async def resolve_ticket(
        self, number: str, *, by_id: str, by_name: str, resolution: str
    ) -> TicketChange | None:
        """Close an open or claimed ticket. Resolving an unclaimed one counts as claiming it too."""
        now = self._now()
        unassigned = tickets.c.assignee_id.is_(None)
        return await self._transition(
            number,
            "ticket.resolved",
            allowed=tickets.c.status.in_(("open", "claimed")),
            changes={
                "status": "resolved",
                "resolution": resolution,
                "resolved_at": now,
                "assignee_id": case((unassigned, by_id), else_=tickets.c.assignee_id),
                "assignee_name": case((unassigned, by_name), else_=tickets.c.assignee_name),
                # Typed, so the bind goes through UtcDateTime like every other time the store writes.
                "claimed_at": func.coalesce(tickets.c.claimed_at, literal(now, UtcDateTime)),
                "first_claimed_at": func.coalesce(tickets.c.first_claimed_at, literal(now, UtcDateTime)),
            },
            actor_id=by_id,
            actor_name=by_name,
            now=now,
        )

    async def reopen_ticket(self, number: str, *, requester_id: str) -> TicketChange | None:
        """The requester says the fix did not work: back to the queue, unassigned."""
        now = self._now()
        return await self._transition(
            number,
            "ticket.reopened",
            allowed=and_(tickets.c.status == "resolved", tickets.c.requester_id == requester_id),
            changes={
                "status": "open",
                "assignee_id": None,
                "assignee_name": None,
                # The claim and resolve times describe the current round, which starts again now
                # (first_claimed_at keeps the first claim for the stats).
                "claimed_at": None,
                "resolved_at": None,
                "reopened": tickets.c.reopened + 1,
            },
            actor_id=requester_id,
            now=now,
        )

    async def cancel_ticket(self, number: str, *, requester_id: str) -> TicketChange | None:
        """The requester withdraws a ticket nobody has resolved yet."""
        now = self._now()
        return await self._transition(
            number,
            "ticket.cancelled",
            allowed=and_(tickets.c.status.in_(("open", "claimed")), tickets.c.requester_id == requester_id),
            changes={"status": "cancelled"},
            actor_id=requester_id,
            now=now,
        )

    async def request_info(
        self, number: str, *, by_id: str, by_name: str, question: str
    ) -> TicketChange | None:
        """Staff ask the requester something; the question joins the transcript (callers need not add it)."""
        now = self._now()
        return await self._transition(
            number,
            "ticket.info_requested",
            allowed=tickets.c.status.in_(("open", "claimed")),
            changes={"info_requests": tickets.c.info_requests + 1},
            actor_id=by_id,
            actor_name=by_name,
            now=now,
            said=transcript_entry(by_name, question, now),
            details={"question": question},
        )

    async def answer_info(self, number: str, *, requester_id: str, who: str, answer: str) -> Ticket | None:
        """The requester's answer to the question the helpdesk asked: kept only while one is open (the ticket
        is open or claimed, and has had more questions than answers); None otherwise."""
        now = self._now()
        locked = select(tickets).where(
            tickets.c.number == _ticket_key(number),
            tickets.c.requester_id == requester_id,
            tickets.c.status.in_(("open", "claimed")),
        )
        async with self._begin() as conn:
            row = (await conn.execute(locked.with_for_update())).first()
            if row is None:
                return None
            answers = sum(1 for entry in row.transcript if entry.get("kind") == "answer")
            if row.info_requests <= answers:
                return None
            entry = transcript_entry(who, answer, now) | {"kind": "answer"}
            return read_ticket(await _append_transcript(conn, row.id, row.transcript, entry, now))

    async def add_transcript(self, number: str, who: str, text: str) -> None:
        now = self._now()
        # FOR UPDATE makes the read-append-write atomic on PostgreSQL; SQLite's writer lock already does.
        locked = select(tickets.c.id, tickets.c.transcript).where(tickets.c.number == _ticket_key(number))
        async with self._begin() as conn:
            row = (await conn.execute(locked.with_for_update())).first()
            if row is None:
                raise KeyError(number)
            await _append_transcript(conn, row.id, row.transcript, transcript_entry(who, text, now), now)

    async def list_tickets(
        self, statuses: Sequence[str] = ("open", "claimed"), limit: int = 50
    ) -> list[Ticket]:
        # A bare "open" is a Sequence[str] too, and would silently match the statuses "o", "p", "e", "n".
        wanted = (statuses,) if isinstance(statuses, str) else tuple(statuses)
        return await self._tickets_where(tickets.c.status.in_(wanted), limit)

    async def tickets_for_requester(self, person_id: str, limit: int = 20) -> list[Ticket]:
        return await self._tickets_where(tickets.c.requester_id == person_id, limit)

    # --- outbox --------------------------------------------------------------------------------------------

    async def claim_outbox(
        self, worker_id: str, *, limit: int = 10, lease_seconds: float = 60.0
    ) -> list[OutboxItem]:
        """Lease due items, at most one per ticket: that ticket's oldest undelivered one.

        Later items of a ticket wait until the earlier one is delivered, so the receiver sees each ticket's
        events in order even across retries. A dead item keeps blocking its ticket's later items for the same
        reason; it stays in the table, where an admin can look at it.
        """
        if limit <= 0:
            return []
        now = self._now()
        candidate, earlier = outbox.alias("candidate"), outbox.alias("earlier")
        head_of_ticket = (
            select(func.min(earlier.c.sequence))
            .where(earlier.c.ticket_id == candidate.c.ticket_id, earlier.c.status != "delivered")
            .scalar_subquery()
        )
        # The same single-statement pick-and-take as claim_events: SKIP LOCKED on PostgreSQL, the writer lock
        # on SQLite. A leased item stays "pending" until its lease runs out.
        picked = (
            select(candidate.c.id)
            .where(
                candidate.c.status == "pending",
                candidate.c.next_attempt_at <= now,
                or_(candidate.c.lease_until.is_(None), candidate.c.lease_until <= now),
                candidate.c.sequence == head_of_ticket,
            )
            .order_by(candidate.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        claim = (
            update(outbox)
            .where(outbox.c.id.in_(picked))
            .values(
                leased_by=worker_id,
                lease_until=now + timedelta(seconds=lease_seconds),
                attempts=outbox.c.attempts + 1,
            )
            .returning(*outbox.c)
        )
        async with self._begin() as conn:
            rows = (await conn.execute(claim)).all()
        return [read_record(OutboxItem, row) for row in sorted(rows, key=lambda row: row.id)]

    async def mark_outbox_delivered(self, item_id: int) -> None:
        await self._update_outbox(
            item_id, status="delivered", delivered_at=self._now(), leased_by=None, lease_until=None
        )

    async def mark_outbox_failed(self, item_id: int, error: str, *, retry_in: float | None) -> None:
        """Retry after retry_in seconds, or give up (None): a dead item still holds back its ticket's later ones."""
        # An outbox item waiting for its retry stays "pending".
        await self._update_outbox(item_id, **self._failure(error, retry_in, retrying=None))

    async def _update_outbox(self, item_id: int, **changes: Any) -> None:
        async with self._begin() as conn:
            result = await conn.execute(update(outbox).where(outbox.c.id == item_id).values(**changes))
        if result.rowcount == 0:
            raise KeyError(item_id)

    async def _allocate_ticket_number(self, conn: AsyncConnection) -> int:
        if self.dialect == "postgresql":
            return int((await conn.execute(select(ticket_number_seq.next_value()))).scalar_one())
        # Runs inside the ticket's BEGIN IMMEDIATE transaction, so no other writer can draw the same number,
        # and a rolled-back ticket gives its number back. The upsert also creates the row on first use.
        bump = (
            sqlite_insert(ticket_counter)
            .values(id=1, last_number=FIRST_TICKET_NUMBER)
            .on_conflict_do_update(
                index_elements=[ticket_counter.c.id], set_={"last_number": ticket_counter.c.last_number + 1}
            )
            .returning(ticket_counter.c.last_number)
        )
        return int((await conn.execute(bump)).scalar_one())

    async def _transition(
        self,
        number: str,
        event: str,
        *,
        allowed: ColumnElement[bool],
        changes: Mapping[str, Any],
        actor_id: str,
        actor_name: str | None = None,
        now: datetime,
        said: dict[str, str] | None = None,
        details: Mapping[str, str] | None = None,
    ) -> TicketChange | None:
        key = parse_ticket_number(number)
        if key is None:
            return None
        # The condition lives in the UPDATE itself: on PostgreSQL a racing transaction waits for the row lock
        # and then re-checks it against the winner's committed row; on SQLite writers are serialised anyway.
        statement = (
            update(tickets)
            .where(tickets.c.number == key, allowed)
            .values({**changes, "updated_at": now})
            .returning(*tickets.c)
        )
        async with self._begin() as conn:
            row = (await conn.execute(statement)).first()
            if row is None:
                current = (await conn.execute(select(tickets).where(tickets.c.number == key))).first()
                return None if current is None else TicketChange(ok=False, ticket=read_ticket(current))
            if said is not None:
                row = await _append_transcript(conn, row.id, row.transcript, said, now)
            ticket = read_ticket(row)
            # Without a name the actor is the requester, whose name the ticket already has.
            actor = {"id": actor_id, "name": ticket.requester_name if actor_name is None else actor_name}
            await _enqueue_outbox(conn, ticket, event, now, {"actor": actor, **(details or {})})
        return TicketChange(ok=True, ticket=ticket)

    async def _tickets_where(self, condition: ColumnElement[bool], limit: int) -> list[Ticket]:
        query = select(tickets).where(condition).order_by(tickets.c.created_at.desc(), tickets.c.id.desc())
        async with self._begin() as conn:
            rows = (await conn.execute(query.limit(limit))).all()
        return [read_ticket(row) for row in rows]


def _open_in_thread(room_id: str, thread_id: str) -> Select[Any]:
    return (
        select(tickets)
        .where(
            tickets.c.room_id == room_id,
            tickets.c.thread_id == thread_id,
            tickets.c.status.in_(("open", "claimed")),
        )
        .order_by(tickets.c.id)
        .limit(1)
    )


def _ticket_key(number: str) -> int:
    key = parse_ticket_number(number)
    if key is None:
        raise KeyError(number)
    return key


async def _append_transcript(
    conn: AsyncConnection,
    ticket_id: int,
    transcript: list[dict[str, str]],
    entry: dict[str, str],
    now: datetime,
) -> Row[Any]:
    """Append to a ticket the caller has locked; only the newest entries are kept so a chatty thread stays small."""
    kept = [*transcript, entry][-MAX_TRANSCRIPT_ENTRIES:]
    statement = (
        update(tickets)
        .where(tickets.c.id == ticket_id)
        .values(transcript=kept, updated_at=now)
        .returning(*tickets.c)
    )
    return (await conn.execute(statement)).one()


async def _enqueue_outbox(
    conn: AsyncConnection, ticket: Ticket, event: str, now: datetime, details: Mapping[str, Any]
) -> None:
    """Queue the webhook call in the transaction that made the change, so neither happens without the other."""
    # Every caller has just written the ticket row and holds its lock, so two events of one ticket cannot draw
    # the same sequence; the unique constraint would refuse it anyway.
    last = select(func.coalesce(func.max(outbox.c.sequence), 0)).where(outbox.c.ticket_id == ticket.id)
    sequence = int((await conn.execute(last)).scalar_one()) + 1
    payload = {
        **ticket_payload(ticket),
        **details,
        "event": event,
        "at": now.isoformat(),
        "sequence": sequence,
    }
    await conn.execute(
        outbox.insert().values(
            ticket_id=ticket.id,
            sequence=sequence,
            event=event,
            payload=payload,
            status="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    )
