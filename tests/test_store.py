"""The store on both backends: SQLite in a temp dir and the real PostgreSQL on 127.0.0.1:5432."""

from __future__ import annotations

import ast
import asyncio
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    inspect,
    select,
    text,
)
from sqlalchemy.ext.asyncio import create_async_engine

from bot.store import InboxEvent, Store, StoreUnavailable, TriageRecord, async_url, records
from bot.store.migrations import SCHEMA_VERSION, UPGRADES, UpgradeStatement, migrate
from bot.store.schema import UtcDateTime, inbox, metadata, read_record, triage
from bot.store.sqlite import Turns

PG_HOST, PG_PORT = "127.0.0.1", 5432


class Clock:
    """An injectable clock that only moves when the test says so."""

    def __init__(self) -> None:
        # Not UTC on purpose: the store must normalise whatever zone it is handed.
        self.current = datetime(2025, 3, 1, 9, 0, tzinfo=timezone(timedelta(hours=2)))

    def __call__(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


@asynccontextmanager
async def fresh_pg_database() -> AsyncIterator[str]:
    """A new, empty database for one test; dropped afterwards, whatever happened."""
    try:
        admin = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres", database="test", timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(
            f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT} as user postgres ({exc!r}). The store tests need "
            "it: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
        )
    name = f"test_store_{secrets.token_hex(6)}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield name
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'bot.db'}"
        return
    async with fresh_pg_database() as name:
        yield f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(db_url: str, clock: Clock) -> AsyncIterator[Store]:
    opened = await Store.open(db_url, now=clock)
    yield opened
    await opened.close()


async def fetch_all(url: str, statement: Any) -> list[Any]:
    """Look at the database behind the store's back."""
    engine = create_async_engine(async_url(url))
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(statement)).all())
    finally:
        await engine.dispose()


async def stored_event(url: str, event_id: str) -> InboxEvent | None:
    """One event as the inbox holds it, read behind the store's back."""
    rows = await fetch_all(url, select(inbox).where(inbox.c.event_id == event_id))
    return read_record(InboxEvent, rows[0]) if rows else None


async def enqueue(store: Store, *event_ids: str) -> None:
    for event_id in event_ids:
        payload = json.dumps({"data": {"id": event_id}})
        assert await store.enqueue_events([(event_id, "messages", payload)]) == {event_id}


def ids(events: list[InboxEvent]) -> list[str]:
    return [event.event_id for event in events]


def test_records_need_no_database_library() -> None:
    # The card builders read Ticket and Stats: plain data, whatever the store is built on.
    tree = ast.parse(Path(records.__file__).read_text())
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert [name for name in modules if name.split(".")[0] == "sqlalchemy"] == []


# --- opening ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///./helpdesk-bot.db", "sqlite+aiosqlite:///./helpdesk-bot.db"),
        ("sqlite:////var/lib/bot/bot.db", "sqlite+aiosqlite:////var/lib/bot/bot.db"),
        ("postgresql://bot:pw@db:5433/helpdesk", "postgresql+asyncpg://bot:pw@db:5433/helpdesk"),
        ("postgres://bot@db/helpdesk", "postgresql+asyncpg://bot@db/helpdesk"),
        ("postgresql+asyncpg://bot@db/helpdesk", "postgresql+asyncpg://bot@db/helpdesk"),
    ],
)
def test_urls_map_to_the_async_drivers(given: str, expected: str) -> None:
    assert async_url(given).render_as_string(hide_password=False) == expected


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "mysql://bot@db/helpdesk"])
def test_unusable_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"SQLite needs a file|unsupported"):
        async_url(url)


async def test_dialect_follows_the_url(store: Store, db_url: str) -> None:
    assert store.dialect == db_url.split(":", 1)[0]
    assert await store.inbox_counts() == dict.fromkeys(("pending", "working", "done", "failed", "dead"), 0)


