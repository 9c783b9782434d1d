"""Group commit for the webhook view: concurrent deliveries share one inbox transaction, each acked after it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime

from bot.store import Store, StoreUnavailable

log = logging.getLogger(__name__)

MAX_BATCH = 500  # rows per INSERT; both SQLite and PostgreSQL take this many parameters comfortably
# The worker takes events in order of a fair time: a person's events are at least this far apart in it, so
# one who sends a thousand at once queues behind everyone else's next message, not in front of it.
FAIR_SPACING = 0.2
MAX_PEOPLE = 10_000  # fair times remembered; past it, those already in the past are forgotten


class InboxWriter:
    """While one transaction commits, new events wait for the next one: a burst costs a few commits, not one
    per event. Every caller still gets its answer only after its own row is durable."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._waiting: list[tuple[str, str, str, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._fair: dict[str, float] = {}  # person -> the fair time of their latest event (epoch seconds)
        self._later: dict[str, datetime] = {}  # event -> its fair time, where that is ahead of its arrival
        self._pruned = 0.0

    async def enqueue(self, event_id: str, resource: str, payload: str, person: str = "") -> bool:
        """Store `payload` (the webhook body's JSON text); True if the event is new, False for a duplicate.

        Raises what the store raises (StoreUnavailable)."""
        if person:
            self._place(event_id, person)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((event_id, resource, payload, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="inbox-writer")
        return await future

    def _place(self, event_id: str, person: str) -> None:
        """The event's fair time: its arrival, or FAIR_SPACING after the same person's previous event."""
        now = time.time()
        fair = max(now, self._fair.get(person, 0.0) + FAIR_SPACING)
        self._fair[person] = fair
        if fair - now > FAIR_SPACING:  # a burst; an ordinary pace stays on the plain path
            self._later[event_id] = datetime.fromtimestamp(fair, UTC)
        if len(self._fair) > MAX_PEOPLE and now - self._pruned > 1.0:
            self._pruned = now
            self._fair = {p: t for p, t in self._fair.items() if t > now}

    async def _flush(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            later = {e: self._later.pop(e) for e, *_ in batch if e in self._later} if self._later else {}
            try:
                new = await self.store.enqueue_events([(e, r, p) for e, r, p, _ in batch], fair_at=later)
            except StoreUnavailable as exc:  # every waiter learns the outcome; none is left hanging
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            except Exception as exc:
                if len(batch) == 1:
                    if not batch[0][3].done():
                        batch[0][3].set_exception(exc)
                    continue
                # A row the database refuses must fail alone, not the deliveries that shared its batch.
                log.warning(
                    "inbox batch of %d refused (%s); storing its rows one by one",
                    len(batch),
                    type(exc).__name__,
                )
                await self._one_by_one(batch, later)
                continue
            answered: set[str] = set()
            for event_id, _, _, future in batch:
                # The same id twice in one batch: the first is the new one, the second a duplicate.
                if not future.done():
                    future.set_result(event_id in new and event_id not in answered)
                answered.add(event_id)

    async def _one_by_one(
        self, batch: list[tuple[str, str, str, asyncio.Future[bool]]], later: dict[str, datetime]
    ) -> None:
        for event_id, resource, payload, future in batch:
            fair = {event_id: later[event_id]} if event_id in later else {}
            try:
                new = await self.store.enqueue_events([(event_id, resource, payload)], fair_at=fair)
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
                continue
            if not future.done():
                future.set_result(event_id in new)

    async def close(self) -> None:
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher
