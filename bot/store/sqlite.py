"""SQLite plumbing: WAL, per-connection pragmas, the inbox writer's own connection, and the write-turn lock."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from sqlalchemy import Dialect, event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.store.schema import inbox

SQLITE_BUSY_TIMEOUT_MS = 5000


def configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below own transactions instead of the sqlite3 module's implicit ones.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: Connection) -> None:
        # A deferred transaction that reads and then writes gets SQLITE_BUSY at once instead of waiting on
        # busy_timeout; taking the write lock up front serialises writers cleanly. Writes dominate here anyway.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


async def enable_wal(engine: AsyncEngine) -> None:
    # WAL is a property of the file, set once. The switch needs an exclusive lock and SQLite does not wait for it
    # (busy_timeout is ignored), so openers racing on a new file retry here rather than fail.
    for delay in (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, None):
        try:
            async with engine.connect() as conn:
                # The raw connection: the mode cannot change inside the transaction SQLAlchemy would begin.
                driver = (await conn.get_raw_connection()).driver_connection
                assert driver is not None
                mode = (await (await driver.execute("PRAGMA journal_mode=WAL")).fetchone())[0]
        except sqlite3.OperationalError as exc:
            if delay is None or "locked" not in str(exc):
                raise
            await asyncio.sleep(delay)
            continue
        if mode != "wal":
            raise RuntimeError(f"SQLite kept journal_mode={mode}; the store needs WAL")
        return


async def write_and_checkpoint(engine: AsyncEngine) -> tuple[int, int, int]:
    """A committed one-page write (the header's user_version, which nothing else uses), then PRAGMA
    wal_checkpoint(PASSIVE): (busy, frames in the WAL, frames copied back). On the engine's connection, opened
    read-write at start: one opened later on a file that turned read-only or immutable is silently read-only.
    A full disk fails the write; an immutable file takes it into the WAL but fails the copy back (disk I/O
    error), where the WAL would otherwise grow for ever."""
    async with engine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        version = await (await driver.execute("PRAGMA user_version")).fetchone()
        assert version is not None
        await driver.execute(f"PRAGMA user_version = {(int(version[0]) + 1) % 2**31}")
        row = await (await driver.execute("PRAGMA wal_checkpoint(PASSIVE)")).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


class SqliteInboxWriter:
    """The inbox insert on SQLite, through the stdlib driver on a thread of its own.

    This is the one write on the webhook's ack path. Through SQLAlchemy's async layer and aiosqlite a batch costs
    about a millisecond of Python (a thread hop per statement, greenlet switches, per-row type processing); here a
    batch is one hop, one transaction and a few microseconds per row. It is a second connection to the same file:
    StoreBase._write_turn makes it take turns with the main one, so neither waits in SQLite's busy handler."""

    # Hand-written rather than compiled from `inbox` so that the hot path has nothing to build; the store tests
    # read these rows back through SQLAlchemy, so a column this misses or mistypes fails them.
    SQL = (
        "INSERT INTO inbox (event_id, resource, payload, status, attempts, received_at, next_attempt_at)"
        " VALUES (?, ?, ?, 'pending', 0, ?, ?) ON CONFLICT (event_id) DO NOTHING"
    )

    def __init__(self, path: str, dialect: Dialect) -> None:
        self._path = path
        # Timestamps exactly as SQLAlchemy writes them: the worker's `next_attempt_at <= now` compares text.
        stamp = inbox.c.received_at.type.bind_processor(dialect)
        assert stamp is not None
        self._stamp: Callable[[datetime], str] = stamp
        self._thread: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # used on self._thread only

    async def insert(
        self, rows: Sequence[tuple[str, str, str]], now: datetime, later: Mapping[str, datetime]
    ) -> set[str]:
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-inbox")
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._insert, rows, now, later)

    def _insert(
        self, rows: Sequence[tuple[str, str, str]], now: datetime, later: Mapping[str, datetime]
    ) -> set[str]:
        conn = self._conn
        if conn is None:
            # isolation_level=None: the explicit BEGIN IMMEDIATE below, not the module's implicit BEGIN.
            conn = sqlite3.connect(self._path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            conn.execute("PRAGMA synchronous=NORMAL")  # as the main connection: durable at commit in WAL mode
            self._conn = conn
        stamp = self._stamp(now)
        new: set[str] = set()
        cursor = conn.cursor()  # one cursor for the batch: conn.execute would make one per row
        cursor.execute("BEGIN IMMEDIATE")
        try:
            for event_id, resource, payload in rows:
                order = self._stamp(later[event_id]) if later and event_id in later else stamp
                if cursor.execute(self.SQL, (event_id, resource, payload, stamp, order)).rowcount == 1:
                    new.add(event_id)
            cursor.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return new

    async def close(self) -> None:
        """Closes the connection; a later insert opens a new one (the engine reconnects the same way)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.get_running_loop().run_in_executor(thread, self._close_connection)
            thread.shutdown()

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class Turns:
    """A lock whose urgent waiters go first, though never more than MAX_URGENT_RUN times in a row while others
    wait: acks stay fast behind a busy worker, and a flood of acks cannot starve the worker's lease renewals."""

    MAX_URGENT_RUN = 4

    def __init__(self) -> None:
        self._held = False
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._normal: deque[asyncio.Future[None]] = deque()
        self._urgent_run = 0

    async def acquire(self, *, urgent: bool = False) -> None:
        if not self._held:
            self._held = True
            self._urgent_run = self._urgent_run + 1 if urgent else 0
            return
        queue = self._urgent if urgent else self._normal
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release()  # handed the turn just as we were cancelled: pass it on
            else:
                queue.remove(turn)
            raise

    def release(self) -> None:
        while True:
            urgent_first = self._urgent and (not self._normal or self._urgent_run < self.MAX_URGENT_RUN)
            queue = self._urgent if urgent_first else self._normal
            if not queue:
                self._held = False
                return
            turn = queue.popleft()
            if not turn.done():
                self._urgent_run = self._urgent_run + 1 if urgent_first else 0
                turn.set_result(None)  # the lock stays held, now by that waiter
                return
