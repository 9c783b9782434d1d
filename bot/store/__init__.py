"""Persistence: inbox, conversation facts, tickets and their outbox, on SQLite or PostgreSQL (SQLAlchemy Core)."""

from bot.store.admin import DeliveryNotDead
from bot.store.base import StoreUnavailable
from bot.store.records import (
    TICKET_STATUSES,
    DayCounts,
    DeadDelivery,
    GapQuestion,
    InboxEvent,
    OutboxItem,
    Replica,
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
    "DayCounts",
    "DeadDelivery",
    "DeliveryNotDead",
    "GapQuestion",
    "InboxEvent",
    "OutboxItem",
    "Replica",
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
