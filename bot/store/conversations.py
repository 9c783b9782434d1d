"""Conversation facts (what the bot made of each message, the votes, the message log) and the admin stats."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, select, true
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import ColumnElement, TableValuedAlias

from bot.store.base import StoreBase
from bot.store.records import MAX_LOGGED_TEXT, Stats, TriageRecord, transcript_entry
from bot.store.schema import feedback, messages_log, outbox, read_triage, tickets, triage

CONFIDENT = "fix"
TOP_N = 10
# How long a confident answer must sit without a vote or a ticket before stats count it as a likely deflection.
DEFLECTION_AGE = timedelta(hours=24)


class ConversationStore(StoreBase):
    """The Store's conversation queries: what the handlers record and what admins read back."""

    async def record_triage(
        self,
        *,
        event_id: str,
        person_id: str,
        person_email: str,
        room_id: str,
        text: str,
        outcome: str,
        top_id: str | None,
        score: float | None,
        codes: list[str],
        thread_id: str | None = None,
    ) -> None:
        values = {
            "event_id": event_id,
            "person_id": person_id,
            "person_email": person_email,
            "room_id": room_id,
            "thread_id": thread_id,
            "text": text,
            "outcome": outcome,
            "top_id": top_id,
            "score": score,
            "codes": codes,
            "created_at": self._now(),
        }
        await self._insert_new(triage, "event_id", values)

    async def get_triage(self, event_id: str) -> TriageRecord | None:
        async with self._begin() as conn:
            row = (await conn.execute(select(triage).where(triage.c.event_id == event_id))).first()
        return None if row is None else read_triage(row)

    async def unmatched(self, limit: int = 20) -> list[TriageRecord]:
        """Newest messages the bot had no confident answer for: what the knowledge base is missing."""
        query = (
            select(triage)
            .where(triage.c.outcome != CONFIDENT)
            .order_by(triage.c.created_at.desc(), triage.c.event_id.desc())
            .limit(limit)
        )
        async with self._begin() as conn:
            return [read_triage(row) for row in (await conn.execute(query)).all()]

    async def record_feedback(
        self, *, action_id: str, person_id: str, article_id: str, helpful: bool, thread_id: str | None
    ) -> bool:
        values = {
            "action_id": action_id,
            "person_id": person_id,
            "article_id": article_id,
            "helpful": helpful,
            "thread_id": thread_id,
            "created_at": self._now(),
        }
        return await self._insert_new(feedback, "action_id", values)

    async def log_message(
        self, *, room_id: str, thread_id: str | None, person_id: str, who: str, text: str
    ) -> None:
        """Keep one line of a conversation so a later ticket can carry it; the caller redacts the text."""
        values = {
            "room_id": room_id,
            "thread_id": thread_id,
            "person_id": person_id,
            "who": who[:255],
            "text": text[:MAX_LOGGED_TEXT],
            "created_at": self._now(),
        }
        async with self._begin() as conn:
            await conn.execute(messages_log.insert().values(values))

    async def recent_messages(
        self, room_id: str, thread_id: str | None, limit: int = 10
    ) -> list[dict[str, str]]:
        """The last `limit` lines of a thread (or of the room's top level when thread_id is None), oldest first."""
        log = messages_log.c
        # "= NULL" matches nothing, and IS NOT DISTINCT FROM defeats the index on PostgreSQL.
        same_thread = log.thread_id.is_(None) if thread_id is None else log.thread_id == thread_id
        query = (
            select(log.who, log.text, log.created_at)
            .where(log.room_id == room_id, same_thread)
            .order_by(log.created_at.desc(), log.id.desc())
            .limit(limit)
        )
        async with self._begin() as conn:
            rows = (await conn.execute(query)).all()
        return [transcript_entry(row.who, row.text, row.created_at) for row in reversed(rows)]

    async def stats(self, since: datetime) -> Stats:
        now = self._now()
        recent = triage.c.created_at >= since
        confident = and_(recent, triage.c.outcome == CONFIDENT)
        count = func.count()
        outcomes = select(triage.c.outcome, count).where(recent).group_by(triage.c.outcome)
        # A confident answer a day old that nobody voted on and nobody escalated probably did its job.
        deflected = (
            select(count)
            .select_from(triage)
            .where(
                confident,
                triage.c.created_at <= now - DEFLECTION_AGE,
                # Rows from before version 2 have no thread to check, so they are not counted.
                triage.c.thread_id.is_not(None),
                ~select(feedback.c.action_id).where(feedback.c.thread_id == triage.c.thread_id).exists(),
                ~select(tickets.c.id).where(tickets.c.thread_id == triage.c.thread_id).exists(),
            )
        )
        code = self._json_array_items(triage.c.codes)
        top_codes = (
            select(code.c.value, count)
            .select_from(triage)
            .join(code, true())
            .where(recent)
            .group_by(code.c.value)
            .order_by(count.desc(), code.c.value)
            .limit(TOP_N)
        )
        top_articles = (
            select(triage.c.top_id, count)
            .where(confident, triage.c.top_id.is_not(None))
            .group_by(triage.c.top_id)
            .order_by(count.desc(), triage.c.top_id)
            .limit(TOP_N)
        )
        escalations = select(count).select_from(tickets).where(tickets.c.created_at >= since)
        open_tickets = select(count).select_from(tickets).where(tickets.c.status.in_(("open", "claimed")))
        # The first claim: a reopened ticket's claimed_at is empty until someone claims it again.
        timings = select(tickets.c.created_at, tickets.c.first_claimed_at, tickets.c.resolved_at).where(
            tickets.c.created_at >= since
        )
        dead = select(count).select_from(outbox).where(outbox.c.status == "dead")
        earlier = outbox.alias("earlier")
        held = (
            select(count)
            .select_from(outbox)
            .where(
                outbox.c.status == "pending",
                select(earlier.c.id)
                .where(
                    earlier.c.ticket_id == outbox.c.ticket_id,
                    earlier.c.status == "dead",
                    earlier.c.sequence < outbox.c.sequence,
                )
                .exists(),
            )
        )
        async with self._begin() as conn:
            by_outcome: dict[str, int] = {outcome: n for outcome, n in (await conn.execute(outcomes)).all()}
            votes = await _feedback_counts(conn, since)
            deflection = (await conn.execute(deflected)).scalar_one()
            codes = [(str(value), n) for value, n in (await conn.execute(top_codes)).all()]
            articles = [(str(value), n) for value, n in (await conn.execute(top_articles)).all()]
            escalated = (await conn.execute(escalations)).scalar_one()
            still_open = (await conn.execute(open_tickets)).scalar_one()
            times = (await conn.execute(timings)).all()
            dead_items = (await conn.execute(dead)).scalar_one()
            held_items = (await conn.execute(held)).scalar_one()
        total = sum(by_outcome.values())
        return Stats(
            messages_triaged=total,
            confident=by_outcome.get(CONFIDENT, 0),
            clarify=by_outcome.get("clarify", 0),
            # Anything else is "none", as the handlers' metrics label it.
            none=total - by_outcome.get(CONFIDENT, 0) - by_outcome.get("clarify", 0),
            helpful=votes["helpful"],
            not_helpful=votes["not_helpful"],
            escalations=escalated,
            resolved_by_bot=votes["helpful"],
            potential_deflection=deflection,
            top_codes=codes,
            top_articles=articles,
            open_tickets=still_open,
            median_claim_seconds=_median_seconds((row.created_at, row.first_claimed_at) for row in times),
            median_resolve_seconds=_median_seconds((row.created_at, row.resolved_at) for row in times),
            dead_deliveries=dead_items,
            held_deliveries=held_items,
        )

    def _json_array_items(self, column: ColumnElement[Any]) -> TableValuedAlias:
        # The one piece of SQL the backends spell differently: a JSON array as rows, one column named "value".
        if self.dialect == "postgresql":
            return func.json_array_elements_text(column).table_valued("value")
        return func.json_each(column).table_valued("value")


async def _feedback_counts(conn: AsyncConnection, since: datetime) -> dict[str, int]:
    query = (
        select(feedback.c.helpful, func.count())
        .where(feedback.c.created_at >= since)
        .group_by(feedback.c.helpful)
    )
    counts = {bool(helpful): count for helpful, count in (await conn.execute(query)).all()}
    return {"helpful": counts.get(True, 0), "not_helpful": counts.get(False, 0)}


def _median_seconds(spans: Iterable[tuple[datetime, datetime | None]]) -> float | None:
    seconds = [(end - start).total_seconds() for start, end in spans if end is not None]
    return statistics.median(seconds) if seconds else None
