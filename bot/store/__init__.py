"""Persistence: inbox, conversation facts, tickets and their outbox, on SQLite or PostgreSQL (SQLAlchemy Core)."""

from bot.store.base import StoreUnavailable
from bot.store.records import (
    TICKET_STATUSES,
    InboxEvent,
    OutboxItem,
    Stats,
    Ticket,
    TicketChange,
    TicketRefused,
    TriageRecord,
    ticket_payload,
)
from bot.store.store import DatabaseLost, Store, async_url

__all__ = [
    "TICKET_STATUSES",
    "DatabaseLost",
    "InboxEvent",
    "OutboxItem",
    "Stats",
    "Store",
    "StoreUnavailable",
    "Ticket",
    "TicketChange",
    "TicketRefused",
    "TriageRecord",
    "async_url",
    "ticket_payload",
]
