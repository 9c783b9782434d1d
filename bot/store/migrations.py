"""The schema's versions: the frozen upgrade statements from each one to the next, and migrate()."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from sqlalchemy import Table, func, inspect, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.store.records import FIRST_TICKET_NUMBER
from bot.store.schema import metadata, schema_version

# Any constant works; it only has to be the same for every replica that migrates this database.
MIGRATION_LOCK_KEY = 0x48454C50

# An upgrade statement runs on every backend, or is a map from backend name to its own text ("sqlite" or
# "postgresql"); a backend missing from the map has nothing to do for that statement.
UpgradeStatement = str | Mapping[str, str]

# Types that the two backends spell differently. The upgrade DDL is frozen text rather than rendered from the
# Tables in schema.py: those describe only the latest shape, and version 2 must stay what it was once version 3
# exists.
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

# UPGRADES[i] takes a version i+1 database to version i+2. To add a version: change the Tables in schema.py to the
# new shape (fresh databases are built from them) AND append the statements that bring the previous version there.
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

# Tickets remember where their requester's notices go (no GET /messages per notice). Tickets filed before it
# get their thread: in a direct space a threaded notice is still delivered, only not as a plain message.
UPGRADE_TO_V4: list[UpgradeStatement] = [
    "ALTER TABLE tickets ADD COLUMN reply_parent VARCHAR(255)",
    "UPDATE tickets SET reply_parent = thread_id",
]

# A ticket's first claim survives a reopen (the stats' time to claim), recovered for tickets already reopened
# from their ticket.claimed event where the outbox still has it; and the replicas' knowledge versions.
UPGRADE_TO_V5: list[UpgradeStatement] = [
    _each_backend("ALTER TABLE tickets ADD COLUMN first_claimed_at {timestamp}"),
    """UPDATE tickets SET first_claimed_at = COALESCE(claimed_at, (
        SELECT MIN(outbox.created_at) FROM outbox
        WHERE outbox.ticket_id = tickets.id AND outbox.event = 'ticket.claimed'))""",
    _each_backend(
        """CREATE TABLE replicas (
            replica_id VARCHAR(255) NOT NULL,
            started_at {timestamp} NOT NULL,
            last_seen {timestamp} NOT NULL,
            knowledge_version INTEGER NOT NULL,
            knowledge_fingerprint VARCHAR(64) NOT NULL,
            articles INTEGER NOT NULL,
            knowledge_error TEXT,
            CONSTRAINT pk_replicas PRIMARY KEY (replica_id))"""
    ),
    _each_backend(
        """CREATE TABLE knowledge_state (
            id INTEGER NOT NULL,
            version INTEGER NOT NULL,
            changed_at {timestamp} NOT NULL,
            changed_by VARCHAR(320) NOT NULL,
            CONSTRAINT pk_knowledge_state PRIMARY KEY (id),
            CONSTRAINT ck_knowledge_state_one_row CHECK (id = 1))"""
    ),
]

UPGRADES: list[list[UpgradeStatement]] = [UPGRADE_TO_V2, UPGRADE_TO_V3, UPGRADE_TO_V4, UPGRADE_TO_V5]
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
        await conn.execute(schema_version.insert().values(version=latest, applied_at=datetime.now(UTC)))
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
        await conn.execute(schema_version.insert().values(version=version, applied_at=datetime.now(UTC)))
    return latest
