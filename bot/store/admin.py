"""What admins read and repair: the stats per day, the questions without an answer, dead ITSM deliveries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Row, func, literal, or_, select
from sqlalchemy.sql import ColumnElement

from bot.store.base import StoreBase
from bot.store.records import TICKET_PREFIX, DayCounts, DeadDelivery, GapQuestion
from bot.store.schema import feedback, outbox, tickets, triage

CONFIDENT = "fix"
MAX_GAP_QUESTIONS = 5000


class DeliveryNotDead(Exception):
    """Only a dead delivery can be retried or dropped; a pending one is still being tried."""


class AdminStore(StoreBase):
    """The Store's admin queries."""

    async def daily_counts(self, since: datetime) -> list[DayCounts]:
        """Per UTC day from `since` to today, zeros included: messages, confident answers, "Yes" votes, tickets."""
        count = func.count()
        messages = self._per_day(triage.c.created_at, since, count)
        confident = self._per_day(triage.c.created_at, since, count.filter(triage.c.outcome == CONFIDENT))
        helpful = self._per_day(feedback.c.created_at, since, count).where(feedback.c.helpful.is_(True))
        escalations = self._per_day(tickets.c.created_at, since, count)
        async with self._begin() as conn:
            found = [
                {str(day): int(n or 0) for day, n in (await conn.execute(query)).all()}
                for query in (messages, confident, helpful, escalations)
            ]
        first, last = since.astimezone(UTC).date(), self._now().date()
        days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
        return [DayCounts(day, *(counts.get(day.isoformat(), 0) for counts in found)) for day in days]

    def _per_day(self, column: ColumnElement[datetime], since: datetime, value: Any) -> Any:
        day = self._utc_day(column)
        return select(day, value).where(column >= since).group_by(day)

    def _utc_day(self, column: ColumnElement[datetime]) -> ColumnElement[str]:
        # SQLite keeps naive UTC text; PostgreSQL's timestamptz is shown in the session's zone unless told.
        if self.dialect == "postgresql":
            return func.to_char(func.timezone("UTC", column), literal("YYYY-MM-DD"))
        return func.strftime(literal("%Y-%m-%d"), column)

    async def gap_questions(self, since: datetime, limit: int = MAX_GAP_QUESTIONS) -> list[GapQuestion]:
        """The period's questions without a confident answer, and those whose answer got "No, still stuck"."""
        voted_down = (
            select(feedback.c.article_id)
            .where(
                feedback.c.thread_id == triage.c.thread_id,
                feedback.c.helpful.is_(False),
                feedback.c.created_at >= since,
            )
            .order_by(feedback.c.created_at)
            .limit(1)
            .scalar_subquery()
        )
        query = (
            select(
                triage.c.text, triage.c.outcome, triage.c.top_id, triage.c.created_at, voted_down.label("no")
            )
            .where(triage.c.created_at >= since, or_(triage.c.outcome != CONFIDENT, voted_down.is_not(None)))
            .order_by(triage.c.created_at.desc(), triage.c.event_id.desc())
            .limit(limit)
        )
        async with self._begin() as conn:
            rows = (await conn.execute(query)).all()
        return [
            GapQuestion(
                text=row.text,
                outcome=row.outcome,
                # "I'm not sure" offered nothing, whatever came closest.
                offered=row.no or (row.top_id if row.outcome in (CONFIDENT, "clarify") else None),
                stuck=row.no is not None,
                created_at=row.created_at,
            )
            for row in rows
        ]

    # --- dead ITSM deliveries ----------------------------------------------------------------------------

    async def dead_deliveries(self, limit: int = 200) -> list[DeadDelivery]:
        query = self._dead_query().order_by(outbox.c.id).limit(limit)
        async with self._begin() as conn:
            return [_dead(row) for row in (await conn.execute(query)).all()]

    async def retry_delivery(self, item_id: int) -> DeadDelivery:
        """Send a dead delivery again from its first attempt; returns it as it was. KeyError: no such item."""
        revive = {
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": self._now(),
            "leased_by": None,
            "lease_until": None,
        }
        return await self._change_dead(item_id, outbox.update().values(revive))

    async def drop_delivery(self, item_id: int) -> DeadDelivery:
        """Give up on a dead delivery for good, so its ticket's later events go out; returns it as it was."""
        return await self._change_dead(item_id, outbox.delete())

    async def _change_dead(self, item_id: int, statement: Any) -> DeadDelivery:
        async with self._begin() as conn:
            row = (
                await conn.execute(self._dead_query(any_status=True).where(outbox.c.id == item_id))
            ).first()
            if row is None:
                raise KeyError(item_id)
            if row.status != "dead":
                raise DeliveryNotDead(f"outbox item {item_id} is {row.status}, not dead")
            # The status in the WHERE too: a concurrent retry of the same item changes nothing twice.
            await conn.execute(statement.where(outbox.c.id == item_id, outbox.c.status == "dead"))
        return _dead(row)

    def _dead_query(self, *, any_status: bool = False) -> Any:
        later = outbox.alias("later")
        held = (
            select(func.count())
            .where(later.c.ticket_id == outbox.c.ticket_id, later.c.sequence > outbox.c.sequence)
            .where(later.c.status == "pending")
            .scalar_subquery()
        )
        query = select(
            outbox.c.id,
            outbox.c.status,
            tickets.c.number,
            outbox.c.event,
            outbox.c.sequence,
            outbox.c.attempts,
            outbox.c.last_error,
            outbox.c.created_at,
            outbox.c.next_attempt_at,
            held.label("held"),
        ).join(tickets, tickets.c.id == outbox.c.ticket_id)
        return query if any_status else query.where(outbox.c.status == "dead")


def _dead(row: Row[Any]) -> DeadDelivery:
    return DeadDelivery(
        id=row.id,
        ticket_number=f"{TICKET_PREFIX}{row.number}",
        event=row.event,
        sequence=row.sequence,
        attempts=row.attempts,
        last_error=row.last_error,
        created_at=row.created_at,
        next_attempt_at=row.next_attempt_at,
        held=int(row.held or 0),
    )
