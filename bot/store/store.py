"""The Store: the bot's one persistence interface, opened on a URL; retention, which spans every table."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

from sqlalchemy import Table, and_, func, select, tuple_, update
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.sql import ColumnElement

from bot.store.admin import AdminStore
from bot.store.base import TIMEOUT_SECONDS, StoreUnavailable
from bot.store.conversations import ConversationStore
from bot.store.inbox import InboxStore
from bot.store.migrations import migrate
from bot.store.replicas import ReplicaStore
from bot.store.schema import event_effects, inbox, messages_log, outbox, schema_version
from bot.store.sqlite import configure_sqlite, enable_wal, write_and_checkpoint
from bot.store.tickets import TicketStore

PURGE_BATCH = 1000  # rows per delete transaction


class DatabaseLost(RuntimeError):
    """The SQLite file this bot created is gone; starting on a new empty one would repeat ticket numbers."""


def _refuse_if_lost(path: Path, marker: Path) -> None:
    if not path.exists() and marker.exists():
        raise DatabaseLost(
            f"the database {path} is gone, but this bot created it ({marker.read_text().strip()}): "
            f"restore it from a backup, or delete {marker} to start afresh on purpose"
        )


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


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
    async def open(
        cls,
        url: str,
        *,
        now: Callable[[], datetime] = utcnow,
        pool_size: int = 5,
        refuse_lost_file: bool = False,
    ) -> Self:
        """With refuse_lost_file, a SQLite file that this bot created and that is now gone is an error
        (DatabaseLost), not a new empty database: ticket numbers would start again and old events be
        answered twice."""
        sa_url = async_url(url)
        marker: Path | None = None
        if sa_url.get_backend_name() == "sqlite":
            path = Path(sa_url.database or "")
            marker = path.with_name(path.name + ".bot") / "created"
            if refuse_lost_file:
                _refuse_if_lost(path, marker)
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
        if marker is not None:
            store._watch_file(marker)
        return store

    def _watch_file(self, marker: Path) -> None:
        path = marker.parent.parent / marker.parent.name.removesuffix(".bot")
        with contextlib.suppress(OSError):
            self._file_id = _file_id(path)
            if not marker.exists():
                marker.parent.mkdir(exist_ok=True)
                marker.write_text(f"created {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n")

    async def check_health(self) -> None:
        """Can the database take work? Raises StoreUnavailable, and sets `broken`, when it cannot.

        A committed write (a read-only or full disk fails it); on SQLite also a WAL checkpoint (an immutable
        file takes writes into the WAL but never back, and the WAL grows without bound) and the file itself
        (deleted or replaced under the running bot)."""
        try:
            if self._sqlite_inbox is not None:
                path = Path(self._engine.url.database or "")
                if self._file_id is not None and _file_id(path) != self._file_id:
                    raise StoreUnavailable(f"the database file {path} was deleted or replaced under the bot")
            if self._sqlite_inbox is not None:
                async with self._unavailable_as_store_error(), self._write_turn():
                    await write_and_checkpoint(self._engine)
            else:
                latest = select(func.max(schema_version.c.version)).scalar_subquery()
                touch = (
                    update(schema_version)
                    .where(schema_version.c.version == latest)
                    .values(applied_at=schema_version.c.applied_at)  # PostgreSQL writes a new row version
                )
                async with self._begin() as conn:
                    await conn.execute(touch)
        except StoreUnavailable as exc:
            self.broken = str(exc)
            raise
        except Exception as exc:  # a read-only transaction on PostgreSQL, for one
            self.broken = f"database {self._safe_url} cannot be written: {type(exc).__name__}: {exc}"
            raise StoreUnavailable(self.broken) from exc
        self.broken = None

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
