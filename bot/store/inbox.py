"""The inbox: webhook events stored on arrival, leased to workers, retried, and the side effects they made."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from bot.store.base import StoreBase
from bot.store.liveness import Liveness, open_liveness
from bot.store.records import STATUSES, InboxEvent
from bot.store.schema import event_effects, inbox, read_record


class InboxStore(StoreBase):
    """The Store's inbox queries: what the webhook view and the worker call."""

    async def enqueue_events(
        self, events: Sequence[tuple[str, str, str]], *, fair_at: Mapping[str, datetime] | None = None
    ) -> set[str]:
        """Insert many (event_id, resource, payload JSON text) in one transaction; returns the ids that were new.

        One transaction for a batch is the group commit the webhook view relies on for throughput. The payload
        is the JSON text as received (the webhook view has validated it), so the ack path never re-encodes it.
        A pending event's next_attempt_at is its place in the worker's order: its arrival, or the later fair
        time in `fair_at` (bot/inbox.py), which does not delay it when nobody else is waiting."""
        if not events:
            return set()
        now = self._now()
        later = fair_at or {}
        if self._sqlite_inbox is not None:
            async with self._unavailable_as_store_error(), self._write_turn(urgent=True):
                return await self._sqlite_inbox.insert(events, now, later)
        rows = [
            {
                "event_id": event_id,
                "resource": resource,
                # PostgreSQL's json column takes a value for SQLAlchemy to encode, not text: decode it here.
                "payload": json.loads(payload),
                "status": "pending",
                "attempts": 0,
                "received_at": now,
                "next_attempt_at": later.get(event_id, now),
            }
            for event_id, resource, payload in {e[0]: e for e in events}.values()
        ]
        # One statement with the rows as parameters (SQLAlchemy's insertmanyvalues): compiled once and cached,
        # where a multi-VALUES statement built from the rows would be compiled again for every batch.
        statement = (
            pg_insert(inbox).on_conflict_do_nothing(index_elements=["event_id"]).returning(inbox.c.event_id)
        )
        async with self._begin() as conn:
            return set((await conn.execute(statement, rows)).scalars().all())

    async def claim_events(
        self, worker_id: str, *, limit: int = 10, lease_seconds: float = 60.0
    ) -> list[InboxEvent]:
        if limit <= 0:
            return []
        now = self._now()
        # A pending event is due at once; its next_attempt_at only orders it (see enqueue_events).
        due = or_(
            inbox.c.status == "pending",
            and_(inbox.c.status == "failed", inbox.c.next_attempt_at <= now),
            and_(inbox.c.status == "working", inbox.c.lease_until <= now),
        )
        # One statement, so the pick and the take are atomic: PostgreSQL skips rows another replica holds;
        # SQLite renders no FOR UPDATE, and its single writer lock does the same job.
        picked = (
            select(inbox.c.id)
            .where(due)
            .order_by(inbox.c.next_attempt_at, inbox.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        claim = (
            update(inbox)
            .where(inbox.c.id.in_(picked))
            .values(
                status="working",
                leased_by=worker_id,
                lease_until=now + timedelta(seconds=lease_seconds),
                attempts=inbox.c.attempts + 1,
            )
            .returning(*inbox.c)
        )
        async with self._begin() as conn:
            rows = (await conn.execute(claim)).all()
        # RETURNING promises no order.
        return [
            read_record(InboxEvent, row)
            for row in sorted(rows, key=lambda row: (row.next_attempt_at, row.id))
        ]

    async def record_reply(self, event_id: str, reply_message_id: str) -> None:
        await self._update_event(event_id, reply_message_id=reply_message_id)

    async def mark_done(self, event_id: str) -> None:
        await self._update_event(event_id, status="done", leased_by=None, lease_until=None)

    async def mark_failed(self, event_id: str, error: str, *, retry_in: float | None) -> None:
        await self._update_event(event_id, **self._failure(error, retry_in, retrying="failed"))

    async def renew_leases(self, worker_id: str, lease_seconds: float) -> int:
        """Extend the leases this worker holds: a live worker keeps its events, a dead one loses them soon."""
        renew = (
            update(inbox)
            .where(inbox.c.status == "working", inbox.c.leased_by == worker_id)
            .values(lease_until=self._now() + timedelta(seconds=lease_seconds))
        )
        async with self._begin() as conn:
            return (await conn.execute(renew)).rowcount

    async def lease_holders(self) -> set[str]:
        """The workers holding a lease that has not run out."""
        query = (
            select(inbox.c.leased_by)
            .where(inbox.c.status == "working", inbox.c.lease_until > self._now())
            .distinct()
        )
        async with self._begin() as conn:
            return {holder for holder in (await conn.execute(query)).scalars() if holder}

    async def expire_leases_of(self, holders: Collection[str]) -> int:
        """End the leases of workers known to be dead, so that their events are claimed now; returns how many."""
        if not holders:
            return 0
        expire = (
            update(inbox)
            .where(inbox.c.status == "working", inbox.c.leased_by.in_(list(holders)))
            .values(lease_until=self._now())
        )
        async with self._begin() as conn:
            return (await conn.execute(expire)).rowcount

    def liveness(self, worker_id: str) -> Liveness:
        """The lock that tells the other workers this one is alive (see bot/store/liveness.py)."""
        return open_liveness(self._engine, worker_id)

    async def record_effect(self, event_id: str, step: str, message_id: str) -> None:
        values = {"event_id": event_id, "step": step, "message_id": message_id, "created_at": self._now()}
        async with self._begin() as conn:
            await conn.execute(
                self._insert_or_ignore(event_effects, "event_id", values, ("event_id", "step"))
            )

    async def effects(self, event_id: str) -> dict[str, str]:
        query = select(event_effects.c.step, event_effects.c.message_id).where(
            event_effects.c.event_id == event_id
        )
        async with self._begin() as conn:
            return {row.step: row.message_id for row in await conn.execute(query)}

    async def release_worker(self, worker_id: str) -> int:
        # A shutdown is not the event's fault, so the interrupted attempt is given back.
        release = (
            update(inbox)
            .where(inbox.c.status == "working", inbox.c.leased_by == worker_id)
            .values(
                status="pending",
                leased_by=None,
                lease_until=None,
                next_attempt_at=self._now(),
                attempts=inbox.c.attempts - 1,  # claiming added it, so it is at least 1
            )
        )
        async with self._begin() as conn:
            return (await conn.execute(release)).rowcount

    async def inbox_counts(self) -> dict[str, int]:
        query = select(inbox.c.status, func.count()).group_by(inbox.c.status)
        async with self._begin() as conn:
            rows = (await conn.execute(query)).all()
        return {status: 0 for status in STATUSES} | {status: count for status, count in rows}

    async def _update_event(self, event_id: str, **changes: Any) -> None:
        async with self._begin() as conn:
            result = await conn.execute(update(inbox).where(inbox.c.event_id == event_id).values(**changes))
        if result.rowcount == 0:
            raise KeyError(event_id)
