"""Persistence: the webhook inbox and conversation facts, on SQLite or PostgreSQL through SQLAlchemy Core."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    Row,
    String,
    Table,
    Text,
    TypeDecorator,
    and_,
    event,
    func,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

STATUSES = ("pending", "working", "done", "failed", "dead")
MAX_ERROR_CHARS = 2000
# Connect, query and pool-checkout limit: the webhook must answer 503 quickly rather than hang until Webex gives up.
TIMEOUT_SECONDS = 10.0
SQLITE_BUSY_TIMEOUT_MS = 5000
# SQLSTATE class 08 is "connection exception"; 57P01-03 mean the server is shutting down or starting up.
UNAVAILABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03")
# Any constant works; it only has to be the same for every replica that migrates this database.
MIGRATION_LOCK_KEY = 0x48454C50

# UPGRADES[i] takes a version i+1 database to version i+2. To add version 2: change the Tables below to the new
# shape (fresh databases are built from them) AND append the statements that bring a version 1 database there.
UPGRADES: list[list[str]] = []
SCHEMA_VERSION = 1 + len(UPGRADES)


def utcnow() -> datetime:
    return datetime.now(UTC)


class StoreUnavailable(Exception):
    """The database cannot be reached or dropped the connection; callers answer 503 and try again later."""


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, on both backends."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store only takes timezone-aware times")
        value = value.astimezone(UTC)
        # SQLite has no zone-aware type; naive UTC in one fixed text format keeps comparisons correct.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Named constraints make future ALTER statements writable by hand.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "pk": "pk_%(table_name)s",
    }
)

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", UtcDateTime, nullable=False),
)

inbox = Table(
    "inbox",
    metadata,
    # SQLite only autoincrements INTEGER PRIMARY KEY; the id breaks ties between events received at the same instant.
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("event_id", String(255), nullable=False, unique=True),
    Column("resource", String(64), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("reply_message_id", String(255)),
    Column("received_at", UtcDateTime, nullable=False),
    Column("next_attempt_at", UtcDateTime, nullable=False),
    Column("leased_by", String(255)),
    Column("lease_until", UtcDateTime),
    CheckConstraint("status IN ({})".format(", ".join(f"'{s}'" for s in STATUSES)), name="status"),
    Index(None, "status", "next_attempt_at"),
)

triage = Table(
    "triage",
    metadata,
    Column("event_id", String(255), primary_key=True),
    Column("person_id", String(255), nullable=False),
    Column("person_email", String(320), nullable=False),
    Column("room_id", String(255), nullable=False),
    Column("text", Text, nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("top_id", String(255)),
    Column("score", Float),
    Column("codes", JSON, nullable=False),
    Column("created_at", UtcDateTime, nullable=False, index=True),
)

feedback = Table(
    "feedback",
    metadata,
    Column("action_id", String(255), primary_key=True),
    Column("person_id", String(255), nullable=False),
    Column("article_id", String(255), nullable=False),
    Column("helpful", Boolean, nullable=False),
    Column("thread_id", String(255)),
    Column("created_at", UtcDateTime, nullable=False, index=True),
)


@dataclass(frozen=True)
class InboxEvent:
    """One webhook delivery as the inbox holds it."""

    event_id: str
    resource: str
    payload: dict[str, Any]
    status: str
    attempts: int
    last_error: str | None
    reply_message_id: str | None
    received_at: datetime
    next_attempt_at: datetime

    @classmethod
    def from_row(cls, row: Row[Any]) -> InboxEvent:
        return cls(
            event_id=row.event_id,
            resource=row.resource,
            payload=row.payload,
            status=row.status,
            attempts=row.attempts,
            last_error=row.last_error,
            reply_message_id=row.reply_message_id,
            received_at=row.received_at,
            next_attempt_at=row.next_attempt_at,
        )


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


async def migrate(conn: AsyncConnection, upgrades: Sequence[Sequence[str]] = UPGRADES) -> int:
    """Create or upgrade the schema inside the caller's transaction; returns the version now in place."""
    latest = 1 + len(upgrades)
    if conn.dialect.name == "postgresql":
        # Replicas starting together must not both create tables; DDL is transactional there, so one waits.
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})

    def has_version_table(sync_conn: Connection) -> bool:
        return inspect(sync_conn).has_table(schema_version.name)

    if not await conn.run_sync(has_version_table):
        await conn.run_sync(metadata.create_all)
        await conn.execute(schema_version.insert().values(version=latest, applied_at=utcnow()))
        return latest
    current = (await conn.execute(select(func.max(schema_version.c.version)))).scalar_one()
    if current > latest:
        raise RuntimeError(
            f"database schema is version {current}, newer than this code ({latest}); upgrade the bot"
        )
    for version in range(current + 1, latest + 1):
        for statement in upgrades[version - 2]:
            await conn.execute(text(statement))
        await conn.execute(schema_version.insert().values(version=version, applied_at=utcnow()))
    return latest


def _configure_sqlite(engine: AsyncEngine) -> None:
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


async def _enable_wal(engine: AsyncEngine) -> None:
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


