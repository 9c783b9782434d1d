"""Persistence: inbox, conversation facts, tickets and their outbox, on SQLite or PostgreSQL (SQLAlchemy Core)."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import statistics
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, fields
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
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Row,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    and_,
    case,
    event,
    func,
    inspect,
    literal,
    or_,
    select,
    text,
    true,
    tuple_,
    update,
)
from sqlalchemy import Sequence as SqlSequence
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql import ColumnElement, Insert, TableValuedAlias

STATUSES = ("pending", "working", "done", "failed", "dead")
TICKET_STATUSES = ("open", "claimed", "resolved", "cancelled")
TicketStatus = Literal["open", "claimed", "resolved", "cancelled"]
OUTBOX_STATUSES = ("pending", "delivered", "dead")
FIRST_TICKET_NUMBER = 1001
TICKET_PREFIX = "HD-"
# At most 9 digits, so a typed number never overflows the INTEGER column.
TICKET_NUMBER_RE = re.compile(r"(?:HD-?|#)?\s*(\d{1,9})", re.IGNORECASE)
MAX_TRANSCRIPT_ENTRIES = 50
MAX_LOGGED_TEXT = 2000
TOP_N = 10
CONFIDENT = "fix"
# How long a confident answer must sit without a vote or a ticket before stats count it as a likely deflection.
DEFLECTION_AGE = timedelta(hours=24)
MAX_ERROR_CHARS = 2000
PURGE_BATCH = 1000  # rows per delete transaction
# Connect, query and pool-checkout limit: the webhook must answer 503 quickly rather than hang until Webex gives up.
TIMEOUT_SECONDS = 10.0
SQLITE_BUSY_TIMEOUT_MS = 5000
# SQLSTATE class 08 is "connection exception"; 57P01-03 mean the server is shutting down or starting up.
UNAVAILABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03")
# Any constant works; it only has to be the same for every replica that migrates this database.
MIGRATION_LOCK_KEY = 0x48454C50


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
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
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
    # Last, where version 2's ALTER TABLE put it, so fresh and upgraded databases have the same shape.
    Column("thread_id", String(255), index=True),
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

# PostgreSQL hands out ticket numbers from a real sequence (SQLite has none: create_all skips it there).
ticket_number_seq = SqlSequence("ticket_number_seq", start=FIRST_TICKET_NUMBER, metadata=metadata)

# SQLite's stand-in for the sequence: one row, bumped inside the ticket's own BEGIN IMMEDIATE transaction.
ticket_counter = Table(
    "ticket_counter",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("last_number", Integer, nullable=False),
    CheckConstraint("id = 1", name="one_row"),
    info={"only_on": "sqlite"},
)

tickets = Table(
    "tickets",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("number", Integer, nullable=False, unique=True),
    # The event that asked for the ticket: a redelivered webhook must not open a second one.
    Column("dedupe_key", String(255), nullable=False, unique=True),
    Column("status", String(16), nullable=False),
    Column("requester_id", String(255), nullable=False),
    Column("requester_email", String(320), nullable=False),
    Column("requester_name", String(255), nullable=False),
    Column("room_id", String(255), nullable=False),
    Column("thread_id", String(255), index=True),
    Column("original_text", Text, nullable=False),
    Column("codes", JSON, nullable=False),
    Column("articles", JSON, nullable=False),
    Column("steps_suggested", JSON, nullable=False),
    Column("note", Text),
    Column("transcript", JSON, nullable=False),
    Column("assignee_id", String(255)),
    Column("assignee_name", String(255)),
    Column("resolution", Text),
    Column("helpdesk_message_id", String(255)),
    Column("info_requests", Integer, nullable=False),
    Column("reopened", Integer, nullable=False),
    Column("created_at", UtcDateTime, nullable=False, index=True),
    Column("claimed_at", UtcDateTime),
    Column("resolved_at", UtcDateTime),
    Column("updated_at", UtcDateTime, nullable=False),
    CheckConstraint("status IN ({})".format(", ".join(f"'{s}'" for s in TICKET_STATUSES)), name="status"),
    Index(None, "status", "created_at"),
    Index(None, "requester_id", "created_at"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column(
        "ticket_id", BigInteger().with_variant(Integer, "sqlite"), ForeignKey(tickets.c.id), nullable=False
    ),
    # 1, 2, 3... per ticket: the delivery order, and what lets the receiver spot a gap or a repeat.
    Column("sequence", Integer, nullable=False),
    Column("event", String(64), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text),
    Column("next_attempt_at", UtcDateTime, nullable=False),
    Column("leased_by", String(255)),
    Column("lease_until", UtcDateTime),
    Column("created_at", UtcDateTime, nullable=False),
    Column("delivered_at", UtcDateTime),
    CheckConstraint("status IN ({})".format(", ".join(f"'{s}'" for s in OUTBOX_STATUSES)), name="status"),
    UniqueConstraint("ticket_id", "sequence"),
    Index(None, "status", "next_attempt_at"),
)

messages_log = Table(
    "messages_log",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("room_id", String(255), nullable=False),
    Column("thread_id", String(255)),
    Column("person_id", String(255), nullable=False),
    Column("who", String(255), nullable=False),
    Column("text", Text, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Index(None, "room_id", "thread_id", "created_at"),
)


# Side effects of one inbox event beyond its reply (a notice to the requester, a ticket card): recorded when
# done, so an event retried after a crash finishes what is missing instead of repeating what is not.
event_effects = Table(
    "event_effects",
    metadata,
    Column("event_id", String(255), primary_key=True),
    Column("step", String(64), primary_key=True),
    Column("message_id", String(255), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)


def _row_values(cls: type[Any], row: Row[Any], **overrides: Any) -> dict[str, Any]:
    """A record dataclass's fields from a row whose columns carry their names; overrides convert the odd one."""
    values = {f.name: row._mapping[f.name] for f in fields(cls) if f.name not in overrides}
    return values | overrides


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
        return cls(**_row_values(cls, row))


@dataclass(frozen=True)
class TriageRecord:
    """What the bot made of one message."""

    event_id: str
    person_id: str
    person_email: str
    room_id: str
    thread_id: str | None
    text: str
    outcome: str
    top_id: str | None
    score: float | None
    codes: list[str]
    created_at: datetime

    @classmethod
    def from_row(cls, row: Row[Any]) -> TriageRecord:
        return cls(**_row_values(cls, row, codes=list(row.codes)))


@dataclass(frozen=True)
class Ticket:
    """A handoff to the helpdesk, as it stands now."""

    id: int
    number: str
    status: TicketStatus
    requester_id: str
    requester_email: str
    requester_name: str
    room_id: str
    thread_id: str | None
    original_text: str
    codes: list[str]
    articles: list[str]
    steps_suggested: list[str]
    note: str | None
    transcript: list[dict[str, str]]
    assignee_id: str | None
    assignee_name: str | None
    # After a reopen this is the resolution the requester turned down, until the ticket is resolved again.
    resolution: str | None
    helpdesk_message_id: str | None
    info_requests: int
    reopened: int
    created_at: datetime
    claimed_at: datetime | None
    resolved_at: datetime | None
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Row[Any]) -> Ticket:
        return cls(
            **_row_values(
                cls,
                row,
                number=f"{TICKET_PREFIX}{row.number}",
                transcript=[dict(entry) for entry in row.transcript],
            )
        )


@dataclass(frozen=True)
class TicketChange:
    """The outcome of a transition: ok says whether it happened; ticket is the state either way."""

    ok: bool
    ticket: Ticket


@dataclass(frozen=True)
class OutboxItem:
    """One ticket event waiting for the ITSM webhook."""

    id: int
    ticket_id: int
    event: str
    payload: dict[str, Any]
    attempts: int
    created_at: datetime

    @classmethod
    def from_row(cls, row: Row[Any]) -> OutboxItem:
        return cls(**_row_values(cls, row))


@dataclass(frozen=True)
class Stats:
    """What the bot did over a period, for admins."""

    messages_triaged: int
    confident: int
    clarify: int
    none: int
    helpful: int
    not_helpful: int
    escalations: int
    resolved_by_bot: int
    potential_deflection: int
    top_codes: list[tuple[str, int]]
    top_articles: list[tuple[str, int]]
    open_tickets: int
    median_claim_seconds: float | None
    median_resolve_seconds: float | None


def ticket_payload(ticket: Ticket) -> dict[str, Any]:
    """The ticket as plain JSON: what the ITSM webhook receives."""
    payload = asdict(ticket)
    for key, value in payload.items():
        if isinstance(value, datetime):
            payload[key] = value.isoformat()
    return payload


def parse_ticket_number(number: str) -> int | None:
    """The n of "HD-n", "hd-n", "HDn", "#n" or "n"; None for anything else."""
    match = TICKET_NUMBER_RE.fullmatch(number.strip())
    return None if match is None else int(match.group(1))


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


# An upgrade statement runs on every backend, or is a map from backend name to its own text ("sqlite" or
# "postgresql"); a backend missing from the map has nothing to do for that statement.
UpgradeStatement = str | Mapping[str, str]

# Types that the two backends spell differently. The upgrade DDL is frozen text rather than rendered from the
# Tables above: those describe only the latest shape, and version 2 must stay what it was once version 3 exists.
_V2_TYPES = {
    "sqlite": {"serial": "INTEGER", "bigint": "INTEGER", "timestamp": "DATETIME"},
    "postgresql": {"serial": "BIGSERIAL", "bigint": "BIGINT", "timestamp": "TIMESTAMP WITH TIME ZONE"},
}


def _each_backend(template: str) -> dict[str, str]:
    return {backend: template.format_map(types) for backend, types in _V2_TYPES.items()}


UPGRADE_TO_V2: list[UpgradeStatement] = [
    "ALTER TABLE triage ADD COLUMN thread_id VARCHAR(255)",
    "CREATE INDEX ix_triage_thread_id ON triage (thread_id)",
    {"postgresql": f"CREATE SEQUENCE ticket_number_seq START WITH {FIRST_TICKET_NUMBER}"},
    {
        "sqlite": """CREATE TABLE ticket_counter (
            id INTEGER NOT NULL,
            last_number INTEGER NOT NULL,
            CONSTRAINT pk_ticket_counter PRIMARY KEY (id),
            CONSTRAINT ck_ticket_counter_one_row CHECK (id = 1))"""
    },
    _each_backend(
        """CREATE TABLE tickets (
            id {serial} NOT NULL,
            number INTEGER NOT NULL,
            dedupe_key VARCHAR(255) NOT NULL,
            status VARCHAR(16) NOT NULL,
            requester_id VARCHAR(255) NOT NULL,
            requester_email VARCHAR(320) NOT NULL,
            requester_name VARCHAR(255) NOT NULL,
            room_id VARCHAR(255) NOT NULL,
            thread_id VARCHAR(255),
            original_text TEXT NOT NULL,
            codes JSON NOT NULL,
            articles JSON NOT NULL,
            steps_suggested JSON NOT NULL,
            note TEXT,
            transcript JSON NOT NULL,
            assignee_id VARCHAR(255),
            assignee_name VARCHAR(255),
            resolution TEXT,
            helpdesk_message_id VARCHAR(255),
            info_requests INTEGER NOT NULL,
            reopened INTEGER NOT NULL,
            created_at {timestamp} NOT NULL,
            claimed_at {timestamp},
            resolved_at {timestamp},
            updated_at {timestamp} NOT NULL,
            CONSTRAINT pk_tickets PRIMARY KEY (id),
            CONSTRAINT ck_tickets_status CHECK (status IN ('open', 'claimed', 'resolved', 'cancelled')),
            CONSTRAINT uq_tickets_number UNIQUE (number),
            CONSTRAINT uq_tickets_dedupe_key UNIQUE (dedupe_key))"""
    ),
    "CREATE INDEX ix_tickets_created_at ON tickets (created_at)",
    "CREATE INDEX ix_tickets_requester_id_created_at ON tickets (requester_id, created_at)",
    "CREATE INDEX ix_tickets_status_created_at ON tickets (status, created_at)",
    "CREATE INDEX ix_tickets_thread_id ON tickets (thread_id)",
    _each_backend(
        """CREATE TABLE outbox (
            id {serial} NOT NULL,
            ticket_id {bigint} NOT NULL,
            sequence INTEGER NOT NULL,
            event VARCHAR(64) NOT NULL,
            payload JSON NOT NULL,
            status VARCHAR(16) NOT NULL,
            attempts INTEGER NOT NULL,
            last_error TEXT,
            next_attempt_at {timestamp} NOT NULL,
            leased_by VARCHAR(255),
            lease_until {timestamp},
            created_at {timestamp} NOT NULL,
            delivered_at {timestamp},
            CONSTRAINT pk_outbox PRIMARY KEY (id),
            CONSTRAINT ck_outbox_status CHECK (status IN ('pending', 'delivered', 'dead')),
            CONSTRAINT uq_outbox_ticket_id_sequence UNIQUE (ticket_id, sequence),
            CONSTRAINT fk_outbox_ticket_id_tickets FOREIGN KEY (ticket_id) REFERENCES tickets (id))"""
    ),
    "CREATE INDEX ix_outbox_status_next_attempt_at ON outbox (status, next_attempt_at)",
    _each_backend(
        """CREATE TABLE messages_log (
            id {serial} NOT NULL,
            room_id VARCHAR(255) NOT NULL,
            thread_id VARCHAR(255),
            person_id VARCHAR(255) NOT NULL,
            who VARCHAR(255) NOT NULL,
            text TEXT NOT NULL,
            created_at {timestamp} NOT NULL,
            CONSTRAINT pk_messages_log PRIMARY KEY (id))"""
    ),
    "CREATE INDEX ix_messages_log_room_id_thread_id_created_at ON messages_log (room_id, thread_id, created_at)",
]

# UPGRADES[i] takes a version i+1 database to version i+2. To add a version: change the Tables above to the new
# shape (fresh databases are built from them) AND append the statements that bring the previous version there.
# tests/test_store.py checks that an upgraded database and a fresh one come out the same.
UPGRADE_TO_V3: list[UpgradeStatement] = [
    _each_backend(
        """CREATE TABLE event_effects (
            event_id VARCHAR(255) NOT NULL,
            step VARCHAR(64) NOT NULL,
            message_id VARCHAR(255) NOT NULL,
            created_at {timestamp} NOT NULL,
            CONSTRAINT pk_event_effects PRIMARY KEY (event_id, step))"""
    ),
]

UPGRADES: list[list[UpgradeStatement]] = [UPGRADE_TO_V2, UPGRADE_TO_V3]
SCHEMA_VERSION = 1 + len(UPGRADES)


def _tables_for(backend: str) -> list[Table]:
    return [table for table in metadata.sorted_tables if table.info.get("only_on", backend) == backend]


async def migrate(conn: AsyncConnection, upgrades: Sequence[Sequence[UpgradeStatement]] = UPGRADES) -> int:
    """Create or upgrade the schema inside the caller's transaction; returns the version now in place."""
    latest = 1 + len(upgrades)
    backend = conn.dialect.name
    if backend == "postgresql":
        # Replicas starting together must not both create tables; DDL is transactional there, so one waits.
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})

    def has_version_table(sync_conn: Connection) -> bool:
        return inspect(sync_conn).has_table(schema_version.name)

    def create_all(sync_conn: Connection) -> None:
        metadata.create_all(sync_conn, tables=_tables_for(backend))

    if not await conn.run_sync(has_version_table):
        await conn.run_sync(create_all)
        await conn.execute(schema_version.insert().values(version=latest, applied_at=utcnow()))
        return latest
    current = (await conn.execute(select(func.max(schema_version.c.version)))).scalar_one()
    if current > latest:
        raise RuntimeError(
            f"database schema is version {current}, newer than this code ({latest}); upgrade the bot"
        )
    for version in range(current + 1, latest + 1):
        for statement in upgrades[version - 2]:
            sql = statement if isinstance(statement, str) else statement.get(backend)
            if sql is not None:
                await conn.execute(text(sql))
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


class _SqliteInboxWriter:
    """The inbox insert on SQLite, through the stdlib driver on a thread of its own.

    This is the one write on the webhook's ack path. Through SQLAlchemy's async layer and aiosqlite a batch costs
    about a millisecond of Python (a thread hop per statement, greenlet switches, per-row type processing); here a
    batch is one hop, one transaction and a few microseconds per row. It is a second connection to the same file:
    Store._write_turn makes it take turns with the main one, so neither waits in SQLite's busy handler."""

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

    async def insert(self, rows: Sequence[tuple[str, str, str]], now: datetime) -> set[str]:
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-inbox")
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._insert, rows, now)

    def _insert(self, rows: Sequence[tuple[str, str, str]], now: datetime) -> set[str]:
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
                if cursor.execute(self.SQL, (event_id, resource, payload, stamp, stamp)).rowcount == 1:
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


class _Turns:
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
        self._sqlite_inbox: _SqliteInboxWriter | None = None
        self._turn: _Turns | None = None
        if self.dialect == "sqlite":
            self._sqlite_inbox = _SqliteInboxWriter(engine.url.database or "", engine.dialect)
            self._turn = _Turns()

    @classmethod
    async def open(cls, url: str, *, now: Callable[[], datetime] = utcnow, pool_size: int = 5) -> Store:
        sa_url = async_url(url)
        if sa_url.get_backend_name() == "sqlite":
            # SQLite has one writer: more connections only queue in its busy handler (100 ms sleeps, seconds
            # of tail latency under load), so one connection serves every task, in turn, without that wait.
            engine = create_async_engine(
                sa_url, hide_parameters=True, pool_size=1, max_overflow=0, pool_timeout=TIMEOUT_SECONDS
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
        if self._sqlite_inbox is not None:
            await self._sqlite_inbox.close()
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

    async def enqueue_event(self, event_id: str, resource: str, payload: str) -> bool:
        """Store one event; `payload` is the webhook body's JSON text. False if the id was stored before."""
        return event_id in await self.enqueue_events([(event_id, resource, payload)])

    async def enqueue_events(self, events: Sequence[tuple[str, str, str]]) -> set[str]:
        """Insert many (event_id, resource, payload JSON text) in one transaction; returns the ids that were new.

        One transaction for a batch is the group commit the webhook view relies on for throughput. The payload
        is the JSON text as received (the webhook view has validated it), so the ack path never re-encodes it."""
        if not events:
            return set()
        now = self._now()
        if self._sqlite_inbox is not None:
            async with self._unavailable_as_store_error(), self._write_turn(urgent=True):
                return await self._sqlite_inbox.insert(events, now)
        rows = [
            {
                "event_id": event_id,
                "resource": resource,
                # PostgreSQL's json column takes a value for SQLAlchemy to encode, not text: decode it here.
                "payload": json.loads(payload),
                "status": "pending",
                "attempts": 0,
                "received_at": now,
                "next_attempt_at": now,
            }
            for event_id, resource, payload in {e[0]: e for e in events}.values()
        ]
        # One statement with the rows as parameters (SQLAlchemy's insertmanyvalues): compiled once and cached,
        # where a multi-VALUES statement built from the rows would be compiled again for every batch.
        statement = (
            pg_insert(inbox).on_conflict_do_nothing(index_elements=["event_id"]).returning(inbox.c.event_id)
        )
        async with self._begin() as conn:
            return set((await conn.execute(statement, rows)).scalars().all())

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

    async def renew_leases(self, worker_id: str, lease_seconds: float) -> int:
        """Extend the leases this worker holds: a live worker keeps its events, a dead one loses them soon."""
        renew = (
            update(inbox)
            .where(inbox.c.status == "working", inbox.c.leased_by == worker_id)
            .values(lease_until=self._now() + timedelta(seconds=lease_seconds))
        )
        async with self._begin() as conn:
            return (await conn.execute(renew)).rowcount

    async def record_effect(self, event_id: str, step: str, message_id: str) -> None:
        values = {"event_id": event_id, "step": step, "message_id": message_id, "created_at": self._now()}
        async with self._begin() as conn:
            await conn.execute(
                _insert_or_ignore(self.dialect, event_effects, "event_id", values, ("event_id", "step"))
            )

    async def effects(self, event_id: str) -> dict[str, str]:
        query = select(event_effects.c.step, event_effects.c.message_id).where(
            event_effects.c.event_id == event_id
        )
        async with self._begin() as conn:
            return {row.step: row.message_id for row in await conn.execute(query)}

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

    # --- retention -----------------------------------------------------------------------------------------

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
        thread_id: str | None = None,
    ) -> None:
        values = {
            "event_id": event_id,
            "person_id": person_id,
            "person_email": person_email,
            "room_id": room_id,
            "thread_id": thread_id,
            "text": text,
            "outcome": outcome,
            "top_id": top_id,
            "score": score,
            "codes": codes,
            "created_at": self._now(),
        }
        await self._insert_new(triage, "event_id", values)

    async def get_triage(self, event_id: str) -> TriageRecord | None:
        async with self._begin() as conn:
            row = (await conn.execute(select(triage).where(triage.c.event_id == event_id))).first()
        return None if row is None else TriageRecord.from_row(row)

    async def unmatched(self, limit: int = 20) -> list[TriageRecord]:
        """Newest messages the bot had no confident answer for: what the knowledge base is missing."""
        query = (
            select(triage)
            .where(triage.c.outcome != CONFIDENT)
            .order_by(triage.c.created_at.desc(), triage.c.event_id.desc())
            .limit(limit)
        )
        async with self._begin() as conn:
            return [TriageRecord.from_row(row) for row in (await conn.execute(query)).all()]

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
        async with self._begin() as conn:
            return await _feedback_counts(conn, since)

    async def log_message(
        self, *, room_id: str, thread_id: str | None, person_id: str, who: str, text: str
    ) -> None:
        """Keep one line of a conversation so a later ticket can carry it; the caller redacts the text."""
        values = {
            "room_id": room_id,
            "thread_id": thread_id,
            "person_id": person_id,
            "who": who[:255],
            "text": text[:MAX_LOGGED_TEXT],
            "created_at": self._now(),
        }
        async with self._begin() as conn:
            await conn.execute(messages_log.insert().values(values))

    async def recent_messages(
        self, room_id: str, thread_id: str | None, limit: int = 10
    ) -> list[dict[str, str]]:
        """The last `limit` lines of a thread (or of the room's top level when thread_id is None), oldest first."""
        log = messages_log.c
        # "= NULL" matches nothing, and IS NOT DISTINCT FROM defeats the index on PostgreSQL.
        same_thread = log.thread_id.is_(None) if thread_id is None else log.thread_id == thread_id
        query = (
            select(log.who, log.text, log.created_at)
            .where(log.room_id == room_id, same_thread)
            .order_by(log.created_at.desc(), log.id.desc())
            .limit(limit)
        )
        async with self._begin() as conn:
            rows = (await conn.execute(query)).all()
        return [_transcript_entry(row.who, row.text, row.created_at) for row in reversed(rows)]

    # --- tickets -------------------------------------------------------------------------------------------
    # A number may be written "HD-1042", "hd-1042" or "1042". The transitions answer None for a ticket that does
    # not exist (numbers come from users and card submits, so that is an answer, not a bug); each one that
    # happens queues its outbox event in the transaction that makes the change.

    async def create_ticket(
        self,
        *,
        dedupe_key: str,
        requester_id: str,
        requester_email: str,
        requester_name: str,
        room_id: str,
        thread_id: str | None,
        original_text: str,
        codes: Sequence[str],
        articles: Sequence[str],
        steps_suggested: Sequence[str],
        note: str | None,
        transcript: Sequence[Mapping[str, str]],
    ) -> tuple[Ticket, bool]:
        """Open a ticket once per dedupe_key; a retry gets the existing ticket and False."""
        now = self._now()
        by_key = select(tickets).where(tickets.c.dedupe_key == dedupe_key)
        async with self._begin() as conn:
            existing = (await conn.execute(by_key)).first()
            if existing is not None:
                return Ticket.from_row(existing), False
            values = {
                "number": await self._allocate_ticket_number(conn),
                "dedupe_key": dedupe_key,
                "status": "open",
                "requester_id": requester_id,
                "requester_email": requester_email,
                "requester_name": requester_name,
                "room_id": room_id,
                "thread_id": thread_id,
                "original_text": original_text,
                "codes": list(codes),
                "articles": list(articles),
                "steps_suggested": list(steps_suggested),
                "note": note,
                "transcript": [dict(entry) for entry in transcript][-MAX_TRANSCRIPT_ENTRIES:],
                "info_requests": 0,
                "reopened": 0,
                "created_at": now,
                "updated_at": now,
            }
            insert = _insert_or_ignore(self.dialect, tickets, "dedupe_key", values).returning(*tickets.c)
            row = (await conn.execute(insert)).first()
            if row is None:
                # Only on PostgreSQL: a concurrent create with the same key committed after our look. Its ticket
                # is the answer; the sequence value we drew becomes a gap, which sequences allow anyway.
                return Ticket.from_row((await conn.execute(by_key)).one()), False
            ticket = Ticket.from_row(row)
            actor = {"id": requester_id, "name": requester_name}
            await _enqueue_outbox(conn, ticket, "ticket.created", now, {"actor": actor})
        return ticket, True

    async def get_ticket(self, number: str) -> Ticket | None:
        key = parse_ticket_number(number)
        if key is None:
            return None
        async with self._begin() as conn:
            row = (await conn.execute(select(tickets).where(tickets.c.number == key))).first()
        return None if row is None else Ticket.from_row(row)

    async def set_helpdesk_message(self, number: str, message_id: str) -> None:
        """Remember the card posted in the helpdesk space, so a later change can point at it."""
        statement = (
            update(tickets)
            .where(tickets.c.number == _ticket_key(number))
            .values(helpdesk_message_id=message_id, updated_at=self._now())
        )
        async with self._begin() as conn:
            if (await conn.execute(statement)).rowcount == 0:
                raise KeyError(number)

    async def claim_ticket(self, number: str, *, assignee_id: str, assignee_name: str) -> TicketChange | None:
        """Take an open ticket. Of concurrent claims exactly one wins; the others see who has it."""
        now = self._now()
        return await self._transition(
            number,
            "ticket.claimed",
            allowed=tickets.c.status == "open",
            changes={
                "status": "claimed",
                "assignee_id": assignee_id,
                "assignee_name": assignee_name,
                "claimed_at": now,
            },
            actor_id=assignee_id,
            actor_name=assignee_name,
            now=now,
        )

    async def resolve_ticket(
        self, number: str, *, by_id: str, by_name: str, resolution: str
    ) -> TicketChange | None:
        """Close an open or claimed ticket. Resolving an unclaimed one counts as claiming it too."""
        now = self._now()
        unassigned = tickets.c.assignee_id.is_(None)
        return await self._transition(
            number,
            "ticket.resolved",
            allowed=tickets.c.status.in_(("open", "claimed")),
            changes={
                "status": "resolved",
                "resolution": resolution,
                "resolved_at": now,
                "assignee_id": case((unassigned, by_id), else_=tickets.c.assignee_id),
                "assignee_name": case((unassigned, by_name), else_=tickets.c.assignee_name),
                # Typed, so the bind goes through UtcDateTime like every other time the store writes.
                "claimed_at": func.coalesce(tickets.c.claimed_at, literal(now, UtcDateTime)),
            },
            actor_id=by_id,
            actor_name=by_name,
            now=now,
        )

    async def reopen_ticket(self, number: str, *, requester_id: str) -> TicketChange | None:
        """The requester says the fix did not work: back to the queue, unassigned."""
        now = self._now()
        return await self._transition(
            number,
            "ticket.reopened",
            allowed=and_(tickets.c.status == "resolved", tickets.c.requester_id == requester_id),
            changes={
                "status": "open",
                "assignee_id": None,
                "assignee_name": None,
                # The claim and resolve times describe the current round, which starts again now.
                "claimed_at": None,
                "resolved_at": None,
                "reopened": tickets.c.reopened + 1,
            },
            actor_id=requester_id,
            now=now,
        )

    async def cancel_ticket(self, number: str, *, requester_id: str) -> TicketChange | None:
        """The requester withdraws a ticket nobody has resolved yet."""
        now = self._now()
        return await self._transition(
            number,
            "ticket.cancelled",
            allowed=and_(tickets.c.status.in_(("open", "claimed")), tickets.c.requester_id == requester_id),
            changes={"status": "cancelled"},
            actor_id=requester_id,
            now=now,
        )

    async def request_info(
        self, number: str, *, by_id: str, by_name: str, question: str
    ) -> TicketChange | None:
        """Staff ask the requester something; the question joins the transcript (callers need not add it)."""
        now = self._now()
        return await self._transition(
            number,
            "ticket.info_requested",
            allowed=tickets.c.status.in_(("open", "claimed")),
            changes={"info_requests": tickets.c.info_requests + 1},
            actor_id=by_id,
            actor_name=by_name,
            now=now,
            said=_transcript_entry(by_name, question, now),
            details={"question": question},
        )

    async def add_transcript(self, number: str, who: str, text: str) -> None:
        now = self._now()
        # FOR UPDATE makes the read-append-write atomic on PostgreSQL; SQLite's writer lock already does.
        locked = select(tickets.c.id, tickets.c.transcript).where(tickets.c.number == _ticket_key(number))
        async with self._begin() as conn:
            row = (await conn.execute(locked.with_for_update())).first()
            if row is None:
                raise KeyError(number)
            await _append_transcript(conn, row.id, row.transcript, _transcript_entry(who, text, now), now)

    async def list_tickets(
        self, statuses: Sequence[str] = ("open", "claimed"), limit: int = 50
    ) -> list[Ticket]:
        # A bare "open" is a Sequence[str] too, and would silently match the statuses "o", "p", "e", "n".
        wanted = (statuses,) if isinstance(statuses, str) else tuple(statuses)
        return await self._tickets_where(tickets.c.status.in_(wanted), limit)

    async def tickets_for_requester(self, person_id: str, limit: int = 20) -> list[Ticket]:
        return await self._tickets_where(tickets.c.requester_id == person_id, limit)

    # --- outbox --------------------------------------------------------------------------------------------

    async def claim_outbox(
        self, worker_id: str, *, limit: int = 10, lease_seconds: float = 60.0
    ) -> list[OutboxItem]:
        """Lease due items, at most one per ticket: that ticket's oldest undelivered one.

        Later items of a ticket wait until the earlier one is delivered, so the receiver sees each ticket's
        events in order even across retries. A dead item keeps blocking its ticket's later items for the same
        reason; outbox_counts shows it to an admin.
        """
        if limit <= 0:
            return []
        now = self._now()
        candidate, earlier = outbox.alias("candidate"), outbox.alias("earlier")
        head_of_ticket = (
            select(func.min(earlier.c.sequence))
            .where(earlier.c.ticket_id == candidate.c.ticket_id, earlier.c.status != "delivered")
            .scalar_subquery()
        )
        # The same single-statement pick-and-take as claim_events: SKIP LOCKED on PostgreSQL, the writer lock
        # on SQLite. A leased item stays "pending" until its lease runs out.
        picked = (
            select(candidate.c.id)
            .where(
                candidate.c.status == "pending",
                candidate.c.next_attempt_at <= now,
                or_(candidate.c.lease_until.is_(None), candidate.c.lease_until <= now),
                candidate.c.sequence == head_of_ticket,
            )
            .order_by(candidate.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        claim = (
            update(outbox)
            .where(outbox.c.id.in_(picked))
            .values(
                leased_by=worker_id,
                lease_until=now + timedelta(seconds=lease_seconds),
                attempts=outbox.c.attempts + 1,
            )
            .returning(*outbox.c)
        )
        async with self._begin() as conn:
            rows = (await conn.execute(claim)).all()
        return [OutboxItem.from_row(row) for row in sorted(rows, key=lambda row: row.id)]

    async def mark_outbox_delivered(self, item_id: int) -> None:
        await self._update_outbox(
            item_id, status="delivered", delivered_at=self._now(), leased_by=None, lease_until=None
        )

    async def mark_outbox_failed(self, item_id: int, error: str, *, retry_in: float | None) -> None:
        """Retry after retry_in seconds, or give up (None): a dead item still holds back its ticket's later ones."""
        changes: dict[str, Any] = {
            "last_error": error[:MAX_ERROR_CHARS],
            "leased_by": None,
            "lease_until": None,
        }
        if retry_in is None:
            changes["status"] = "dead"
        else:
            changes["next_attempt_at"] = self._now() + timedelta(seconds=max(retry_in, 0.0))
        await self._update_outbox(item_id, **changes)

    async def outbox_counts(self) -> dict[str, int]:
        query = select(outbox.c.status, func.count()).group_by(outbox.c.status)
        async with self._begin() as conn:
            rows = (await conn.execute(query)).all()
        return {status: 0 for status in OUTBOX_STATUSES} | {status: count for status, count in rows}

    # --- stats ---------------------------------------------------------------------------------------------

    async def stats(self, since: datetime) -> Stats:
        now = self._now()
        recent = triage.c.created_at >= since
        confident = and_(recent, triage.c.outcome == CONFIDENT)
        count = func.count()
        outcomes = select(triage.c.outcome, count).where(recent).group_by(triage.c.outcome)
        # A confident answer a day old that nobody voted on and nobody escalated probably did its job.
        deflected = (
            select(count)
            .select_from(triage)
            .where(
                confident,
                triage.c.created_at <= now - DEFLECTION_AGE,
                # Rows from before version 2 have no thread to check, so they are not counted.
                triage.c.thread_id.is_not(None),
                ~select(feedback.c.action_id).where(feedback.c.thread_id == triage.c.thread_id).exists(),
                ~select(tickets.c.id).where(tickets.c.thread_id == triage.c.thread_id).exists(),
            )
        )
        code = self._json_array_items(triage.c.codes)
        top_codes = (
            select(code.c.value, count)
            .select_from(triage)
            .join(code, true())
            .where(recent)
            .group_by(code.c.value)
            .order_by(count.desc(), code.c.value)
            .limit(TOP_N)
        )
        top_articles = (
            select(triage.c.top_id, count)
            .where(confident, triage.c.top_id.is_not(None))
            .group_by(triage.c.top_id)
            .order_by(count.desc(), triage.c.top_id)
            .limit(TOP_N)
        )
        escalations = select(count).select_from(tickets).where(tickets.c.created_at >= since)
        open_tickets = select(count).select_from(tickets).where(tickets.c.status.in_(("open", "claimed")))
        timings = select(tickets.c.created_at, tickets.c.claimed_at, tickets.c.resolved_at).where(
            tickets.c.created_at >= since
        )
        async with self._begin() as conn:
            by_outcome: dict[str, int] = {outcome: n for outcome, n in (await conn.execute(outcomes)).all()}
            votes = await _feedback_counts(conn, since)
            deflection = (await conn.execute(deflected)).scalar_one()
            codes = [(str(value), n) for value, n in (await conn.execute(top_codes)).all()]
            articles = [(str(value), n) for value, n in (await conn.execute(top_articles)).all()]
            escalated = (await conn.execute(escalations)).scalar_one()
            still_open = (await conn.execute(open_tickets)).scalar_one()
            times = (await conn.execute(timings)).all()
        total = sum(by_outcome.values())
        return Stats(
            messages_triaged=total,
            confident=by_outcome.get(CONFIDENT, 0),
            clarify=by_outcome.get("clarify", 0),
            # Anything else is "none", as the handlers' metrics label it.
            none=total - by_outcome.get(CONFIDENT, 0) - by_outcome.get("clarify", 0),
            helpful=votes["helpful"],
            not_helpful=votes["not_helpful"],
            escalations=escalated,
            resolved_by_bot=votes["helpful"],
            potential_deflection=deflection,
            top_codes=codes,
            top_articles=articles,
            open_tickets=still_open,
            median_claim_seconds=_median_seconds((row.created_at, row.claimed_at) for row in times),
            median_resolve_seconds=_median_seconds((row.created_at, row.resolved_at) for row in times),
        )

    # --- helpers -------------------------------------------------------------------------------------------

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
        """On SQLite, one transaction at a time across the store's two connections (see _SqliteInboxWriter).

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

    async def _insert_new(self, table: Table, key: str, values: dict[str, Any]) -> bool:
        statement = _insert_or_ignore(self.dialect, table, key, values).returning(table.c[key])
        async with self._begin() as conn:
            return (await conn.execute(statement)).first() is not None

    async def _update_event(self, event_id: str, **changes: Any) -> None:
        async with self._begin() as conn:
            result = await conn.execute(update(inbox).where(inbox.c.event_id == event_id).values(**changes))
        if result.rowcount == 0:
            raise KeyError(event_id)

    async def _update_outbox(self, item_id: int, **changes: Any) -> None:
        async with self._begin() as conn:
            result = await conn.execute(update(outbox).where(outbox.c.id == item_id).values(**changes))
        if result.rowcount == 0:
            raise KeyError(item_id)

    async def _allocate_ticket_number(self, conn: AsyncConnection) -> int:
        if self.dialect == "postgresql":
            return int((await conn.execute(select(ticket_number_seq.next_value()))).scalar_one())
        # Runs inside the ticket's BEGIN IMMEDIATE transaction, so no other writer can draw the same number,
        # and a rolled-back ticket gives its number back. The upsert also creates the row on first use.
        bump = (
            sqlite_insert(ticket_counter)
            .values(id=1, last_number=FIRST_TICKET_NUMBER)
            .on_conflict_do_update(
                index_elements=[ticket_counter.c.id], set_={"last_number": ticket_counter.c.last_number + 1}
            )
            .returning(ticket_counter.c.last_number)
        )
        return int((await conn.execute(bump)).scalar_one())

    async def _transition(
        self,
        number: str,
        event: str,
        *,
        allowed: ColumnElement[bool],
        changes: Mapping[str, Any],
        actor_id: str,
        actor_name: str | None = None,
        now: datetime,
        said: dict[str, str] | None = None,
        details: Mapping[str, str] | None = None,
    ) -> TicketChange | None:
        key = parse_ticket_number(number)
        if key is None:
            return None
        # The condition lives in the UPDATE itself: on PostgreSQL a racing transaction waits for the row lock
        # and then re-checks it against the winner's committed row; on SQLite writers are serialised anyway.
        statement = (
            update(tickets)
            .where(tickets.c.number == key, allowed)
            .values({**changes, "updated_at": now})
            .returning(*tickets.c)
        )
        async with self._begin() as conn:
            row = (await conn.execute(statement)).first()
            if row is None:
                current = (await conn.execute(select(tickets).where(tickets.c.number == key))).first()
                return None if current is None else TicketChange(ok=False, ticket=Ticket.from_row(current))
            if said is not None:
                row = await _append_transcript(conn, row.id, row.transcript, said, now)
            ticket = Ticket.from_row(row)
            # Without a name the actor is the requester, whose name the ticket already has.
            actor = {"id": actor_id, "name": ticket.requester_name if actor_name is None else actor_name}
            await _enqueue_outbox(conn, ticket, event, now, {"actor": actor, **(details or {})})
        return TicketChange(ok=True, ticket=ticket)

    async def _tickets_where(self, condition: ColumnElement[bool], limit: int) -> list[Ticket]:
        query = select(tickets).where(condition).order_by(tickets.c.created_at.desc(), tickets.c.id.desc())
        async with self._begin() as conn:
            rows = (await conn.execute(query.limit(limit))).all()
        return [Ticket.from_row(row) for row in rows]

    def _json_array_items(self, column: ColumnElement[Any]) -> TableValuedAlias:
        # The one piece of SQL the backends spell differently: a JSON array as rows, one column named "value".
        if self.dialect == "postgresql":
            return func.json_array_elements_text(column).table_valued("value")
        return func.json_each(column).table_valued("value")


def _insert_or_ignore(
    dialect: str, table: Table, key: str, values: Mapping[str, Any], keys: Sequence[str] = ()
) -> Insert:
    # A duplicate is an answer, not an error (and must not abort a PostgreSQL transaction).
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    return insert(table).values(values).on_conflict_do_nothing(index_elements=list(keys) or [key])


def _ticket_key(number: str) -> int:
    key = parse_ticket_number(number)
    if key is None:
        raise KeyError(number)
    return key


def _transcript_entry(who: str, text: str, at: datetime) -> dict[str, str]:
    return {"who": who, "text": text[:MAX_LOGGED_TEXT], "at": at.isoformat()}


async def _append_transcript(
    conn: AsyncConnection,
    ticket_id: int,
    transcript: list[dict[str, str]],
    entry: dict[str, str],
    now: datetime,
) -> Row[Any]:
    """Append to a ticket the caller has locked; only the newest entries are kept so a chatty thread stays small."""
    kept = [*transcript, entry][-MAX_TRANSCRIPT_ENTRIES:]
    statement = (
        update(tickets)
        .where(tickets.c.id == ticket_id)
        .values(transcript=kept, updated_at=now)
        .returning(*tickets.c)
    )
    return (await conn.execute(statement)).one()


async def _enqueue_outbox(
    conn: AsyncConnection, ticket: Ticket, event: str, now: datetime, details: Mapping[str, Any]
) -> None:
    """Queue the webhook call in the transaction that made the change, so neither happens without the other."""
    # Every caller has just written the ticket row and holds its lock, so two events of one ticket cannot draw
    # the same sequence; the unique constraint would refuse it anyway.
    last = select(func.coalesce(func.max(outbox.c.sequence), 0)).where(outbox.c.ticket_id == ticket.id)
    sequence = int((await conn.execute(last)).scalar_one()) + 1
    payload = {
        **ticket_payload(ticket),
        **details,
        "event": event,
        "at": now.isoformat(),
        "sequence": sequence,
    }
    await conn.execute(
        outbox.insert().values(
            ticket_id=ticket.id,
            sequence=sequence,
            event=event,
            payload=payload,
            status="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
    )


async def _feedback_counts(conn: AsyncConnection, since: datetime | None) -> dict[str, int]:
    query = select(feedback.c.helpful, func.count()).group_by(feedback.c.helpful)
    if since is not None:
        query = query.where(feedback.c.created_at >= since)
    counts = {bool(helpful): count for helpful, count in (await conn.execute(query)).all()}
    return {"helpful": counts.get(True, 0), "not_helpful": counts.get(False, 0)}


def _median_seconds(spans: Iterable[tuple[datetime, datetime | None]]) -> float | None:
    seconds = [(end - start).total_seconds() for start, end in spans if end is not None]
    return statistics.median(seconds) if seconds else None
