"""What every part of the Store stands on: the engine, the clock, transactions in turn, and outages as errors."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Table
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import Insert

from bot.store.sqlite import SqliteInboxWriter, Turns

# Connect, query and pool-checkout limit: the webhook must answer 503 quickly rather than hang until Webex gives up.
TIMEOUT_SECONDS = 10.0
# SQLSTATE class 08 is "connection exception"; 57P01-03 mean the server is shutting down or starting up.
UNAVAILABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03")
MAX_ERROR_CHARS = 2000


class StoreUnavailable(Exception):
    """The database cannot be reached or dropped the connection; callers answer 503 and try again later."""


class StoreBase:
    """The engine and clock behind the Store's queries, which live in the classes that build on this one."""

    def __init__(self, engine: AsyncEngine, now: Callable[[], datetime]) -> None:
        self._engine = engine
        self._clock = now
        self._safe_url = engine.url.render_as_string(hide_password=True)
        self._sqlite_inbox: SqliteInboxWriter | None = None
        self._turn: Turns | None = None
        self._file_id: tuple[int, int] | None = None
        # Why the database cannot take work, from the last health check; None while it can.
        self.broken: str | None = None
        if self.dialect == "sqlite":
            self._sqlite_inbox = SqliteInboxWriter(engine.url.database or "", engine.dialect)
            self._turn = Turns()

    @property
    def dialect(self) -> Literal["sqlite", "postgresql"]:
        return "sqlite" if self._engine.dialect.name == "sqlite" else "postgresql"

    def _failure(self, error: str, retry_in: float | None, *, retrying: str | None) -> dict[str, Any]:
        """The columns of a failed attempt: the error, the lease let go, and either dead (retry_in None) or
        the time of the next try (with status `retrying` where the table marks it)."""
        changes: dict[str, Any] = {
            "last_error": error[:MAX_ERROR_CHARS],
            "leased_by": None,
            "lease_until": None,
        }
        if retry_in is None:
            changes["status"] = "dead"
            return changes
        if retrying is not None:
            changes["status"] = retrying
        changes["next_attempt_at"] = self._now() + timedelta(seconds=max(retry_in, 0.0))
        return changes

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the store's clock must return timezone-aware datetimes")
        return now.astimezone(UTC)

    @asynccontextmanager
    async def _begin(self) -> AsyncIterator[AsyncConnection]:
        async with self._unavailable_as_store_error(), self._write_turn(), self._engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def _write_turn(self, *, urgent: bool = False) -> AsyncIterator[None]:
        """On SQLite, one transaction at a time across the store's two connections (see SqliteInboxWriter).

        SQLite serialises them anyway, but its busy handler does it by sleeping 1, 2, 5, 10 ... ms between
        tries: taking turns here makes the wait exactly as long as the other transaction. Urgent turns (the
        inbox insert a webhook's answer waits for) go before the worker's queued transactions."""
        if self._turn is None:
            yield
            return
        async with asyncio.timeout(TIMEOUT_SECONDS):  # TimeoutError: reported as StoreUnavailable
            await self._turn.acquire(urgent=urgent)
        try:
            yield
        finally:
            self._turn.release()

    @asynccontextmanager
    async def _unavailable_as_store_error(self) -> AsyncIterator[None]:
        try:
            yield
        except Exception as exc:
            if not _is_unavailable(exc):
                raise
            cause = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
            raise StoreUnavailable(
                f"database {self._safe_url} unavailable: {type(cause).__name__}: {cause}"
            ) from exc

    def _insert_or_ignore(
        self, table: Table, key: str, values: Mapping[str, Any], keys: Sequence[str] = ()
    ) -> Insert:
        # A duplicate is an answer, not an error (and must not abort a PostgreSQL transaction).
        insert = pg_insert if self.dialect == "postgresql" else sqlite_insert
        return insert(table).values(values).on_conflict_do_nothing(index_elements=list(keys) or [key])

    async def _insert_new(self, table: Table, key: str, values: Mapping[str, Any]) -> bool:
        statement = self._insert_or_ignore(table, key, values).returning(table.c[key])
        async with self._begin() as conn:
            return (await conn.execute(statement)).first() is not None


def _is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, sa_exc.DBAPIError) and (
        exc.connection_invalidated or isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)
    ):
        return True
    # Pool checkout timeout, a refused or dropped socket, a command timeout, a locked or unopenable SQLite file.
    if isinstance(exc, sa_exc.TimeoutError | sa_exc.DisconnectionError | OSError | sqlite3.OperationalError):
        return True
    # SQLAlchemy passes some driver errors (asyncpg's ConnectionDoesNotExistError) up as a plain DBAPIError;
    # the SQLSTATE on the driver error further down the chain says what happened.
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        if str(getattr(seen, "sqlstate", None) or "").startswith(UNAVAILABLE_SQLSTATES):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
