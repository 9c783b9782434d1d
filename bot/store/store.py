"""The Store: the bot's one persistence interface, opened on a URL; retention, which spans every table."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Self

from sqlalchemy import Table, and_, select, tuple_
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.sql import ColumnElement

from bot.store.admin import AdminStore
from bot.store.base import TIMEOUT_SECONDS
from bot.store.conversations import ConversationStore
from bot.store.inbox import InboxStore
from bot.store.migrations import migrate
from bot.store.replicas import ReplicaStore
from bot.store.schema import event_effects, inbox, messages_log, outbox
from bot.store.sqlite import configure_sqlite, enable_wal
from bot.store.tickets import TicketStore

PURGE_BATCH = 1000  # rows per delete transaction


def utcnow() -> datetime:
    return datetime.now(UTC)


def async_url(url: str) -> URL:
    """Map the configured URL onto the async driver for its backend."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise ValueError("SQLite needs a file (sqlite:///path/to/bot.db): WAL and replicas need one")
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+asyncpg")
    raise ValueError(f"unsupported database URL {parsed.render_as_string(hide_password=True)}")


class Store(InboxStore, ConversationStore, TicketStore, AdminStore, ReplicaStore):
    """The bot's one persistence interface; the URL picks the backend."""

    @classmethod
    async def open(cls, url: str, *, now: Callable[[], datetime] = utcnow, pool_size: int = 5) -> Self:
        sa_url = async_url(url)
        if sa_url.get_backend_name() == "sqlite":
            # SQLite has one writer: more connections only queue in its busy handler (100 ms sleeps, seconds
            # of tail latency under load), so one connection serves every task, in turn, without that wait.
            engine = create_async_engine(
                sa_url, hide_parameters=True, pool_size=1, max_overflow=0, pool_timeout=TIMEOUT_SECONDS
            )
            configure_sqlite(engine)
        else:
            engine = create_async_engine(
                sa_url,
                # Parameters carry user text; keep them out of exception messages that end up in logs.
                hide_parameters=True,
                pool_size=pool_size,
                pool_timeout=TIMEOUT_SECONDS,
                # A connection killed by a database restart is noticed at checkout and replaced.
                pool_pre_ping=True,
                connect_args={"timeout": TIMEOUT_SECONDS, "command_timeout": TIMEOUT_SECONDS},
            )
        store = cls(engine, now)
        try:
            if store.dialect == "sqlite":
                async with store._unavailable_as_store_error():
                    await enable_wal(engine)
            async with store._begin() as conn:
                await migrate(conn)
        except BaseException:
            await engine.dispose()
            raise
        return store

    async def close(self) -> None:
        if self._sqlite_inbox is not None:
            await self._sqlite_inbox.close()
        await self._engine.dispose()

    async def purge(self, older_than: timedelta, *, batch: int = PURGE_BATCH) -> dict[str, int]:
        """Delete what only mattered for a while; returns the rows deleted per table.

        Goes: handled inbox events (the dedupe window for redeliveries is minutes, not weeks), their recorded
        effects, delivered outbox items and the conversation log (a ticket keeps its own transcript). Stays:
        tickets, triage and feedback (the stats), and anything pending, failed or dead (someone should look).
        Deletes run `batch` rows per transaction, so an ack waiting for SQLite's one writer waits for a short
        delete, never for a long one."""
        cutoff = self._now() - older_than
        # Each target: the table, the key columns its rows are deleted by, and which rows are old enough.
        targets: list[tuple[Table, list[ColumnElement[Any]], ColumnElement[bool]]] = [
            # (status, next_attempt_at) is indexed; a done event's last attempt is when it was handled.
            (inbox, [inbox.c.id], and_(inbox.c.status == "done", inbox.c.next_attempt_at < cutoff)),
            (
                event_effects,
                [event_effects.c.event_id, event_effects.c.step],
                event_effects.c.created_at < cutoff,
            ),
            (outbox, [outbox.c.id], and_(outbox.c.status == "delivered", outbox.c.next_attempt_at < cutoff)),
            (messages_log, [messages_log.c.id], messages_log.c.created_at < cutoff),
        ]
        deleted: dict[str, int] = {}
        for table, columns, old in targets:
            key = tuple_(*columns) if len(columns) > 1 else columns[0]
            total = 0
            while True:
                chunk = select(*columns).where(old).limit(batch)
                async with self._begin() as conn:
                    count = (await conn.execute(table.delete().where(key.in_(chunk)))).rowcount
                total += count
                if count < batch:
                    break
            deleted[table.name] = total
        return deleted