async def test_concurrent_and_repeated_opens_leave_one_version_row(db_url: str, clock: Clock) -> None:
    # Replicas starting together on a new database race to create it.
    for opened in await asyncio.gather(*(Store.open(db_url, now=clock) for _ in range(3))):
        await opened.close()
    third = await Store.open(db_url, now=clock)
    await third.close()
    assert SCHEMA_VERSION == 5
    assert await fetch_all(db_url, text("SELECT version FROM schema_version")) == [(SCHEMA_VERSION,)]


async def test_upgrade_loop_applies_each_new_version_once(db_url: str, clock: Clock) -> None:
    await (await Store.open(db_url, now=clock)).close()
    next_version: list[list[UpgradeStatement]] = [*UPGRADES, ["ALTER TABLE feedback ADD COLUMN comment TEXT"]]
    engine = create_async_engine(async_url(db_url))
    try:
        # The second pass must not re-run the ALTER: it would fail on the duplicate column.
        for _ in range(2):
            async with engine.begin() as conn:
                assert await migrate(conn, next_version) == SCHEMA_VERSION + 1
        async with engine.connect() as conn:
            versions = (await conn.execute(text("SELECT version FROM schema_version ORDER BY 1"))).scalars()
            assert list(versions) == [SCHEMA_VERSION, SCHEMA_VERSION + 1]
            await conn.execute(text("SELECT comment FROM feedback"))
    finally:
        await engine.dispose()
    with pytest.raises(RuntimeError, match="newer than this code"):
        await Store.open(db_url, now=clock)


# The schema as version 1 shipped it, frozen here: the upgrade must take exactly this to the current version.
V1 = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "pk": "pk_%(table_name)s",
    }
)
Table(
    "schema_version",
    V1,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", UtcDateTime, nullable=False),
)
Table(
    "inbox",
    V1,
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
    CheckConstraint("status IN ('pending', 'working', 'done', 'failed', 'dead')", name="status"),
    Index(None, "status", "next_attempt_at"),
)
Table(
    "triage",
    V1,
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
Table(
    "feedback",
    V1,
    Column("action_id", String(255), primary_key=True),
    Column("person_id", String(255), nullable=False),
    Column("article_id", String(255), nullable=False),
    Column("helpful", Boolean, nullable=False),
    Column("thread_id", String(255)),
    Column("created_at", UtcDateTime, nullable=False, index=True),
)


async def build_version_1(url: str, at: datetime) -> None:
    engine = create_async_engine(async_url(url))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(V1.create_all)
            await conn.execute(V1.tables["schema_version"].insert().values(version=1, applied_at=at))
            await conn.execute(
                V1.tables["triage"]
                .insert()
                .values(
                    event_id="old",
                    person_id="p1",
                    person_email="ann@example.com",
                    room_id="r1",
                    text="Error 1000:1002",
                    outcome="fix",
                    top_id="err-1000-1002",
                    score=90.0,
                    codes=["1000:1002"],
                    created_at=at,
                )
            )
    finally:
        await engine.dispose()


def describe_schema(sync_conn: Connection) -> dict[str, Any]:
    """Everything about the schema that the code relies on, in a comparable shape."""
    seen = inspect(sync_conn)
    shape: dict[str, Any] = {}
    for name in sorted(seen.get_table_names()):
        shape[name] = {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
                for c in seen.get_columns(name)
            ],
            "pk": seen.get_pk_constraint(name)["constrained_columns"],
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in seen.get_indexes(name)
            ),
            "unique": sorted(
                (u["name"], tuple(u["column_names"])) for u in seen.get_unique_constraints(name)
            ),
            "checks": sorted(
                (c["name"], " ".join(c["sqltext"].split())) for c in seen.get_check_constraints(name)
            ),
            "foreign_keys": sorted(
                (f["name"], tuple(f["constrained_columns"]), f["referred_table"])
                for f in seen.get_foreign_keys(name)
            ),
        }
    if sync_conn.dialect.name == "postgresql":
        shape["sequences"] = sorted(seen.get_sequence_names())
    return shape


