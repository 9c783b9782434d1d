"""Group commit for the webhook view: concurrent deliveries share one inbox transaction, each acked after it."""

from __future__ import annotations

import asyncio
import contextlib

from bot.store import Store

MAX_BATCH = 500  # rows per INSERT; both SQLite and PostgreSQL take this many parameters comfortably


class InboxWriter:
    """While one transaction commits, new events wait for the next one: a burst costs a few commits, not one
    per event. Every caller still gets its answer only after its own row is durable."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._waiting: list[tuple[str, str, str, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def enqueue(self, event_id: str, resource: str, payload: str) -> bool:
        """Store `payload` (the webhook body's JSON text); True if the event is new, False for a duplicate.

        Raises what the store raises (StoreUnavailable)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((event_id, resource, payload, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="inbox-writer")
        return await future

    async def _flush(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            try:
                new = await self.store.enqueue_events([(e, r, p) for e, r, p, _ in batch])
            except Exception as exc:  # every waiter learns the outcome; none is left hanging
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            answered: set[str] = set()
            for event_id, _, _, future in batch:
                # The same id twice in one batch: the first is the new one, the second a duplicate.
                if not future.done():
                    future.set_result(event_id in new and event_id not in answered)
                answered.add(event_id)

    async def close(self) -> None:
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher
