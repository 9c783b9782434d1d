"""Delivers ticket events to the optional ITSM webhook from the durable outbox, in order per ticket."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import socket
from dataclasses import dataclass

import aiohttp

from bot.store import OutboxItem, Store, StoreUnavailable

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Helpdesk-Signature"
# Seconds before attempt 2, 3, ...; a receiver down for hours still gets every event, in order.
RETRY_SCHEDULE: tuple[float, ...] = (5, 15, 60, 300, 900, 1800, 3600, 3600, 3600, 3600, 3600, 3600)


@dataclass(frozen=True, slots=True)
class OutboxOptions:
    """How the deliverer paces itself (tests shorten the waits)."""

    poll_interval: float = 2.0
    timeout: float = 10.0
    retry_schedule: tuple[float, ...] = RETRY_SCHEDULE


def sign(body: bytes, secret: str) -> str:
    """The signature header value: "sha256=" + hex HMAC-SHA256 of the exact body bytes."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class OutboxDeliverer:
    def __init__(
        self,
        store: Store,
        session: aiohttp.ClientSession,
        url: str,
        secret: str | None,
        options: OutboxOptions = OutboxOptions(),
    ) -> None:
        self.store = store
        self.session = session
        self.url = url
        self.secret = secret
        self.poll_interval = options.poll_interval
        self.timeout = options.timeout
        self.retry_schedule = options.retry_schedule
        self.worker_id = f"outbox:{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox")

    def notify(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        # An interrupted delivery is simply not marked delivered: its lease expires and it is sent again
        # (receivers dedupe on X-Helpdesk-Delivery).
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            items: list[OutboxItem] = []
            try:
                items = await self.store.claim_outbox(
                    self.worker_id, limit=10, lease_seconds=self.timeout * 3
                )
                for item in items:
                    await self._deliver(item)
            except StoreUnavailable as exc:
                log.warning("outbox unavailable: %s", exc)
            except Exception:
                # The deliverer's one error boundary: a bug must not stop ticket events for good.
                log.exception("outbox delivery failed unexpectedly; trying again shortly")
                items = []
            if not items:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    async def _deliver(self, item: OutboxItem) -> None:
        body = json.dumps(item.payload, separators=(",", ":"), sort_keys=True).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Helpdesk-Event": item.event,
            "X-Helpdesk-Delivery": str(item.id),
        }
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(body, self.secret)
        error: str | None = None
        try:
            # No redirects: following one would re-post the signed ticket to wherever the answer points.
            async with self.session.post(
                self.url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                allow_redirects=False,
            ) as resp:
                if resp.status >= 300:
                    error = f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        try:
            if error is None:
                await self.store.mark_outbox_delivered(item.id)
                log.info("delivered %s for ticket %s (outbox %d)", item.event, item.ticket_id, item.id)
                return
            n = item.attempts
            retry_in = self.retry_schedule[n - 1] if n <= len(self.retry_schedule) else None
            if retry_in is None:
                # Loud: until an admin acts, this ticket's later events wait behind this one.
                log.error(
                    "ticket webhook gave up on %s for ticket %s (outbox %d) after %d attempts: %s; its later "
                    "events wait: `python -m bot outbox list`, then `outbox retry %d` or `outbox drop %d`",
                    item.event,
                    item.ticket_id,
                    item.id,
                    n,
                    error,
                    item.id,
                    item.id,
                )
            else:
                log.warning(
                    "ticket webhook %s failed (attempt %d): %s; retry in %s", item.event, n, error, retry_in
                )
            await self.store.mark_outbox_failed(item.id, error, retry_in=retry_in)
        except StoreUnavailable as exc:
            log.warning("could not record outbox result for %d: %s", item.id, exc)