async def schema_of(url: str) -> dict[str, Any]:
    engine = create_async_engine(async_url(url))
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(describe_schema)
    finally:
        await engine.dispose()


@asynccontextmanager
async def another_database(like: str, tmp_path: Path) -> AsyncIterator[str]:
    if like.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'another.db'}"
        return
    async with fresh_pg_database() as name:
        yield f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}"


async def test_version_1_database_upgrades_in_place(db_url: str, clock: Clock, tmp_path: Path) -> None:
    await build_version_1(db_url, clock())
    # Two replicas of the new code start together on the old database: the upgrade must run exactly once.
    upgraded = await asyncio.gather(Store.open(db_url, now=clock), Store.open(db_url, now=clock))
    store = upgraded[0]
    try:
        await upgraded[1].close()
        versions = await fetch_all(db_url, text("SELECT version FROM schema_version ORDER BY 1"))
        assert versions == [(1,), (2,), (3,), (4,), (5,)]
        old = await store.get_triage("old")
        assert old is not None
        assert (old.text, old.codes, old.thread_id, old.created_at) == (
            "Error 1000:1002",
            ["1000:1002"],
            None,
            clock(),
        )
        ticket, created = await store.create_ticket(
            dedupe_key="m1",
            requester_id="p1",
            requester_email="ann@example.com",
            requester_name="Ann",
            room_id="r1",
            thread_id="t1",
            original_text="still broken",
            codes=[],
            articles=[],
            steps_suggested=[],
            note=None,
            transcript=[],
            reply_parent=None,
        )
        assert (ticket.number, created) == ("HD-1001", True)
    finally:
        await store.close()

    async with another_database(db_url, tmp_path) as fresh_url:
        await (await Store.open(fresh_url, now=clock)).close()
        fresh = await schema_of(fresh_url)
    assert await schema_of(db_url) == fresh
    tables = set(fresh) - {"sequences"}
    assert tables == set(metadata.tables) - ({"ticket_counter"} if db_url.startswith("postgresql") else set())
    if db_url.startswith("postgresql"):
        assert "ticket_number_seq" in fresh["sequences"]


async def test_sqlite_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    store = await Store.open(f"sqlite:///{path}")
    try:
        await enqueue(store, "e1")
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        await store.close()


# --- inbox -----------------------------------------------------------------------------------------------------


async def test_enqueue_dedupes_across_a_restart(db_url: str, clock: Clock) -> None:
    payload = {"id": "hook", "resource": "messages", "data": {"id": "m1", "roomId": "r"}, "n": [1, 2.5, None]}
    store = await Store.open(db_url, now=clock)
    assert await store.enqueue_events([("m1", "messages", json.dumps(payload))]) == {"m1"}
    assert await store.enqueue_events([("m1", "messages", '{"other": true}')]) == set()
    await store.close()

    store = await Store.open(db_url, now=clock)
    try:
        assert await store.enqueue_events([("m1", "messages", json.dumps(payload))]) == set()
        event = await stored_event(db_url, "m1")
        assert event is not None
        assert (event.payload, event.status, event.attempts) == (payload, "pending", 0)
        assert event.resource == "messages"
        assert event.received_at == clock() == event.next_attempt_at
        assert event.received_at.tzinfo == UTC
        assert await stored_event(db_url, "nope") is None
    finally:
        await store.close()


async def test_claims_oldest_first_up_to_the_limit(store: Store, clock: Clock) -> None:
    await enqueue(store, "z", "y")  # same instant: arrival order breaks the tie
    clock.advance(1)
    await enqueue(store, "a")
    assert await store.claim_events("w1", limit=0) == []
    first = await store.claim_events("w1", limit=2)
    assert ids(first) == ["z", "y"]
    assert all(e.status == "working" and e.attempts == 1 for e in first)
    assert ids(await store.claim_events("w1", limit=2)) == ["a"]
    assert await store.claim_events("w1") == []


