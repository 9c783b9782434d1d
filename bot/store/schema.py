"""The database's current shape (column types, tables, constraints), and rows read back into records."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

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
)
from sqlalchemy import Sequence as SqlSequence

from bot.store.records import (
    FIRST_TICKET_NUMBER,
    OUTBOX_STATUSES,
    STATUSES,
    TICKET_PREFIX,
    TICKET_STATUSES,
    Ticket,
    TriageRecord,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

RecordT = TypeVar("RecordT", bound="DataclassInstance")


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


def _status_in(statuses: Iterable[str]) -> CheckConstraint:
    return CheckConstraint("status IN ({})".format(", ".join(f"'{s}'" for s in statuses)), name="status")


# SQLite only autoincrements INTEGER PRIMARY KEY.
_ROW_ID = BigInteger().with_variant(Integer, "sqlite")

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
    # The id breaks ties between events received at the same instant.
    Column("id", _ROW_ID, primary_key=True, autoincrement=True),
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
    _status_in(STATUSES),
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

# The columns of the Ticket record, plus dedupe_key; read_ticket reads them back by name.
tickets = Table(
    "tickets",
    metadata,
    Column("id", _ROW_ID, primary_key=True, autoincrement=True),
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
    # Where notices to the requester go: their thread in a group space, None (plain) in a direct one. Last,
    # where version 4's ALTER TABLE put it.
    Column("reply_parent", String(255)),
    # When the ticket was first claimed: a reopen clears claimed_at (the current round), not this, so the time
    # to claim in the stats stays true. Last, where version 5's ALTER TABLE put it.
    Column("first_claimed_at", UtcDateTime),
    _status_in(TICKET_STATUSES),
    Index(None, "status", "created_at"),
    Index(None, "requester_id", "created_at"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", _ROW_ID, primary_key=True, autoincrement=True),
    Column("ticket_id", _ROW_ID, ForeignKey(tickets.c.id), nullable=False),
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
    _status_in(OUTBOX_STATUSES),
    UniqueConstraint("ticket_id", "sequence"),
    Index(None, "status", "next_attempt_at"),
)

messages_log = Table(
    "messages_log",
    metadata,
    Column("id", _ROW_ID, primary_key=True, autoincrement=True),
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


# One row per running process of the bot, kept fresh by its heartbeat: which knowledge version it has loaded,
# so that `reload knowledge` on one replica can count the others that took it.
replicas = Table(
    "replicas",
    metadata,
    Column("replica_id", String(255), primary_key=True),
    Column("started_at", UtcDateTime, nullable=False),
    Column("last_seen", UtcDateTime, nullable=False),
    Column("knowledge_version", Integer, nullable=False),
    Column("knowledge_fingerprint", String(64), nullable=False),
    Column("articles", Integer, nullable=False),
    # Why the replica kept its old knowledge at knowledge_version (its files did not load), else NULL.
    Column("knowledge_error", Text),
)

# The knowledge version every replica should have loaded: one row, bumped by each successful reload.
knowledge_state = Table(
    "knowledge_state",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", Integer, nullable=False),
    Column("changed_at", UtcDateTime, nullable=False),
    Column("changed_by", String(320), nullable=False),
    CheckConstraint("id = 1", name="one_row"),
)


def read_record(cls: type[RecordT], row: Row[Any], **overrides: Any) -> RecordT:
    """A record from a row whose columns carry its field names; overrides convert the odd one."""
    values = {f.name: row._mapping[f.name] for f in fields(cls) if f.name not in overrides}
    return cls(**values, **overrides)


def read_triage(row: Row[Any]) -> TriageRecord:
    return read_record(TriageRecord, row, codes=list(row.codes))


def read_ticket(row: Row[Any]) -> Ticket:
    # The number is stored bare (the sequence's integer) and shown with its prefix.
    return read_record(
        Ticket,
        row,
        number=f"{TICKET_PREFIX}{row.number}",
        transcript=[dict(entry) for entry in row.transcript],
    )
