"""An end-to-end harness: the real app (create_app) talking over HTTP to the fake Webex API."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bot.app import create_app
from bot.config import Settings
from bot.keys import CONTEXT, WORKER
from bot.outbox import OutboxOptions
from bot.worker import WorkerOptions
from tests.conftest import KNOWLEDGE_DIR
from tests.fakewebex import FakeWebex, sign

SECRET = "webhook-secret-for-tests"
FAST_WORKER = WorkerOptions(poll_interval=0.05, retry_schedule=(0.05, 0.1, 0.2))
FAST_OUTBOX = OutboxOptions(poll_interval=0.05, retry_schedule=(0.05, 0.1, 0.2, 0.4))


def make_settings(fake: FakeWebex, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "webex_access_token": fake.token,
        "webex_webhook_secret": SECRET,
        "webex_api_url": fake.base_url,
        # These tests post webhooks; the websocket path has its own tests (test_websocket*.py).
        "webex_inbound": "webhook",
        "database_url": database_url,
        "knowledge_dir": KNOWLEDGE_DIR,
        # Tests send one person's events in bursts; tests/test_floods.py holds the default limit.
        "rate_limit_per_minute": 10_000,
        **overrides,
    }
    return Settings(_env_file=None, **values)


class Bot:
    """A started app plus the conveniences tests need: signed posts and waiting for replies."""

    def __init__(self, fake: FakeWebex, settings: Settings, worker: WorkerOptions = FAST_WORKER) -> None:
        self.fake = fake
        self.settings = settings
        self.app: web.Application = create_app(settings, worker=worker, outbox=FAST_OUTBOX)
        self.client: TestClient[Any, Any] = TestClient(TestServer(self.app))

    async def __aenter__(self) -> Bot:
        await self.client.start_server()
        await wait_for(lambda: self.app[CONTEXT].me is not None, what="the bot to learn its identity")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()

    async def post(
        self, envelope: dict[str, Any] | bytes, *, secret: str | None = SECRET, **headers: str
    ) -> Any:
        raw = envelope if isinstance(envelope, bytes) else json.dumps(envelope).encode()
        if secret is not None:
            headers.setdefault("X-Spark-Signature", sign(raw, secret))
        return await self.client.post(
            "/webhooks/webex", data=raw, headers={"Content-Type": "application/json", **headers}
        )

    async def idle(self) -> None:
        """Wait until the worker has nothing in flight and nothing is pending."""
        store = self.app[CONTEXT].store

        async def settled() -> bool:
            counts = await store.inbox_counts()
            busy = counts.get("pending") or counts.get("working") or counts.get("failed")
            return self.app[WORKER].in_flight == 0 and not busy

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if await settled():
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"worker did not settle: {await store.inbox_counts()}")


async def wait_for(predicate: Callable[[], bool], *, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def db_url(tmp: Path) -> str:
    return f"sqlite:///{tmp / 'bot.db'}"


async def votes(bot: Bot) -> tuple[int, int]:
    """The last day's (helpful, not helpful) votes, as the admin stats count them."""
    stats = await bot.app[CONTEXT].store.stats(since=datetime.now(UTC) - timedelta(days=1))
    return stats.helpful, stats.not_helpful


CARD = "application/vnd.microsoft.card.adaptive"


def card_of(posted: dict[str, Any]) -> dict[str, Any]:
    """The one Adaptive Card attached to a posted message body."""
    attachments = posted.get("attachments") or []
    assert len(attachments) == 1 and attachments[0]["contentType"] == CARD, posted
    card: dict[str, Any] = attachments[0]["content"]
    return card


def submits(card: dict[str, Any]) -> list[dict[str, Any]]:
    """Every Action.Submit payload in a card, in order (top level, inside ShowCards and ActionSets)."""
    found: list[dict[str, Any]] = []
    for action in card.get("actions", []):
        if action["type"] == "Action.Submit":
            found.append(action["data"])
        elif action["type"] == "Action.ShowCard":
            found += submits(action["card"])
    for element in card.get("body", []):
        if element.get("type") == "ActionSet":
            found += submits({"actions": element["actions"]})
    return found


def verb(posted: dict[str, Any], name: str, **match: Any) -> dict[str, Any]:
    """The submit payload of the button with this verb (and these fields) on a posted card."""
    found = [d for d in submits(card_of(posted)) if d.get("verb") == name and match.items() <= d.items()]
    assert found, f"no {name!r} button on the card: {posted.get('markdown', '')[:200]!r}"
    return found[0]