async def test_concurrent_claims_across_two_replicas_never_overlap(db_url: str, clock: Clock) -> None:
    replica_a = await Store.open(db_url, now=clock)
    replica_b = await Store.open(db_url, now=clock)
    try:
        await enqueue(replica_a, *(f"e{i:02}" for i in range(60)))
        batches = await asyncio.gather(
            *(replica.claim_events(f"w{n}", limit=4) for n in range(10) for replica in (replica_a, replica_b))
        )
        claimed = [event_id for batch in batches for event_id in ids(batch)]
        assert len(claimed) == len(set(claimed)), "an event was handed to two workers"
        while batch := await replica_b.claim_events("drain", limit=7):
            claimed += ids(batch)
        assert sorted(claimed) == [f"e{i:02}" for i in range(60)]
        assert (await replica_a.inbox_counts())["working"] == 60
        assert await fetch_all(db_url, select(inbox.c.attempts).distinct()) == [(1,)]
    finally:
        await replica_a.close()
        await replica_b.close()


async def test_expired_lease_returns_a_crashed_workers_event(store: Store, clock: Clock) -> None:
    await enqueue(store, "e1")
    assert ids(await store.claim_events("w1", lease_seconds=30)) == ["e1"]
    clock.advance(29.9)
    assert await store.claim_events("w2") == []
    clock.advance(0.2)
    [again] = await store.claim_events("w2", lease_seconds=30)
    assert (again.event_id, again.status, again.attempts) == ("e1", "working", 2)
    assert await store.release_worker("w1") == 0  # the crashed worker no longer holds it
    assert await store.release_worker("w2") == 1


async def test_failed_event_waits_for_its_retry_and_dead_is_final(
    store: Store, db_url: str, clock: Clock
) -> None:
    await enqueue(store, "e1")
    await store.claim_events("w1")
    await store.mark_failed("e1", "Webex said 502", retry_in=120)
    failed = await stored_event(db_url, "e1")
    assert failed is not None
    assert (failed.status, failed.last_error, failed.attempts) == ("failed", "Webex said 502", 1)
    assert failed.next_attempt_at == clock() + timedelta(seconds=120)

    clock.advance(119)
    assert await store.claim_events("w1") == []
    clock.advance(1)
    [retried] = await store.claim_events("w1")
    assert (retried.event_id, retried.attempts, retried.last_error) == ("e1", 2, "Webex said 502")

    await store.mark_failed("e1", "x" * 5000, retry_in=None)
    clock.advance(86400 * 30)
    assert await store.claim_events("w1") == []
    dead = await stored_event(db_url, "e1")
    assert dead is not None
    assert dead.status == "dead"
    assert dead.last_error == "x" * 2000
    assert await store.inbox_counts() == {"pending": 0, "working": 0, "done": 0, "failed": 0, "dead": 1}


async def test_reply_is_recorded_and_done_is_never_claimed_again(
    store: Store, db_url: str, clock: Clock
) -> None:
    await enqueue(store, "e1")
    await store.claim_events("w1", lease_seconds=10)
    await store.record_reply("e1", "reply-1")
    event = await stored_event(db_url, "e1")
    assert event is not None
    assert (event.reply_message_id, event.status) == ("reply-1", "working")
    await store.mark_done("e1")
    clock.advance(3600)  # long past the lease
    assert await store.claim_events("w2") == []
    done = await stored_event(db_url, "e1")
    assert done is not None
    assert (done.status, done.reply_message_id) == ("done", "reply-1")


async def test_release_worker_hands_back_only_its_own_events(store: Store) -> None:
    await enqueue(store, "e1", "e2", "e3")
    assert ids(await store.claim_events("w1", limit=2)) == ["e1", "e2"]
    assert ids(await store.claim_events("w2")) == ["e3"]
    assert await store.release_worker("w1") == 2
    assert await store.inbox_counts() == {"pending": 2, "working": 1, "done": 0, "failed": 0, "dead": 0}
    released = await store.claim_events("w3")  # at once, with the interrupted attempt given back
    assert [(e.event_id, e.attempts) for e in released] == [("e1", 1), ("e2", 1)]