class Store:
    """The bot's one persistence interface; the URL picks the backend."""

    def __init__(self, engine: AsyncEngine, now: Callable[[], datetime]) -> None:
        self._engine = engine
        self._clock = now
        self._safe_url = engine.url.render_as_string(hide_password=True)

    @classmethod
    async def open(cls, url: str, *, now: Callable[[], datetime] = utcnow, pool_size: int = 5) -> Store:
        sa_url = async_url(url)
        if sa_url.get_backend_name() == "sqlite":
            engine = create_async_engine(
                sa_url, hide_parameters=True, pool_size=pool_size, pool_timeout=TIMEOUT_SECONDS
            )
            _configure_sqlite(engine)
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
                    await _enable_wal(engine)
            async with store._begin() as conn:
                await migrate(conn)
        except BaseException:
            await engine.dispose()
            raise
        return store

    async def close(self) -> None:
        await self._engine.dispose()

    @property
    def dialect(self) -> Literal["sqlite", "postgresql"]:
        return "sqlite" if self._engine.dialect.name == "sqlite" else "postgresql"

    async def ping(self) -> bool:
        try:
            async with self._begin() as conn:
                await conn.execute(text("SELECT 1"))
        except StoreUnavailable:
            return False
        return True

    # --- inbox ---------------------------------------------------------------------------------------------

    async def enqueue_event(self, event_id: str, resource: str, payload: dict[str, Any]) -> bool:
        now = self._now()
        values = {
            "event_id": event_id,
            "resource": resource,
            "payload": payload,
            "status": "pending",
            "attempts": 0,
            "received_at": now,
            "next_attempt_at": now,
        }
        return await self._insert_new(inbox, "event_id", values)

    async def claim_events(
        self, worker_id: str, *, limit: int = 10, lease_seconds: float = 60.0
    ) -> list[InboxEvent]:
        if limit <= 0:
            return []
        now = self._now()
        due = or_(
            and_(inbox.c.status.in_(("pending", "failed")), inbox.c.next_attempt_at <= now),
            and_(inbox.c.status == "working", inbox.c.lease_until <= now),
        )
        # One statement, so the pick and the take are atomic: PostgreSQL skips rows another replica holds;
        # SQLite renders no FOR UPDATE, and its single writer lock does the same job.
        picked = (
            select(inbox.c.id)
            .where(due)
            .order_by(inbox.c.received_at, inbox.c.id)
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
        return [InboxEvent.from_row(row) for row in sorted(rows, key=lambda row: (row.received_at, row.id))]

    async def record_reply(self, event_id: str, reply_message_id: str) -> None:
        await self._update_event(event_id, reply_message_id=reply_message_id)

    async def mark_done(self, event_id: str) -> None:
        await self._update_event(event_id, status="done", leased_by=None, lease_until=None)

    async def mark_failed(self, event_id: str, error: str, *, retry_in: float | None) -> None:
        changes: dict[str, Any] = {
            "last_error": error[:MAX_ERROR_CHARS],
            "leased_by": None,
            "lease_until": None,
        }
        if retry_in is None:
            changes["status"] = "dead"
        else:
            changes["status"] = "failed"
            changes["next_attempt_at"] = self._now() + timedelta(seconds=max(retry_in, 0.0))
        await self._update_event(event_id, **changes)

    async def get_event(self, event_id: str) -> InboxEvent | None:
        async with self._begin() as conn:
            row = (await conn.execute(select(inbox).where(inbox.c.event_id == event_id))).first()
        return None if row is None else InboxEvent.from_row(row)

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

    # --- conversation facts --------------------------------------------------------------------------------

    async def record_triage(
        self,
        *,
        event_id: str,
        person_id: str,
        person_email: str,
        room_id: str,
        text: str,
        outcome: str,
        top_id: str | None,
        score: float | None,
        codes: list[str],
    ) -> None:
        values = {
            "event_id": event_id,
            "person_id": person_id,
            "person_email": person_email,
            "room_id": room_id,
            "text": text,
            "outcome": outcome,
            "top_id": top_id,
            "score": score,
            "codes": codes,
            "created_at": self._now(),
        }
        await self._insert_new(triage, "event_id", values)

    async def record_feedback(
        self, *, action_id: str, person_id: str, article_id: str, helpful: bool, thread_id: str | None
    ) -> bool:
        values = {
            "action_id": action_id,
            "person_id": person_id,
            "article_id": article_id,
            "helpful": helpful,
            "thread_id": thread_id,
            "created_at": self._now(),
        }
        return await self._insert_new(feedback, "action_id", values)

    async def feedback_counts(self, since: datetime | None = None) -> dict[str, int]:
        query = select(feedback.c.helpful, func.count()).group_by(feedback.c.helpful)
        if since is not None:
            query = query.where(feedback.c.created_at >= since)
        async with self._begin() as conn:
            counts = {bool(helpful): count for helpful, count in (await conn.execute(query)).all()}
        return {"helpful": counts.get(True, 0), "not_helpful": counts.get(False, 0)}

    # --- helpers -------------------------------------------------------------------------------------------

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the store's clock must return timezone-aware datetimes")
        return now.astimezone(UTC)

    @asynccontextmanager
    async def _begin(self) -> AsyncIterator[AsyncConnection]:
        async with self._unavailable_as_store_error(), self._engine.begin() as conn:
            yield conn

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

    async def _insert_new(self, table: Table, key: str, values: dict[str, Any]) -> bool:
        # Insert-or-ignore: a duplicate is an answer, not an error (and must not abort a PostgreSQL transaction).
        insert = pg_insert if self.dialect == "postgresql" else sqlite_insert
        statement = (
            insert(table).values(values).on_conflict_do_nothing(index_elements=[key]).returning(table.c[key])
        )
        async with self._begin() as conn:
            return (await conn.execute(statement)).first() is not None

    async def _update_event(self, event_id: str, **changes: Any) -> None:
        async with self._begin() as conn:
            result = await conn.execute(update(inbox).where(inbox.c.event_id == event_id).values(**changes))
        if result.rowcount == 0:
            raise KeyError(event_id)
