"""Takes events from the inbox and handles them in tracked tasks, with a bounded retry schedule."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot.store import InboxEvent, Store, StoreUnavailable

log = logging.getLogger(__name__)

# Seconds before attempt 2, 3, ...; after the last one the event is dead (kept, with its error).
RETRY_SCHEDULE: tuple[float, ...] = (2.0, 10.0, 60.0, 300.0)
# How often the worker looks for leases held by dead workers, and (where a lost connection also frees a live
# worker's lock) how long one must look dead before its events are taken.
REAP_INTERVAL = 1.0
REAP_CONFIRM = 1.5

Handler = Callable[[InboxEvent], Awaitable[None]]
FinalFailure = Callable[[InboxEvent, BaseException], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """How the worker paces itself (tests shorten the waits). None takes the value from the settings."""

    poll_interval: float = 1.0
    retry_schedule: tuple[float, ...] = RETRY_SCHEDULE
    concurrency: int | None = None
    lease_seconds: float | None = None


class Worker:
    def __init__(
        self,
        store: Store,
        handle: Handler,
        *,
        on_final_failure: FinalFailure | None = None,
        is_permanent: Callable[[BaseException], bool] = lambda exc: False,
        concurrency: int = 8,
        poll_interval: float = 1.0,
        lease_seconds: float = 30.0,
        retry_schedule: tuple[float, ...] = RETRY_SCHEDULE,
        on_failure: Callable[[InboxEvent, bool], None] | None = None,
    ) -> None:
        self.store = store
        self.handle = handle
        self.on_final_failure = on_final_failure
        self.is_permanent = is_permanent
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.lease_seconds = lease_seconds
        self.retry_schedule = retry_schedule
        self.on_failure = on_failure
        # The random part: a restarted container has the same host name and pid, and must not be taken for
        # the process it replaces.
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._liveness = store.liveness(self.worker_id)
        self._suspects: dict[str, float] = {}  # holders seen dead, and since when (monotonic)
        self._last_reap = -REAP_INTERVAL
        self.ready = asyncio.Event()  # set once the bot knows who it is; until then events wait in the inbox
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="inbox-worker")
        self._heartbeat_task = asyncio.create_task(self._heartbeat(), name="inbox-heartbeat")

    async def _heartbeat(self) -> None:
        """Renew the leases of in-flight events: a slow live worker keeps them, a dead one loses them fast."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            if self._tasks:
                try:
                    await self.store.renew_leases(self.worker_id, self.lease_seconds)
                except StoreUnavailable as exc:
                    log.warning("could not renew leases: %s", exc)

    def notify(self) -> None:
        """A new event is in the inbox: look now rather than at the next poll."""
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking events, let in-flight ones finish within `grace` seconds, and hand the rest back."""
        self._stopping = True
        self._wake.set()
        for task in (self._loop_task, self._heartbeat_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._tasks:
            log.info("waiting up to %.0fs for %d in-flight event(s)", grace, len(self._tasks))
            _, pending = await asyncio.wait(self._tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        with contextlib.suppress(StoreUnavailable):
            released = await self.store.release_worker(self.worker_id)
            if released:
                log.info("%d unfinished event(s) returned to the inbox for the next start", released)
        await self._liveness.close()

    async def _reap(self) -> None:
        """Take over the events of workers that died holding them, without waiting for their leases."""
        self._last_reap = time.monotonic()
        try:
            if not await self._liveness.hold():
                return  # others cannot tell we are alive: claim nothing of theirs either
            dead = await self._liveness.dead(await self.store.lease_holders())
            now = time.monotonic()
            self._suspects = {holder: self._suspects.get(holder, now) for holder in dead}
            confirmed = {
                holder
                for holder, since in self._suspects.items()
                if self._liveness.definitive or now - since >= REAP_CONFIRM
            }
            if confirmed:
                taken = await self.store.expire_leases_of(confirmed)
                for holder in confirmed:
                    self._suspects.pop(holder, None)
                if taken:
                    log.warning(
                        "took over %d event(s) of %d worker(s) that stopped without finishing them: %s",
                        taken,
                        len(confirmed),
                        ", ".join(sorted(confirmed)),
                    )
        except StoreUnavailable as exc:
            log.warning("could not look for abandoned events: %s", exc)
        except Exception:
            log.exception("looking for abandoned events failed; their leases still run out")

    async def _run(self) -> None:
        await self.ready.wait()
        while not self._stopping:
            if time.monotonic() - self._last_reap >= REAP_INTERVAL:
                await self._reap()
            free = self.concurrency - len(self._tasks)
            events: list[InboxEvent] = []
            if free > 0 and self.store.broken is None:  # a database that cannot keep results: wait
                try:
                    events = await self.store.claim_events(
                        self.worker_id, limit=free, lease_seconds=self.lease_seconds
                    )
                except StoreUnavailable as exc:
                    log.warning("inbox unavailable, retrying in %.0fs: %s", self.poll_interval, exc)
            for event in events:
                if event.attempts > len(self.retry_schedule) + 1:
                    # Only a crash mid-event gets here (a lease that ran out again and again): stop the loop.
                    await self._poison(event)
                    continue
                task = asyncio.create_task(self._process(event), name=f"event-{event.event_id[:12]}")
                self._tasks.add(task)
                task.add_done_callback(self._done)
            if not events or free <= len(events):
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)

    async def _poison(self, event: InboxEvent) -> None:
        log.error("event %s abandoned after %d attempts that never finished", event.event_id, event.attempts)
        with contextlib.suppress(StoreUnavailable):
            await self.store.mark_failed(event.event_id, "abandoned: attempts never finished", retry_in=None)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()  # a slot is free

    async def _process(self, event: InboxEvent) -> None:
        # The one error boundary per event: log with context, keep the error, never crash the worker.
        try:
            await self.handle(event)
        except asyncio.CancelledError:
            raise  # shutdown: the event stays "working" and release_worker hands it back
        except Exception as exc:
            await self._failed(event, exc)
            return
        try:
            await self.store.mark_done(event.event_id)
        except StoreUnavailable:
            log.warning("event %s handled but not marked done; the reply id guards a retry", event.event_id)

    async def _failed(self, event: InboxEvent, exc: Exception) -> None:
        attempt = event.attempts
        permanent = self.is_permanent(exc)
        retry_in = (
            None if permanent or attempt > len(self.retry_schedule) else self.retry_schedule[attempt - 1]
        )
        error = f"{type(exc).__name__}: {exc}"
        if retry_in is None:
            log.error("event %s failed for good after %d attempt(s): %s", event.event_id, attempt, error)
        else:
            log.warning(
                "event %s failed (attempt %d), retry in %.0fs: %s", event.event_id, attempt, retry_in, error
            )
        if self.on_failure is not None:
            self.on_failure(event, retry_in is None)
        try:
            await self.store.mark_failed(event.event_id, error, retry_in=retry_in)
        except StoreUnavailable:
            log.warning(
                "could not record the failure of %s; its lease will expire and it runs again", event.event_id
            )
        if retry_in is None and self.on_final_failure is not None:
            await self.on_final_failure(event, exc)