async def test_updates_to_unknown_events_raise(store: Store) -> None:
    with pytest.raises(KeyError):
        await store.mark_done("ghost")
    with pytest.raises(KeyError):
        await store.mark_failed("ghost", "boom", retry_in=1)
    with pytest.raises(KeyError):
        await store.record_reply("ghost", "r")


async def test_naive_clock_is_refused(db_url: str) -> None:
    store = await Store.open(db_url, now=lambda: datetime(2025, 1, 1))
    try:
        with pytest.raises(ValueError, match="timezone-aware"):
            await store.enqueue_events([("e1", "messages", "{}")])
    finally:
        await store.close()


# --- conversation facts ----------------------------------------------------------------------------------------


async def test_triage_is_recorded_once_per_event(store: Store, db_url: str, clock: Clock) -> None:
    facts: dict[str, Any] = {
        "person_id": "p1",
        "person_email": "ann@example.com",
        "room_id": "r1",
        "outcome": "fix",
        "top_id": "err-1000-1002",
        "score": 91.5,
        "codes": ["1000:1002"],
    }
    await store.record_triage(event_id="m1", text="Error 1000:1002", thread_id="t1", **facts)
    await store.record_triage(event_id="m1", text="redelivered", thread_id="t2", **facts)
    rows = await fetch_all(db_url, select(triage.c.event_id, triage.c.text, triage.c.codes, triage.c.score))
    assert rows == [("m1", "Error 1000:1002", ["1000:1002"], 91.5)]
    assert await store.get_triage("m1") == TriageRecord(
        event_id="m1", text="Error 1000:1002", thread_id="t1", created_at=clock(), **facts
    )
    # Callers from before version 2 pass no thread.
    await store.record_triage(event_id="m2", text="blank screen", **facts)
    second = await store.get_triage("m2")
    assert second is not None
    assert second.thread_id is None
    assert await store.get_triage("nope") is None


async def test_feedback_counts_once_per_action(store: Store, clock: Clock) -> None:
    vote = {"person_id": "p1", "article_id": "a1", "thread_id": "t1"}
    assert await store.record_feedback(action_id="act1", helpful=True, **vote) is True
    redelivered = await store.record_feedback(action_id="act1", helpful=False, **vote)
    assert redelivered is False
    clock.advance(3600)
    assert await store.record_feedback(action_id="act2", helpful=False, **vote) is True
    ever = await store.stats(since=clock() - timedelta(days=1))
    assert (ever.helpful, ever.not_helpful) == (1, 1)
    recent = await store.stats(since=clock() - timedelta(minutes=1))
    assert (recent.helpful, recent.not_helpful) == (0, 1)


# --- availability ----------------------------------------------------------------------------------------------


async def test_closed_port_is_store_unavailable_without_leaking_the_password() -> None:
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1:1/") as caught:
        await Store.open("postgresql://postgres:hunter2@127.0.0.1:1/x")
    assert time.monotonic() - started < 5
    assert "hunter2" not in str(caught.value)


async def test_unopenable_sqlite_file_is_store_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="unavailable"):
        await Store.open(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'bot.db'}")
    # aiosqlite stops a connection that failed to open through a future nobody awaits: let its thread finish
    # before this test's event loop closes, or the thread reports "Event loop is closed".
    for _ in range(200):
        if not any("_connection_worker_thread" in thread.name for thread in threading.enumerate()):
            break
        await asyncio.sleep(0.01)


async def terminate_connections(database: str) -> None:
    admin = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres", database="test")
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1", database
        )
        assert killed >= 1
    finally:
        await admin.close()


class TcpProxy:
    """A loopback forwarder to PostgreSQL that the test can cut and restore, like a database restart."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for writer in self._writers:
            writer.transport.abort()

    async def _forward(self, client: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream, upstream_writer = await asyncio.open_connection(PG_HOST, PG_PORT)
        self._writers |= {client_writer, upstream_writer}

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except OSError:
                pass
            finally:
                writer.transport.abort()

        await asyncio.gather(pipe(client, upstream_writer), pipe(upstream, client_writer))
        self._writers -= {client_writer, upstream_writer}


async def test_postgres_outage_is_store_unavailable_and_heals_itself(clock: Clock) -> None:
    proxy = TcpProxy()
    await proxy.start()
    async with fresh_pg_database() as name:
        store = await Store.open(f"postgresql://postgres@127.0.0.1:{proxy.port}/{name}", now=clock)
        try:
            await enqueue(store, "before")
            await terminate_connections(name)  # a server restart: the pooled connection is dead
            await enqueue(store, "after restart")  # pre-ping noticed and reconnected
            await proxy.stop()  # now the database is gone and refuses new connections
            with pytest.raises(StoreUnavailable, match="unavailable") as caught:
                await store.enqueue_events([("during", "messages", "{}")])
            assert "ConnectionRefusedError" in str(caught.value)
            with pytest.raises(StoreUnavailable):
                await store.inbox_counts()  # what /readyz asks
            await proxy.start()
            assert (await store.inbox_counts())["pending"] == 2
            await enqueue(store, "after")
            assert ids(await store.claim_events("w1")) == ["before", "after restart", "after"]
        finally:
            await store.close()
            await proxy.stop()


async def test_leases_are_renewed_and_effects_recorded_once(store: Store, clock: Clock) -> None:
    await enqueue(store, "e1")
    (claimed,) = await store.claim_events("w1", lease_seconds=10)
    assert claimed.event_id == "e1"
    clock.advance(8)
    assert await store.renew_leases("w1", 10) == 1
    clock.advance(8)  # 16 s after the claim: past the first lease, inside the renewed one
    assert await store.claim_events("w2", lease_seconds=10) == []
    clock.advance(3)
    assert [e.event_id for e in await store.claim_events("w2", lease_seconds=10)] == ["e1"]
    assert await store.renew_leases("w1", 10) == 0  # w1 lost it
    await store.record_effect("e1", "requester-notice", "m-1")
    await store.record_effect("e1", "requester-notice", "m-2")  # a replay records nothing new
    assert await store.effects("e1") == {"requester-notice": "m-1"}
    assert await store.effects("e2") == {}


async def test_a_batch_of_events_is_one_insert_that_reports_the_new_ones(store: Store) -> None:
    assert await store.enqueue_events([("old", "messages", '{"id": "old"}')]) == {"old"}
    batch = [
        ("a", "messages", '{"id": "a"}'),
        ("old", "messages", '{"id": "old"}'),
        ("a", "messages", '{"id": "a"}'),
    ]
    assert await store.enqueue_events(batch) == {"a"}
    assert await store.enqueue_events([]) == set()
    assert (await store.inbox_counts())["pending"] == 2


async def test_write_turns_put_acks_first_without_starving_the_worker() -> None:
    turns = Turns()
    order: list[str] = []

    async def take(name: str, *, urgent: bool) -> None:
        await turns.acquire(urgent=urgent)
        order.append(name)
        await asyncio.sleep(0)
        turns.release()

    await turns.acquire()  # someone holds it while everyone else queues
    waiters = [asyncio.create_task(take(f"w{n}", urgent=False)) for n in range(2)]
    waiters += [asyncio.create_task(take(f"a{n}", urgent=True)) for n in range(6)]
    cancelled = asyncio.create_task(take("gone", urgent=True))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.sleep(0)
    turns.release()
    await asyncio.gather(*waiters)
    # Urgent first, at most MAX_URGENT_RUN in a row while the worker waits; the cancelled waiter never runs.
    assert order == ["a0", "a1", "a2", "a3", "w0", "a4", "a5", "w1"]
    await turns.acquire()  # and the lock is free again
    turns.release()
